# Sourced by bench scripts that measure Mosquitto relaying a simulated fleet
# to one subscriber (`side-by-side`, `relay/run.sh`). The caller's cleanup
# kills $MQ_PID if a run is cut short.

MQ_PID=
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
status_mb() { awk -v f="$2:" '$1 == f {print $2/1024}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# mosquitto_relay FLEETD MOSQUITTO WORK QOS VEHICLES CONNECTIONS RATE_HZ DURATION_S ID_PREFIX NAME
#
# Starts a throwaway in-memory Mosquitto, subscribes one `mosquitto_sub` to
# `fleet/+/pos` at QOS, drives `fleetd simulate` into it and stops both 2 s
# after the last publish. Writes WORK/NAME.json (the broker's CPU seconds,
# RSS at the end and peak, messages delivered to the subscriber) and
# WORK/NAME-sim.json (the simulator's report).
mosquitto_relay() {
  local fleetd=$1 mosquitto=$2 work=$3 qos=$4 vehicles=$5 connections=$6 rate_hz=$7 duration=$8 prefix=$9 name=${10}
  local port sub cpu0 cpu1 rss peak
  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest none\n' \
    "$port" > "$work/$name.conf"
  "$mosquitto" -c "$work/$name.conf" & MQ_PID=$!
  wait_port "$port"
  # One character per message delivered; wc counts them when the subscriber ends.
  ( mosquitto_sub -h 127.0.0.1 -p "$port" -t 'fleet/+/pos' -q "$qos" -F '.' | wc -l > "$work/$name-delivered" ) &
  sub=$!
  sleep 1
  cpu0=$(cpu_s "$MQ_PID")
  "$fleetd" simulate --broker "127.0.0.1:$port" --vehicles "$vehicles" --connections "$connections" \
    --rate-hz "$rate_hz" --duration "${duration}s" --qos "$qos" --id-prefix "$prefix" --json > "$work/$name-sim.json"
  sleep 2
  cpu1=$(cpu_s "$MQ_PID"); rss=$(status_mb "$MQ_PID" VmRSS); peak=$(status_mb "$MQ_PID" VmHWM)
  pkill -INT -P "$sub" mosquitto_sub 2>/dev/null || true
  wait "$sub" 2>/dev/null || true
  kill "$MQ_PID"; wait "$MQ_PID" 2>/dev/null || true; MQ_PID=
  printf '{"cpu_s": %s, "rss_mb": %s, "peak_rss_mb": %s, "delivered": %s}\n' \
    "$(python3 -c "print($cpu1 - $cpu0)")" "$rss" "$peak" "$(cat "$work/$name-delivered")" > "$work/$name.json"
}
