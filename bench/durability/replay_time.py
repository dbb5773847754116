#!/usr/bin/env python3
"""Crash-recovery time: how long a restart takes to replay N seconds of
acknowledged-but-unstored positions from the ingest journal.

For each backlog (seconds of ingest), on a fresh data directory:

1. start `fleetd serve` with the longest window (60 s) and a batch bound so
   large that nothing is stored before the crash (every acknowledged
   position stays only in the journal); so a backlog is at most ~55 s;
2. `fleetd simulate` publishes QoS 1 at `--vehicles` × 1 Hz for the backlog;
3. `kill -9` fleetd, restart it with the default window on the same data
   directory, and time: until `/readyz` answers 200, the journal's own
   "journal replayed" figure, and until `fleetd_positions_stored_total`
   reaches what the first run had received.

  usage: bench/durability/replay_time.py FLEETD_BINARY
         [--backlogs 1,10,55] [--vehicles 10000] [--connections 8]

Figures go to bench/results/replay-<UTC time>.json.
"""

import argparse
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(http, token, name):
    """Sum of a series on /metrics (which wants the admin token)."""
    request = urllib.request.Request(f"http://{http}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        text = urllib.request.urlopen(request, timeout=5).read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def ready(http):
    try:
        return urllib.request.urlopen(f"http://{http}/readyz", timeout=2).status == 200
    except OSError:
        return False


def serve(binary, data, mqtt, http, log, extra):
    cmd = [binary, "serve", "--data", data, "--mqtt", mqtt, "--http", http, *extra]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RUST_LOG="info"))


def wait(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def one(binary, backlog_s, args):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        mqtt, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = os.path.join(tmp, "hold.toml")
        with open(config, "w") as f:
            # Nothing reaches the store: the whole backlog stays journal-only.
            f.write("[processor]\nwindow_ms = 60000\nmax_batch = 100000000\n")
        log1 = open(os.path.join(tmp, "first.log"), "w")
        first = serve(binary, data, mqtt, http, log1, ["--config", config])
        wait("first start", lambda: ready(http), 60)
        token = open(os.path.join(data, "admin.token")).read().strip()
        sim = subprocess.run(
            [binary, "simulate", "--broker", mqtt, "--vehicles", str(args.vehicles),
             "--connections", str(args.connections), "--rate-hz", "1", "--qos", "1",
             "--duration", f"{backlog_s}s", "--password", token, "--json"],
            capture_output=True, text=True, check=False)
        if sim.returncode != 0:
            sys.exit(f"simulate failed:\n{sim.stderr[-3000:]}")
        received = wait("the backlog received",
                        lambda: metric(http, token, "fleetd_received_total"), 30)
        stored_before = metric(http, token, "fleetd_positions_stored_total") or 0.0
        first.send_signal(signal.SIGKILL)
        first.wait()
        log1.close()

        log_path = os.path.join(tmp, "restart.log")
        log2 = open(log_path, "w")
        started = time.monotonic()
        second = serve(binary, data, mqtt, http, log2, [])
        wait("restart ready", lambda: ready(http), 600)
        ready_s = time.monotonic() - started
        wait("the backlog stored",
             lambda: (metric(http, token, "fleetd_positions_stored_total") or 0) >= received, 900)
        stored_s = time.monotonic() - started
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        log2.close()
        text = re.sub(r"\x1b\[[0-9;]*m", "", open(log_path).read())
        m = re.search(r"journal replayed into the processor positions=(\d+) \S+ ms=(\d+)", text)
        replayed, replay_ms = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        return {
            "backlog_s": backlog_s,
            "received": received,
            "stored_before_crash": stored_before,
            "replayed_positions": replayed,
            "journal_replay_ms": replay_ms,
            "ready_s": round(ready_s, 2),
            "all_stored_s": round(stored_s, 2),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary")
    p.add_argument("--backlogs", default="1,10,55")
    p.add_argument("--vehicles", type=int, default=10000)
    p.add_argument("--connections", type=int, default=8)
    args = p.parse_args()
    results = []
    for backlog in [int(b) for b in args.backlogs.split(",")]:
        r = one(args.binary, backlog, args)
        results.append(r)
        print(f"backlog {r['backlog_s']:3} s: {r['received']:9.0f} positions "
              f"(stored before the crash {r['stored_before_crash']:.0f}), "
              f"replayed {r['replayed_positions']} in {r['journal_replay_ms']} ms, "
              f"ready {r['ready_s']} s, all stored {r['all_stored_s']} s after the restart",
              flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs("bench/results", exist_ok=True)
    out = f"bench/results/replay-{stamp}.json"
    with open(out, "w") as f:
        json.dump({"vehicles": args.vehicles, "connections": args.connections,
                   "results": results}, f, indent=2)
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
