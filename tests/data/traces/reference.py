#!/usr/bin/env python3
"""Reference values for the canonical trace CSVs in this folder -> expected.json.

Independent of fleetd: distances are WGS84 ellipsoidal geodesics from
geographiclib (Karney), Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2)["s12"].
A spherical haversine sum (R = 6371008.8 m, the IUGG mean radius) is recorded
as well, so a Rust implementation can tell ellipsoid-vs-sphere differences
from real bugs.

Trip segmentation (deliberately simple, so it can be checked by hand):

  * Stop detection, greedy over fixes in time order: take fix i as anchor and
    extend j while every fix i..j is within STOP_RADIUS_M of the anchor
    (geodesic distance to fix i).  If t[j] - t[i] >= STOP_MIN_DURATION_S the
    fixes i..j form a stop and scanning resumes at j+1; otherwise the anchor
    moves to i+1.  A gap in the data with the device not moving (two fixes
    >= 120 s apart, < 50 m apart) is therefore a stop too.
  * Consecutive stops separated by less than MIN_TRIP_LENGTH_M of travel are
    merged into one stop (jitter between two stops is not a trip).
  * A trip is the movement between two stops (or the start/end of the trace):
    it starts at the last fix of the previous stop (departure) -- or fix 0 if
    the trace starts moving -- and ends at the first fix of the next stop
    (arrival) -- or the last fix if the trace ends moving.
  * Per trip: start/end ts and point, fix count, geodesic length (sum of the
    consecutive geodesic distances between its fixes), duration, mean speed
    (length / duration), max implied speed (max over its segments of
    distance / dt), and max reported speed where the device reports speed.

Usage (from the repository root):
    pip install geographiclib==2.1
    python3 tests/data/traces/reference.py          # writes expected.json
    python3 tests/data/traces/reference.py --check  # compares, exit 1 on diff
"""
import csv
import json
import math
import os
import sys

from geographiclib.geodesic import Geodesic
import geographiclib

HERE = os.path.dirname(os.path.abspath(__file__))

STOP_RADIUS_M = 50.0          # device stays within this radius of the anchor...
STOP_MIN_DURATION_S = 120.0   # ...for at least this long -> stop (trip ends)
MIN_TRIP_LENGTH_M = 200.0     # movement between two stops shorter than this is jitter
EARTH_RADIUS_M = 6371008.8    # haversine comparison only
TOP_N = 10                    # how many largest speeds / gaps to list
# Trip counts under other (radius m, duration s) pairs, to show how close a
# trace is to a threshold (not used for the main expectation).
SENSITIVITY = [(50, 60), (50, 90), (50, 110), (50, 120), (50, 130), (50, 150),
               (50, 180), (50, 300), (50, 600), (50, 1500), (25, 120), (100, 120)]

TRACES = [
    "run-kent-tomtom-1hz.csv",
    "car-visnjan-etrex.csv",
    "boat-plaka-nmea.csv",
    "ais-276780000-ferry.csv",
    "car-vincennes-rtk-1hz.csv",
]

# The car traces are replayed with this accuracy on every fix (none of the
# sources states one per fix): the eTrex as a consumer receiver (the 5 m of
# issue 19); the Vincennes RTK track with 2 m, the largest 68% radius of its
# fixes about their mean over its three stands (0.6, 1.1 and 2.0 m). Its
# export's "de 1 a 5 cm" column is the altimetric precision of the IGN
# transformation, not of the fixes; their horizontal precision is given as
# "aucune information". For each, the share of the geodesic length in steps
# shorter than that accuracy: what a jitter filter may fairly drop.
REPLAY_ACCURACY_M = {
    "car-visnjan-etrex.csv": 5.0,
    "car-vincennes-rtk-1hz.csv": 2.0,
}

G = Geodesic.WGS84


def geo(a, b):
    return G.Inverse(a[1], a[2], b[1], b[2])["s12"]


def haversine(a, b):
    p1, p2 = math.radians(a[1]), math.radians(b[1])
    dp = p2 - p1
    dl = math.radians(b[2] - a[2])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def load(name):
    rows = []
    with open(os.path.join(HERE, name)) as fh:
        for r in csv.DictReader(fh):
            sp = r.get("speed_mps")
            rows.append((int(r["ts_ms"]), float(r["lat"]), float(r["lon"]),
                         float(sp) if sp not in (None, "") else None))
    return rows


def within(a, b, radius_m):
    """geo(a, b) <= radius_m.  The haversine distance differs from the
    geodesic one by well under 1 %, so it only short-cuts the clear cases;
    near the boundary the geodesic decides (same result, much faster)."""
    h = haversine(a, b)
    if h > radius_m * 1.01 + 1.0:
        return False
    if h < radius_m * 0.99 - 1.0:
        return True
    return geo(a, b) <= radius_m


def find_stops(p, radius_m=STOP_RADIUS_M, min_duration_s=STOP_MIN_DURATION_S):
    stops = []
    i, n = 0, len(p)
    while i < n:
        j = i
        while j + 1 < n and within(p[i], p[j + 1], radius_m):
            j += 1
        if (p[j][0] - p[i][0]) / 1000.0 >= min_duration_s:
            stops.append([i, j])
            i = j + 1
        else:
            i += 1
    return stops


def path_len(seg, a, b):
    return sum(seg[k] for k in range(a, b))


def segment(p, seg, radius_m=STOP_RADIUS_M, min_duration_s=STOP_MIN_DURATION_S):
    """-> (stops, trip spans) as lists of [first, last] fix indices."""
    n = len(p)
    merged = []
    for s in find_stops(p, radius_m, min_duration_s):
        if merged and path_len(seg, merged[-1][1], s[0]) < MIN_TRIP_LENGTH_M:
            merged[-1][1] = s[1]
        else:
            merged.append(list(s))
    stops = merged
    # movement spans between stops
    spans = []
    prev_end = 0 if not stops or stops[0][0] > 0 else None
    for s in stops:
        if prev_end is not None and s[0] > prev_end:
            spans.append((prev_end, s[0]))
        prev_end = s[1]
    if prev_end is not None and prev_end < n - 1:
        spans.append((prev_end, n - 1))
    spans = [sp for sp in spans if path_len(seg, sp[0], sp[1]) >= MIN_TRIP_LENGTH_M]
    return stops, spans


def rnd(x, nd=3):
    return None if x is None else round(x, nd)


def pt(r):
    return {"ts_ms": r[0], "lat": r[1], "lon": r[2]}


def analyse(name):
    p = load(name)
    n = len(p)
    seg = [geo(p[k], p[k + 1]) for k in range(n - 1)]
    hav = [haversine(p[k], p[k + 1]) for k in range(n - 1)]
    dts = [(p[k + 1][0] - p[k][0]) / 1000.0 for k in range(n - 1)]
    total, total_h = sum(seg), sum(hav)

    stops, spans = segment(p, seg)
    sensitivity = {}
    for radius, dur in SENSITIVITY:
        sensitivity["r%g_t%g" % (radius, dur)] = len(segment(p, seg, radius, dur)[1])
    trips = []
    for a, b in spans:
        length = path_len(seg, a, b)
        dur = (p[b][0] - p[a][0]) / 1000.0
        implied = [seg[k] / dts[k] for k in range(a, b) if dts[k] > 0]
        reported = [p[k][3] for k in range(a, b + 1) if p[k][3] is not None]
        trips.append({
            "start_index": a, "end_index": b, "fixes": b - a + 1,
            "start": pt(p[a]), "end": pt(p[b]),
            "duration_s": dur,
            "length_m": rnd(length),
            "length_haversine_m": rnd(path_len(hav, a, b)),
            "mean_speed_mps": rnd(length / dur if dur > 0 else None),
            "max_implied_speed_mps": rnd(max(implied) if implied else None),
            "max_reported_speed_mps": rnd(max(reported) if reported else None),
        })

    stop_list = [{
        "start_index": a, "end_index": b, "fixes": b - a + 1,
        "start_ts_ms": p[a][0], "end_ts_ms": p[b][0],
        "duration_s": (p[b][0] - p[a][0]) / 1000.0,
        "anchor": pt(p[a]),
        "jitter_length_m": rnd(path_len(seg, a, b)),
    } for a, b in stops]

    implied_all = sorted(((seg[k] / dts[k] if dts[k] > 0 else float("inf"), k)
                          for k in range(n - 1)), reverse=True)[:TOP_N]
    gaps = sorted(((dts[k], k) for k in range(n - 1)), reverse=True)[:TOP_N]
    dt_hist = {}
    for d in dts:
        key = "%g" % d
        dt_hist[key] = dt_hist.get(key, 0) + 1
    dt_common = sorted(dt_hist.items(), key=lambda kv: -kv[1])[:5]
    same_pos = sum(1 for k in range(n - 1) if p[k][1:3] == p[k + 1][1:3])

    out = {
        "file": name,
        "points": n,
        "start_ts_ms": p[0][0],
        "end_ts_ms": p[-1][0],
        "duration_s": (p[-1][0] - p[0][0]) / 1000.0,
        "total_length_m": rnd(total),
        "total_length_haversine_m": rnd(total_h),
        "haversine_minus_geodesic_pct": rnd(100.0 * (total_h - total) / total, 4),
        "has_reported_speed": any(r[3] is not None for r in p),
        "trip_count": len(trips),
        "trip_count_sensitivity": sensitivity,
        "trips": trips,
        "stop_count": len(stops),
        "stops": stop_list,
        "data_checks": {
            "most_common_dt_s": [[k, v] for k, v in dt_common],
            "consecutive_identical_positions": same_pos,
            "largest_implied_speeds": [{
                "index": k, "ts_ms": p[k][0], "dt_s": dts[k],
                "dist_m": rnd(seg[k]), "speed_mps": rnd(v)} for v, k in implied_all],
            "largest_time_gaps": [{
                "index": k, "ts_ms": p[k][0], "dt_s": d,
                "dist_m": rnd(seg[k])} for d, k in gaps],
        },
    }
    # Direction reversals: at a fix where the track turns back by more than
    # 90 degrees (the chord over its two steps is shorter than the longer
    # step), the way out and back beyond the chord.  A car reverses a few
    # times when it parks; a receiver whose fixes jump back and forth
    # reverses every few seconds, and that excess is noise the geodesic sum
    # counts.
    reversal = 0.0
    for k in range(1, n - 1):
        chord = geo(p[k - 1], p[k + 1])
        if chord < max(seg[k - 1], seg[k]):
            reversal += seg[k - 1] + seg[k] - chord
    out["reversal_excess_m"] = rnd(reversal)
    out["reversal_excess_pct"] = rnd(100.0 * reversal / total, 2)
    acc = REPLAY_ACCURACY_M.get(name)
    if acc is not None:
        sub = sum(s for s in seg if s < acc)
        out["replay_accuracy_m"] = acc
        out["sub_accuracy_length_m"] = rnd(sub)
        out["sub_accuracy_pct"] = rnd(100.0 * sub / total, 2)
    return out


def build():
    return {
        "generator": "tests/data/traces/reference.py",
        "geographiclib_version": geographiclib.__version__,
        "ellipsoid": "WGS84 (a=6378137, f=1/298.257223563), Geodesic.WGS84.Inverse s12",
        "haversine_radius_m": EARTH_RADIUS_M,
        "thresholds": {
            "stop_radius_m": STOP_RADIUS_M,
            "stop_min_duration_s": STOP_MIN_DURATION_S,
            "min_trip_length_m": MIN_TRIP_LENGTH_M,
        },
        "traces": [analyse(t) for t in TRACES],
    }


def main():
    out = os.path.join(HERE, "expected.json")
    data = build()
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    if "--check" in sys.argv:
        same = open(out).read() == text
        print("expected.json " + ("up to date" if same else "DIFFERS"))
        return 0 if same else 1
    with open(out, "w") as fh:
        fh.write(text)
    for t in data["traces"]:
        print("%-26s points=%5d dur=%7.0fs geodesic=%10.3f m haversine=%10.3f m (%+.4f%%) trips=%d stops=%d"
              % (t["file"], t["points"], t["duration_s"], t["total_length_m"],
                 t["total_length_haversine_m"], t["haversine_minus_geodesic_pct"],
                 t["trip_count"], t["stop_count"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
