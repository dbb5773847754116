#!/usr/bin/env python3
"""What each `journal.durability` level costs, side by side in one run.

Runs `fleetd bench` (which starts its own `fleetd serve` on a throwaway
data directory) at QoS 1 for each level, `off`, `process` and `power`,
alternating the levels over `--rounds` rounds so all see the same machine
noise, and prints per level the median over the rounds of: positions
stored per second, publish→queryable p99, server cores, and the ratio of
each against `off` (acknowledged once queued in memory, no journal).

  usage: bench/durability/durability_side_by_side.py FLEETD_BINARY
         [--rate 40000] [--seconds 10] [--vehicles 10000]
         [--connections 4] [--rounds 2]

Figures go to bench/results/durability-<UTC time>.json.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

LEVELS = ["off", "process", "power"]


def run(binary, level, args):
    env = dict(os.environ, FLEETD_DURABILITY=level)
    cmd = [
        binary, "bench", "--json", "--qos", "1",
        "--rate", str(args.rate), "--duration", f"{args.seconds}s",
        "--vehicles", str(args.vehicles), "--connections", str(args.connections),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"fleetd bench ({level}) failed:\n{out.stderr[-4000:]}")
    phase = json.loads(out.stdout)["phases"][0]
    latency = phase.get("latency_ms") or {}
    return {
        "stored_per_s": phase["stored_rate"],
        "published_per_s": phase["publish_rate"],
        "lost": phase["lost"],
        "queryable_p50_ms": latency.get("p50"),
        "queryable_p99_ms": latency.get("p99"),
        "server_cores": phase.get("server_cpu_cores"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary")
    p.add_argument("--rate", type=int, default=40000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--vehicles", type=int, default=10000)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    samples = {level: [] for level in LEVELS}
    for r in range(args.rounds):
        order = LEVELS if r % 2 == 0 else list(reversed(LEVELS))
        for level in order:
            m = run(args.binary, level, args)
            samples[level].append(m)
            print(f"round {r + 1} {level:8} stored {m['stored_per_s']:9.0f}/s  "
                  f"p50 {m['queryable_p50_ms']} ms  p99 {m['queryable_p99_ms']} ms  cores {m['server_cores']}  lost {m['lost']}",
                  flush=True)

    def median(level, key):
        values = [s[key] for s in samples[level] if s[key] is not None]
        return statistics.median(values) if values else None

    summary = {}
    for level in LEVELS:
        summary[level] = {k: median(level, k) for k in samples[level][0]}
    base = summary["off"]
    print(f"\nQoS 1 at {args.rate}/s target, {args.vehicles} vehicles, "
          f"{args.connections} connections, {args.seconds} s, median of {args.rounds}:")
    print(f"{'durability':10} {'stored/s':>10} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>8} {'vs off':>7} "
          f"{'cores':>6} {'cores/100k/s':>13}")
    for level in LEVELS:
        s = summary[level]
        per_100k = (s["server_cores"] / s["stored_per_s"] * 100000
                    if s["server_cores"] and s["stored_per_s"] else None)
        s["cores_per_100k_per_s"] = per_100k
        ratio = s["stored_per_s"] / base["stored_per_s"] if base["stored_per_s"] else None
        p99_ratio = (s["queryable_p99_ms"] / base["queryable_p99_ms"]
                     if s["queryable_p99_ms"] and base["queryable_p99_ms"] else None)
        fmt = lambda v, f: format(v, f) if v is not None else "-"
        print(f"{level:10} {fmt(s['stored_per_s'], '10.0f')} {fmt(ratio, '7.2f')} "
              f"{fmt(s['queryable_p50_ms'], '7.0f')} {fmt(s['queryable_p99_ms'], '8.0f')} {fmt(p99_ratio, '7.2f')} "
              f"{fmt(s['server_cores'], '6.2f')} {fmt(per_100k, '13.2f')}")
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")
    os.makedirs(results, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(results, f"durability-{stamp}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "samples": samples, "median": summary}, f, indent=2)
    print(f"\nwritten to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
