#!/usr/bin/env bash
# Publish→queryable latency at QoS 1 (issue 20, goal 6: p99 ≤ window +
# 250 ms at 50k positions/s from 10k devices). `fleetd bench` starts its own
# `fleetd serve` (authentication on, the journal's default durability) and
# its probes publish a position, then poll the API until it is visible.
# ROUNDS runs, one fresh server each.
#
#   usage: bench/latency/run.sh FLEETD_BINARY
#   ROUNDS [3]  VEHICLES [10000]  RATE [50000]  DURATION [30] s  WINDOW_MS [1000]  PROBES [8]
#
# Figures go to bench/results/latency-<UTC time>.json; each run's p99 is
# printed against the window + 250 ms.
set -euo pipefail
binary=${1:?usage: bench/latency/run.sh FLEETD_BINARY}
ROUNDS=${ROUNDS:-3}
VEHICLES=${VEHICLES:-10000}
RATE=${RATE:-50000}
DURATION=${DURATION:-30}
WINDOW_MS=${WINDOW_MS:-1000}
PROBES=${PROBES:-8}
cd "$(dirname "$0")/../.."
mkdir -p bench/results
out="bench/results/latency-$(date -u +%Y%m%dT%H%M%SZ).json"
runs=()
for round in $(seq 1 "$ROUNDS"); do
  echo "latency: run $round of $ROUNDS, $VEHICLES vehicles at $RATE/s, QoS 1, window $WINDOW_MS ms" >&2
  runs+=("$("$binary" bench --json --vehicles "$VEHICLES" --rate "$RATE" --duration "${DURATION}s" \
    --connections 4 --qos 1 --probes "$PROBES" --window-ms "$WINDOW_MS")")
done
(IFS=,; printf '{"window_ms": %s, "runs": [%s]}\n' "$WINDOW_MS" "${runs[*]}") > "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
limit = r["window_ms"] + 250
for i, run in enumerate(r["runs"], 1):
    p = run["phases"][0]
    lat = p["latency_ms"] or {}
    p99 = lat.get("p99", float("nan"))
    print(f"run {i}: {p['stored_rate']:,.0f} stored/s, {p['lost']} lost, {p['server_cpu_cores']:.2f} cores; "
          f"publish→queryable p50 {lat.get('p50', 0):,.0f} ms, p99 {p99:,.0f} ms over {lat.get('samples', 0)} probes "
          f"(limit {limit} ms: {'met' if p99 <= limit else 'not met'})")
print(f"figures: {sys.argv[1]}")
PY
