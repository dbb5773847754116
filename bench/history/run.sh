#!/usr/bin/env bash
# History on disk and its read speed, rows against compact blocks (issue 20
# goals 1 and 2), side by side in one run: `fleetd bench --history-hours`
# feeds the same simulated fleet (1 Hz) into two throwaway embedded stores,
# merges one into blocks, and measures both alternately. Once in clear and
# once encrypted at rest (values sealed before fjall sees them, so fjall's
# own compression no longer applies to rows).
#
#   usage: bench/history/run.sh FLEETD_BINARY [VEHICLES] [HOURS]
#
# Figures go to bench/results/history-<UTC time>.json; the ratios
# (blocks / rows) are printed.
set -euo pipefail
binary=${1:?usage: bench/history/run.sh FLEETD_BINARY [VEHICLES] [HOURS]}
vehicles=${2:-100}
hours=${3:-24}
cd "$(dirname "$0")/../.."
out="bench/results/history-$(date -u +%Y%m%dT%H%M%SZ).json"
plain=$("$binary" bench --json --vehicles "$vehicles" --history-hours "$hours")
sealed=$("$binary" bench --json --vehicles "$vehicles" --history-hours "$hours" --history-sealed)
printf '{"plain": %s, "sealed": %s}\n' "$plain" "$sealed" > "$out"
python3 - "$out" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))
for name, r in runs.items():
    rows, blocks = r["rows"], r["blocks"]
    print(f"{name}: {r['positions']} positions; bytes/position rows {rows['bytes_per_position']:.1f} "
          f"blocks {blocks['bytes_per_position']:.1f} (ratio {r['disk_ratio']:.3f}); "
          f"track page p50 ratio {r['track_ratio']:.2f}; whole-history export ratio {r['export_ratio']:.2f}")
print(f"figures: {sys.argv[1]}")
PY
