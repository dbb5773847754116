#!/usr/bin/env bash
# Memory at a million distinct vehicles (issue 20, goal 3: ≤ 1 GB RSS, peak
# included, once every vehicle has sent at least two positions). Runs
# `fleetd bench` against a fresh server it starts (QoS 0, with
# authentication on), for long enough that each vehicle publishes twice at
# RATE, and reads the server's RSS at the end and its peak (VmHWM) from
# /proc. ROUNDS runs, one fresh server each.
#
#   usage: bench/memory/run.sh FLEETD_BINARY [VEHICLES] [RATE]
#   ROUNDS [2]    LIMIT_MB [1024]
#
# Figures go to bench/results/memory-<UTC time>.json; each run is printed
# with its peak against LIMIT_MB. The bench's "MB" are MiB (/proc's kB over
# 1024), so the default limit is 1 GiB; the peak is also printed in 10^9
# bytes.
set -euo pipefail
binary=${1:?usage: bench/memory/run.sh FLEETD_BINARY [VEHICLES] [RATE]}
vehicles=${2:-1000000}
rate=${3:-50000}
rounds=${ROUNDS:-2}
limit=${LIMIT_MB:-1024}
cd "$(dirname "$0")/../.."
# Two positions per vehicle, plus the time for the last of them to settle.
duration=$(( 2 * vehicles / rate + 5 ))
out="bench/results/memory-$(date -u +%Y%m%dT%H%M%SZ).json"
runs=()
for round in $(seq 1 "$rounds"); do
  echo "memory: run $round of $rounds, $vehicles vehicles at $rate/s for ${duration}s" >&2
  runs+=("$("$binary" bench --json --vehicles "$vehicles" --rate "$rate" --duration "${duration}s" \
    --connections 4 --qos 0 --city-km 50)")
done
(IFS=,; printf '{"vehicles": %s, "rate": %s, "duration_s": %s, "limit_mb": %s, "runs": [%s]}\n' \
  "$vehicles" "$rate" "$duration" "$limit" "${runs[*]}") > "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for i, run in enumerate(r["runs"], 1):
    p = run["phases"][0]
    peak = run.get("server_peak_rss_mb") or 0
    print(f"run {i}: stored {p['stored']:,} of {p['published']:,} ({p['lost']} lost, {p['broker_dropped']} dropped by the broker), "
          f"RSS at the end {p['server_rss_mb'] or 0:,.0f} MiB, peak {peak:,.0f} MiB = {peak * 2**20 / 1e9:.3f} GB "
          f"({peak / r['limit_mb']:.2f}× the {r['limit_mb']} MiB limit: {'met' if peak <= r['limit_mb'] else 'not met'})")
print(f"figures: {sys.argv[1]}")
PY
