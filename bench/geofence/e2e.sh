#!/usr/bin/env bash
# End-to-end ingest with 0, 10k and 100k geofences, side by side: the same
# `fleetd bench` (same fleet, rate and seed) against a fresh fleetd each
# time, the fences created through the API before publishing. Every
# position the vehicle state accepts is evaluated against the fences, and
# vehicles driving through them raise enter/exit alerts that are stored,
# streamed and published over MQTT.
#
#   bench/geofence/e2e.sh            (FENCES="0 10000 100000" RATE=50000
#                                     VEHICLES=10000 DURATION=15 CITY_KM=100)
#
# Fences cover a CITY_KM × CITY_KM city at the criterion bench's density
# (10k per ~10,000 km² at the default); the fleet drives the same grid.
# Prints a table (stored/s, server cores, cores per 100k positions/s,
# alerts, RSS, and the ratio to the run without fences) and writes it to
# bench/results/geofence-e2e.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/../.."

FENCES=${FENCES:-"0 10000 100000"}
RATE=${RATE:-50000}
VEHICLES=${VEHICLES:-10000}
DURATION=${DURATION:-15}
CITY_KM=${CITY_KM:-100}
RESULTS=${RESULTS:-bench/results}

cargo build --release -q -p fleetd
FLEETD=$PWD/target/release/fleetd
WORK=$(mktemp -d /tmp/fleetd-geofence-e2e.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

for n in $FENCES; do
  echo "geofence e2e: $n fences, $VEHICLES vehicles at $RATE/s for ${DURATION}s" >&2
  "$FLEETD" bench --vehicles "$VEHICLES" --rate "$RATE" --duration "${DURATION}s" \
    --connections 4 --qos 0 --city-km "$CITY_KM" --geofences "$n" --json > "$WORK/run-$n.json"
done

mkdir -p "$RESULTS"
python3 - "$WORK" "$RESULTS" $FENCES <<'PY'
import json, os, sys, datetime
work, results, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = []
for n in sizes:
    r = json.load(open(os.path.join(work, f"run-{n}.json")))
    p = r["phases"][0]
    cores = p.get("server_cpu_cores") or 0.0
    rows.append({
        "fences": int(n),
        "fence_setup_s": (r.get("geofences") or {}).get("seconds"),
        "published": p["published"], "stored": p["stored"], "lost": p["lost"],
        "stored_per_s": p["stored_rate"], "server_cores": cores,
        "cores_per_100k_per_s": cores / p["stored_rate"] * 1e5 if p["stored_rate"] else None,
        "alerts": p.get("alerts", 0),
        "p99_ms": (p.get("latency_ms") or {}).get("p99"),
        "rss_mb": p.get("server_rss_mb"),
    })
base = rows[0]
load = os.getloadavg()
lines = [
    f"Geofence end-to-end bench, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
    f"load average before the last run {load[0]:.1f}",
    "",
    "| fences | stored/s | lost | server cores | cores per 100k/s | vs no fences | alerts | p99 ms | RSS MB | fence setup s |",
    "|---|---|---|---|---|---|---|---|---|---|",
]
for row in rows:
    ratio = (row["cores_per_100k_per_s"] / base["cores_per_100k_per_s"]
             if row["cores_per_100k_per_s"] and base["cores_per_100k_per_s"] else float("nan"))
    row["cost_ratio"] = ratio
    fmt = lambda v, f: "—" if v is None else format(v, f)
    lines.append(
        f"| {row['fences']:,} | {row['stored_per_s']:,.0f} | {row['lost']} | {row['server_cores']:.2f} "
        f"| {fmt(row['cores_per_100k_per_s'], '.2f')} | {ratio:.2f}× | {row['alerts']:,} "
        f"| {fmt(row['p99_ms'], '.0f')} | {fmt(row['rss_mb'], '.0f')} | {fmt(row['fence_setup_s'], '.1f')} |")
text = "\n".join(lines)
print(text)
open(os.path.join(results, "geofence-e2e.md"), "w").write(text + "\n")
json.dump(rows, open(os.path.join(results, "geofence-e2e.json"), "w"), indent=2)
PY
