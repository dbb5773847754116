#!/usr/bin/env bash
# Ingest floods against Mosquitto (issue 20, goal 5: fleetd storing at
# ≥ 1.3× the rate Mosquitto relays, at QoS 0 and at QoS 1). For each QoS,
# in one run on the same cores: `fleetd bench` (its own `fleetd serve`:
# authentication on, the journal's default durability, so a PUBACK means
# journalled) and then Mosquitto relaying the same simulated fleet to one
# `mosquitto_sub` at that QoS, driven by the same simulator (`fleetd
# simulate`) with the same vehicles, connections and offered rate.
#
#   usage: bench/relay/run.sh FLEETD_BINARY
#   VEHICLES [10000]  CONNECTIONS [100]  RATE [200000] offered positions/s
#   DURATION [20] seconds   QOS ["0 1"]
#
# Mosquitto's rate is what its subscriber received by 2 s after the last
# publish, over the simulator's publishing time; fleetd's is what it stored
# (`stored_rate` of `fleetd bench`). Figures go to
# bench/results/relay-<UTC time>.json; the ratios are printed.
set -euo pipefail
binary=$(realpath "${1:?usage: bench/relay/run.sh FLEETD_BINARY}")
VEHICLES=${VEHICLES:-10000}
CONNECTIONS=${CONNECTIONS:-100}
RATE=${RATE:-200000}
DURATION=${DURATION:-20}
QOS=${QOS:-"0 1"}
cd "$(dirname "$0")/../.."
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] && command -v mosquitto_sub >/dev/null || {
  echo "relay: needs mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/fleetd-relay.XXXXXX)
. bench/mosquitto-relay.sh
cleanup() { [ -n "$MQ_PID" ] && kill "$MQ_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
RATE_HZ=$(python3 -c "print($RATE / $VEHICLES)")

for qos in $QOS; do
  echo "relay: QoS $qos, fleetd bench, $VEHICLES vehicles over $CONNECTIONS connections at $RATE/s for ${DURATION}s" >&2
  "$binary" bench --vehicles "$VEHICLES" --rate "$RATE" --duration "${DURATION}s" \
    --connections "$CONNECTIONS" --qos "$qos" --probes 4 --json > "$WORK/fleetd-$qos.json"

  echo "relay: QoS $qos, Mosquitto relaying to one subscriber" >&2
  mosquitto_relay "$binary" "$MOSQUITTO" "$WORK" "$qos" "$VEHICLES" "$CONNECTIONS" "$RATE_HZ" "$DURATION" \
    "mq$qos-" "mosquitto-$qos"
done

mkdir -p bench/results
out="bench/results/relay-$(date -u +%Y%m%dT%H%M%SZ).json"
python3 - "$WORK" "$out" "$VEHICLES" "$CONNECTIONS" "$RATE" "$DURATION" $QOS <<'PY'
import json, sys
work, out, vehicles, connections, rate, duration, *qoss = sys.argv[1:]
load = lambda name: json.load(open(f"{work}/{name}"))
report = {"vehicles": int(vehicles), "connections": int(connections), "offered_rate": int(rate),
          "duration_s": int(duration), "qos": {}}
for q in qoss:
    f, sim, mq = load(f"fleetd-{q}.json"), load(f"mosquitto-{q}-sim.json"), load(f"mosquitto-{q}.json")
    p = f["phases"][0]
    mq_rate = mq["delivered"] / sim["elapsed_s"]
    ratio = p["stored_rate"] / mq_rate if mq_rate else None
    report["qos"][q] = {
        "fleetd": {"stored_rate": p["stored_rate"], "stored": p["stored"], "published": p["published"],
                   "lost": p["lost"], "broker_dropped": p["broker_dropped"], "failed": p["failed"],
                   "server_cpu_cores": p["server_cpu_cores"], "peak_rss_mb": f.get("server_peak_rss_mb"),
                   "latency_ms": p.get("latency_ms")},
        "mosquitto": {"delivered_rate": mq_rate, "delivered": mq["delivered"], "published": sim["published"],
                      "cpu_cores": mq["cpu_s"] / sim["elapsed_s"], "peak_rss_mb": mq["peak_rss_mb"]},
        "ratio": ratio,
    }
    print(f"QoS {q}: fleetd {p['stored_rate']:,.0f} stored/s ({p['stored']:,} of {p['published']:,} published, "
          f"{p['lost']} lost, {p['broker_dropped']} dropped by the broker, {p['server_cpu_cores']:.2f} cores); "
          f"Mosquitto {mq_rate:,.0f} delivered/s ({mq['delivered']:,} of {sim['published']:,} published, "
          f"{mq['cpu_s'] / sim['elapsed_s']:.2f} cores); ratio {ratio:.2f} (goal ≥ 1.3)")
json.dump(report, open(out, "w"), indent=1)
print(f"figures: {out}")
PY
