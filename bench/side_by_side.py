#!/usr/bin/env python3
"""Helpers of bench/side-by-side (standard library only).

  redis-load FLEET.csv                  GEOADD commands (RESP) on stdout, for redis-cli --pipe
  redis-near PORT CITY_KM QUERIES CONC  GEOSEARCH load with redis-benchmark, JSON on stdout
  pg-script ROWS.csv                    the PostgreSQL ingest script (COPY + upsert per batch)
  report WORK RESULTS PARAMS            the side-by-side report (markdown + JSON)
"""

import csv
import json
import math
import os
import platform
import random
import subprocess
import sys

# The bench's grid city is centred here (fleetd bench, bench/src/store.rs).
CENTER_LAT, CENTER_LON = 52.52, 13.405
RADIUS_M = 1000
LIMIT = 1000
POINTS = 20


def resp(*args):
    out = [f"*{len(args)}\r\n"]
    for a in args:
        a = str(a)
        out.append(f"${len(a.encode())}\r\n{a}\r\n")
    return "".join(out)


def redis_load(path):
    w = sys.stdout
    with open(path) as f:
        rows = csv.DictReader(f)
        batch = []
        for r in rows:
            batch += [r["lon"], r["lat"], r["device_id"]]
            if len(batch) >= 3000:
                w.write(resp("GEOADD", "fleet", *batch))
                batch = []
        if batch:
            w.write(resp("GEOADD", "fleet", *batch))


def query_points(city_km, n, seed=7):
    # The same box fleetd bench draws its near queries from: 80 % of the
    # city around its centre.
    half = city_km * 1000 / 2 * 0.8
    m_lat, m_lon = 111_200.0, 111_200.0 * math.cos(math.radians(CENTER_LAT))
    rng = random.Random(seed)
    return [
        (CENTER_LAT + rng.uniform(-half, half) / m_lat, CENTER_LON + rng.uniform(-half, half) / m_lon)
        for _ in range(n)
    ]


def redis_near(port, city_km, queries, conc):
    per_point = max(1, int(queries) // POINTS)
    seconds, p50s, p99s, maxes, counts = 0.0, [], [], [], []
    for lat, lon in query_points(float(city_km), POINTS):
        cmd = ["GEOSEARCH", "fleet", "FROMLONLAT", f"{lon:.6f}", f"{lat:.6f}", "BYRADIUS", str(RADIUS_M), "m",
               "COUNT", str(LIMIT), "ANY", "WITHCOORD"]
        out = subprocess.run(["redis-benchmark", "-p", port, "-c", conc, "-n", str(per_point), "--csv", *cmd],
                             check=True, capture_output=True, text=True).stdout
        row = list(csv.DictReader(out.splitlines()))[-1]
        seconds += per_point / float(row["rps"])
        p50s.append(float(row["p50_latency_ms"]))
        p99s.append(float(row["p99_latency_ms"]))
        maxes.append(float(row["max_latency_ms"]))
        found = subprocess.run(["redis-cli", "-p", port, *cmd[:-1]], check=True, capture_output=True, text=True).stdout
        counts.append(len([l for l in found.splitlines() if l.strip()]))
    info = subprocess.run(["redis-cli", "-p", port, "info", "memory"], check=True, capture_output=True, text=True).stdout
    rss = next((int(l.split(":")[1]) for l in info.splitlines() if l.startswith("used_memory_rss:")), 0)
    json.dump({
        "queries": per_point * POINTS, "points": POINTS, "concurrency": int(conc),
        "per_s": per_point * POINTS / seconds, "p50_ms_mean": sum(p50s) / len(p50s),
        "p99_ms_worst_point": max(p99s), "p99_ms_median_point": sorted(p99s)[len(p99s) // 2],
        "max_ms": max(maxes), "mean_results": sum(counts) / len(counts), "rss_mb": rss / 2**20,
    }, sys.stdout)


COLUMNS = "device_id, ts_ms, lat, lon, accuracy_m, speed_mps, heading_deg, battery_pct, seq, h3_area, h3_detail"
UPDATE = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS.split(", ")[2:])


def pg_script(path):
    w = sys.stdout
    w.write(f"""
CREATE TABLE positions (device_id text NOT NULL, ts_ms bigint NOT NULL, lat float8, lon float8,
  accuracy_m real, speed_mps real, heading_deg real, battery_pct real, seq bigint,
  h3_area bigint, h3_detail bigint, PRIMARY KEY (device_id, ts_ms));
CREATE TABLE latest (LIKE positions, PRIMARY KEY (device_id));
CREATE INDEX latest_area ON latest (h3_area);
CREATE TEMP TABLE stage (LIKE positions);
""")
    current = None

    def close():
        w.write("\\.\n")
        w.write(f"INSERT INTO positions SELECT * FROM stage ON CONFLICT (device_id, ts_ms) DO UPDATE SET {UPDATE};\n")
        w.write("INSERT INTO latest SELECT DISTINCT ON (device_id) * FROM stage ORDER BY device_id, ts_ms DESC "
                f"ON CONFLICT (device_id) DO UPDATE SET ts_ms = excluded.ts_ms, {UPDATE} "
                "WHERE latest.ts_ms < excluded.ts_ms;\n")
        w.write("TRUNCATE stage;\nCOMMIT;\n")

    with open(path) as f:
        rows = csv.reader(f)
        next(rows)
        for r in rows:
            if r[-1] != current:
                if current is not None:
                    close()
                current = r[-1]
                w.write(f"BEGIN;\nCOPY stage ({COLUMNS}) FROM STDIN WITH (FORMAT csv);\n")
            w.write(",".join(r[:-1]) + "\n")
    if current is not None:
        close()


def load(work, name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)


def report(work, results, params):
    ingest = load(work, "fleetd-ingest.json")["phases"][0]
    mq, mq_sim = load(work, "mosquitto.json"), load(work, "mosquitto-sim.json")
    near_run = load(work, "fleetd-near.json")
    near = near_run["near"]
    redis = load(work, "redis-near.json")
    store, pg = load(work, "fleetd-store.json"), load(work, "pg.json")

    mq_seconds = mq_sim["elapsed_s"]
    mq_rate = mq["delivered"] / mq_seconds
    pg_rate = pg["rows"] / pg["seconds"]
    nl = near["latency_ms"] or {}
    rows = [
        ("ingest, positions/s (QoS 0, %d offered/s)" % int(params_dict(params)["RATE"]),
         f"{ingest['stored_rate']:,.0f} stored/s, {ingest['server_cpu_cores']:.2f} cores, RSS {ingest['server_rss_mb']:.0f} MB",
         f"Mosquitto: {mq_rate:,.0f} delivered/s of {mq_sim['published']:,} published, {mq['cpu_s'] / mq_seconds:.2f} cores, RSS {mq['rss_mb']:.0f} MB",
         ingest["stored_rate"] / mq_rate),
        (f"near {RADIUS_M} m among {near_run['vehicles']:,}, queries/s ({near['concurrency']} clients)",
         f"{near['per_s']:,.0f}/s, p50 {nl.get('p50', 0):.2f} ms, p99 {nl.get('p99', 0):.2f} ms, {near['mean_results']:.0f} per answer",
         f"Redis GEOSEARCH: {redis['per_s']:,.0f}/s, p50 {redis['p50_ms_mean']:.2f} ms, p99 {redis['p99_ms_worst_point']:.2f} ms (worst point), {redis['mean_results']:.0f} per answer",
         near["per_s"] / redis["per_s"]),
        (f"store write, rows/s ({store['batch_rows']:,}-row batches)",
         f"{store['rows_per_s']:,.0f}/s ({store['rows']:,} rows)",
         f"PostgreSQL: {pg_rate:,.0f}/s ({pg['rows']:,} rows, COPY + upsert)",
         store["rows_per_s"] / pg_rate),
    ]
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}"
    md = ["# fleetd side by side", "", f"Machine: {machine}. Parameters: `{params}`.", "",
          "| what | fleetd | the other | ratio fleetd / other |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {r:.2f} |" for a, b, c, r in rows]
    md += ["", f"1M tracked vehicles: fleetd server RSS {near_run['server_rss_mb']:.0f} MB at the end "
               f"(peak {near_run['server_peak_rss_mb']:.0f} MB); Redis used_memory_rss {redis['rss_mb']:.0f} MB for the same positions."]
    text = "\n".join(md) + "\n"
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "side-by-side.md"), "w") as f:
        f.write(text)
    with open(os.path.join(results, "side-by-side.json"), "w") as f:
        json.dump({"machine": machine, "params": params, "fleetd_ingest": ingest, "mosquitto": mq,
                   "mosquitto_sim": {k: v for k, v in mq_sim.items() if k != "vehicles"},
                   "fleetd_near": near_run, "redis_near": redis, "fleetd_store": store, "postgres": pg},
                  f, indent=2)
    print(text)


def params_dict(params):
    return dict(p.split("=", 1) for p in params.split())


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"redis-load": redis_load, "redis-near": redis_near, "pg-script": pg_script, "report": report}[cmd](*args)
