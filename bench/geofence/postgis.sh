#!/usr/bin/env bash
# Side by side: PostGIS ST_Contains over a GiST index against fleetd's
# geofence index, on the same fences and points, one core each.
#
#   bench/geofence/postgis.sh [N ...]     (default: 10000 100000)
#
# 1. Runs the criterion group `geofence_contains` (index at 10k and 100k,
#    linear scan at 10k), which also
#    writes its fences (EWKT) and points when FLEETD_GEOFENCE_DUMP is set.
# 2. Installs Debian postgresql + postgis when missing, starts a throwaway
#    cluster on 127.0.0.1 in a temporary directory (removed at exit).
# 3. Loads the same fences with a GiST index and the same points, runs
#    `SELECT count(*) FROM points JOIN fences ON ST_Contains(fence, point)`
#    five times without parallel workers, checks the count equals fleetd's,
#    and prints both rates and their ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1; then
  echo "postgis.sh: installing postgresql and postgis" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgis >/dev/null
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

work=$(mktemp -d /tmp/fleetd-postgis.XXXXXX)
chmod 755 "$work"
pg_user=$(id -un)
run_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root.
  pg_user=postgres
  run_pg() { runuser -u postgres -- "$@"; }
fi
cleanup() {
  run_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== fleetd: criterion bench geofence_contains (release build; index and linear scan side by side)" >&2
FLEETD_GEOFENCE_DUMP="$work/data" cargo bench -p fleetd-processor --bench processor -- geofence_contains >&2

echo "== postgis: throwaway cluster in $work" >&2
install -d -o "$pg_user" "$work/pg" "$work/sock"
run_pg "$pgbin/initdb" -D "$work/pg" -A trust -U fleetd >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/sock/pg.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $work/sock -c shared_buffers=512MB -c max_parallel_workers_per_gather=0 -c jit=off" start >/dev/null
psql_() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U fleetd -d postgres "$@"; }
psql_ -c "CREATE EXTENSION postgis" >/dev/null
postgis_version=$(psql_ -At -c "SELECT postgis_full_version()" | cut -d' ' -f1-2)
pg_version=$(psql_ -At -c "SHOW server_version")

printf '%-8s %16s %16s %14s %8s %s\n' fences "fleetd lat/lon/s" "fleetd cell/s" "postgis chk/s" ratio "(hits: fleetd / postgis)"
rate() {  # criterion mean of bench $1 → checks per second
  local est="target/criterion/geofence_contains/$1/$n/new/estimates.json"
  python3 -c "import json,sys; e=json.load(open('$est')); print(round($points / (e['mean']['point_estimate'] * 1e-9)))"
}
for n in "${sizes[@]}"; do
  points=$(wc -l < "$work/data/points-$n.tsv")
  # From lat/lon alone: the like-for-like figure against PostGIS. With the
  # point's res-9 cell known: what a check costs inside the pipeline.
  fleetd_rate=$(rate res9_from_latlng)
  fleetd_cell_rate=$(rate res9_cell_known)
  psql_ >/dev/null <<SQL
DROP TABLE IF EXISTS fences, points;
CREATE TABLE fences (id text PRIMARY KEY, geom geometry(Polygon, 4326) NOT NULL);
\copy fences FROM '$work/data/fences-$n.tsv'
CREATE INDEX fences_geom ON fences USING gist (geom);
CREATE TABLE points (lon float8, lat float8);
\copy points FROM '$work/data/points-$n.tsv'
ALTER TABLE points ADD COLUMN geom geometry(Point, 4326);
UPDATE points SET geom = ST_SetSRID(ST_MakePoint(lon, lat), 4326);
VACUUM ANALYZE fences;
VACUUM ANALYZE points;
SQL
  best=""
  pg_hits=""
  for _ in 1 2 3 4 5; do
    out=$(psql_ -At <<'SQL'
\timing on
SELECT count(*) FROM points p JOIN fences f ON ST_Contains(f.geom, p.geom);
SQL
)
    pg_hits=$(echo "$out" | head -1)
    ms=$(echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
    best=$(python3 -c "print(min(float(x) for x in '$best $ms'.split()))")
  done
  fleetd_hits=$(cat "$work/data/hits-$n.txt")
  pg_rate=$(python3 -c "print(round($points / ($best / 1000)))")
  ratio=$(python3 -c "print(f'{$fleetd_rate / $pg_rate:.1f}x')")
  printf '%-8s %16s %16s %14s %8s (%s / %s)\n' "$n" "$fleetd_rate" "$fleetd_cell_rate" "$pg_rate" "$ratio" "$fleetd_hits" "$pg_hits"
  if [ "$fleetd_hits" != "$pg_hits" ]; then
    echo "postgis.sh: hit counts differ for $n fences" >&2
    exit 1
  fi
done
echo "PostgreSQL $pg_version, $postgis_version; PostGIS time: best of 5 runs of the join over $points points (one backend, no parallel workers); fleetd: criterion mean." >&2
