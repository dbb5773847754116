#!/usr/bin/env python3
"""Convert the original traces in original/ to the canonical CSVs in this folder.

Canonical CSV: header line, then one row per fix, sorted by time:
    ts_ms,lat,lon[,speed_mps]
ts_ms is Unix epoch milliseconds (UTC), lat/lon are WGS84 degrees as written in
the source (no rounding beyond the source's own precision), speed_mps is the
speed the device itself reported (only where the source has one).
Rows with a timestamp equal to an earlier row's are dropped (first one kept);
the counts are printed and recorded in README.md.

Standard library only.  Run from anywhere:  python3 tests/data/traces/convert.py
"""
import calendar
import math
import os
import struct
import sys
import xml.etree.ElementTree as ET
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
ORIG = os.path.join(HERE, "original")

KNOT_MPS = 1852.0 / 3600.0
# The Plaka NMEA log has time of day only ($GPGLL hhmmss; its $GPZDA has no
# date fields).  A nominal, obviously artificial date is used.  Tests that
# check "timestamp too far in the past" must shift these timestamps.
PLAKA_NOMINAL_DATE = (2000, 1, 1)


def iso_to_ms(s):
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1]
    frac = 0.0
    if "." in s:
        s, f = s.split(".")
        frac = float("0." + f)
    dt = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(dt.timetuple()) * 1000 + int(round(frac * 1000))


def read_gpx(path):
    rows = []
    for _, el in ET.iterparse(path):
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "trkpt":
            t = None
            for ch in el:
                if ch.tag.rsplit("}", 1)[-1] == "time":
                    t = ch.text
            if t is None:
                raise SystemExit("trkpt without time in %s" % path)
            rows.append((iso_to_ms(t), el.get("lat"), el.get("lon")))
    return rows


def read_plaka(path):
    """$IIVTG (speed over ground) precedes $GPGLL in each 2 s cycle of the log:
    attach the latest VTG speed seen since the previous GLL to each GLL fix."""
    rows = []
    sog = None
    y, m, d = PLAKA_NOMINAL_DATE
    day0 = calendar.timegm((y, m, d, 0, 0, 0)) * 1000
    for line in open(path):
        body = line.strip().split("*")[0]
        f = body.split(",")
        if f[0] == "$IIVTG":
            sog = float(f[5]) * KNOT_MPS if f[5] else None
        elif f[0] == "$GPGLL":
            if f[6] != "A":
                continue  # not valid (never happens in this file)
            lat = int(f[1][:2]) + float(f[1][2:]) / 60.0
            if f[2] == "S":
                lat = -lat
            lon = int(f[3][:3]) + float(f[3][3:]) / 60.0
            if f[4] == "W":
                lon = -lon
            hh, mm, ss = int(f[5][0:2]), int(f[5][2:4]), float(f[5][4:])
            ts = day0 + int(round((hh * 3600 + mm * 60 + ss) * 1000))
            rows.append((ts, "%.7f" % lat, "%.7f" % lon,
                         "" if sog is None else "%.3f" % sog))
            sog = None
    return rows


def read_ais_n2k(path):
    """NMEA 2000 PGN 129038 (AIS Class A position report), canboat plain
    format: ISO receive time, prio, pgn, src, dst, len, data bytes (hex).
    Data: [0] msg id/repeat, [1:5] MMSI u32, [5:9] lon i32 1e-7 deg,
    [9:13] lat i32 1e-7 deg, [13] accuracy/RAIM/AIS second, [14:16] COG,
    [16:18] SOG u16 0.01 m/s (0xFFFF = n/a).  ts = receive time."""
    rows = []
    for line in open(path):
        f = line.strip().split(",")
        if f[2] != "129038":
            continue
        b = bytes(int(x, 16) for x in f[6:])
        mmsi, lon, lat = struct.unpack_from("<Iii", b, 1)
        sog = struct.unpack_from("<H", b, 16)[0]
        rows.append((iso_to_ms(f[0]), "%.7f" % (lat / 1e7), "%.7f" % (lon / 1e7),
                     "" if sog == 0xFFFF else "%.2f" % (sog * 0.01)))
    return rows


# GRS80 and the Lambert-93 projection (RGF93), as IGN defines them: secant
# conic conformal, standard parallels 44 N and 49 N, origin 46.5 N 3 E,
# false easting 700 000 m, false northing 6 600 000 m.
GRS80_A = 6378137.0
GRS80_F = 1.0 / 298.257222101
L93 = dict(lat1=44.0, lat2=49.0, lat0=46.5, lon0=3.0, x0=700000.0, y0=6600000.0)
# GPS time is ahead of UTC by the leap seconds since 1980: 18 s since 2017.
GPS_EPOCH_UNIX_S = calendar.timegm((1980, 1, 6, 0, 0, 0))
GPS_UTC_LEAP_S_2019 = 18
# The Vincennes RTK log gives GPS seconds of week only. Its week is 2070
# (2019-09-08 to 09-14 GPST): the same drive's raw GNSS solution in the same
# package (data/rawGps1Data.pos, RTKLIB, dated) starts at 2019/09/12
# 13:00:18 GPST at the RTK log's first position (within 0.2 m), and the
# RTK log's first second of week, 392418, is Thursday 13:00:18.
VINCENNES_GPS_WEEK = 2070


def lambert93_to_wgs84(x, y):
    """Inverse Lambert conformal conic (two standard parallels) on GRS80.
    RGF93 and WGS84 agree to well under a metre, far below what matters for
    distances between consecutive fixes."""
    e = math.sqrt(GRS80_F * (2.0 - GRS80_F))
    rad = math.radians

    def m(phi):
        return math.cos(phi) / math.sqrt(1.0 - (e * math.sin(phi)) ** 2)

    def t(phi):
        es = e * math.sin(phi)
        return math.tan(math.pi / 4.0 - phi / 2.0) / ((1.0 - es) / (1.0 + es)) ** (e / 2.0)

    p1, p2, p0 = rad(L93["lat1"]), rad(L93["lat2"]), rad(L93["lat0"])
    n = (math.log(m(p1)) - math.log(m(p2))) / (math.log(t(p1)) - math.log(t(p2)))
    big_f = m(p1) / (n * t(p1) ** n)
    rho0 = GRS80_A * big_f * t(p0) ** n
    dx, dy = x - L93["x0"], rho0 - (y - L93["y0"])
    rho = math.copysign(math.hypot(dx, dy), n)
    tt = (rho / (GRS80_A * big_f)) ** (1.0 / n)
    theta = math.atan2(dx, dy)
    lon = theta / n + rad(L93["lon0"])
    phi = math.pi / 2.0 - 2.0 * math.atan(tt)
    for _ in range(20):
        es = e * math.sin(phi)
        nxt = math.pi / 2.0 - 2.0 * math.atan(tt * ((1.0 - es) / (1.0 + es)) ** (e / 2.0))
        if abs(nxt - phi) < 1e-14:
            phi = nxt
            break
        phi = nxt
    return math.degrees(phi), math.degrees(lon)


def read_vincennes_rtk(path):
    """IGN Circe export of an RTK track: a header of lines starting with '*'
    (Latin-1), then `seconds-of-GPS-week E N altitude ...` in Lambert-93."""
    rows = []
    week0_ms = (GPS_EPOCH_UNIX_S + VINCENNES_GPS_WEEK * 7 * 86400 - GPS_UTC_LEAP_S_2019) * 1000
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            f = line.split()
            if len(f) < 4 or line.startswith("*"):
                continue
            lat, lon = lambert93_to_wgs84(float(f[1]), float(f[2]))
            ts = week0_ms + int(round(float(f[0]) * 1000.0))
            rows.append((ts, "%.9f" % lat, "%.9f" % lon))
    return rows


TRACES = [
    # (csv name, reader, original file, has speed)
    ("run-kent-tomtom-1hz.csv", read_gpx, "run-kent-tomtom-1hz.gpx", False),
    ("car-visnjan-etrex.csv", read_gpx, "car-visnjan-etrex.gpx", False),
    ("boat-plaka-nmea.csv", read_plaka, "boat-plaka-gll-vtg.nmea", True),
    ("ais-276780000-ferry.csv", read_ais_n2k, "ais-276780000-aava-n2k.data", True),
    ("car-vincennes-rtk-1hz.csv", read_vincennes_rtk, "car-vincennes-rtk-l93.txt", False),
]


def main():
    for csv_name, reader, orig, has_speed in TRACES:
        rows = reader(os.path.join(ORIG, orig))
        n_in = len(rows)
        out_of_order = sum(1 for a, b in zip(rows, rows[1:]) if b[0] < a[0])
        seen = set()
        kept = []
        for r in rows:  # keep first occurrence of each timestamp
            if r[0] in seen:
                continue
            seen.add(r[0])
            kept.append(r)
        kept.sort(key=lambda r: r[0])
        header = "ts_ms,lat,lon" + (",speed_mps" if has_speed else "")
        with open(os.path.join(HERE, csv_name), "w", newline="\n") as fh:
            fh.write(header + "\n")
            for r in kept:
                fh.write(",".join(str(x) for x in r) + "\n")
        print("%-28s fixes_in=%d duplicate_ts_dropped=%d out_of_order_in_source=%d written=%d"
              % (csv_name, n_in, n_in - len(kept), out_of_order, len(kept)))


if __name__ == "__main__":
    sys.exit(main())
