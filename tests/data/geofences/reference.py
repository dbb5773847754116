#!/usr/bin/env python3
"""Writes the geofence reference data: countries-110m.geojson and expected.txt.

1. Converts world-atlas-countries-110m.json (TopoJSON, npm `world-atlas`
   2.0.2, Natural Earth 1:110m admin-0 countries) to a GeoJSON
   FeatureCollection, one Feature per country, in file order.
2. Generates 100,000 points with a seeded splitmix64 generator that the Rust
   test (processor/src/geofence/reference_tests.rs) reimplements bit for bit:
   half uniform over the world, four tenths uniform in the bounding box of a
   random valid country, a tenth within 1e-10..1e-5 degrees of a random
   country edge.
3. Computes with shapely, independently of fleetd, each country's validity
   and each point's membership (point strictly inside, i.e. shapely
   `within`), and marks the points within 1e-9 degrees of any valid
   country's boundary, which the test skips.

    pip install 'shapely>=2,<3' && python3 tests/data/geofences/reference.py

expected.txt: a JSON header line, then one line per point: `-` (no country),
`~` (within 1e-9 degrees of an edge: not compared) or the comma-separated
feature indices of the countries containing it.
"""

import json
import pathlib
import struct

import shapely
from shapely.geometry import Point, shape
from shapely.strtree import STRtree
from shapely.validation import explain_validity

HERE = pathlib.Path(__file__).resolve().parent
SEED = 0x5EED_F1EE_7000_0001
N_POINTS = 100_000
EDGE_EPS = 1e-9
MASK = (1 << 64) - 1
NEAR_SCALES = [1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5]


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def unit(self):
        """Uniform in [0, 1) with 53 random bits."""
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


def topo_to_geojson(topo):
    kx, ky = topo["transform"]["scale"]
    dx, dy = topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for qx, qy in arc:
            x += qx
            y += qy
            pts.append([x * kx + dx, y * ky + dy])
        arcs.append(pts)

    def ring(indices):
        out = []
        for i in indices:
            a = arcs[i] if i >= 0 else arcs[~i][::-1]
            out.extend(a if not out else a[1:])
        return out

    features = []
    for g in topo["objects"]["countries"]["geometries"]:
        if g["type"] == "Polygon":
            geometry = {"type": "Polygon", "coordinates": [ring(r) for r in g["arcs"]]}
        elif g["type"] == "MultiPolygon":
            geometry = {
                "type": "MultiPolygon",
                "coordinates": [[ring(r) for r in p] for p in g["arcs"]],
            }
        else:
            continue
        feature = {"type": "Feature", "properties": {"name": g["properties"]["name"]}, "geometry": geometry}
        if "id" in g:
            feature["id"] = g["id"]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def polygons_of(geometry):
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    return geometry["coordinates"]


def fnv1a(points):
    h = 0xCBF29CE484222325
    for lon, lat in points:
        for b in struct.pack("<dd", lon, lat):
            h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def main():
    topo = json.loads((HERE / "world-atlas-countries-110m.json").read_text())
    fc = topo_to_geojson(topo)
    (HERE / "countries-110m.geojson").write_text(json.dumps(fc, separators=(",", ":")) + "\n")

    shapes = [shape(f["geometry"]) for f in fc["features"]]
    valid = [i for i, s in enumerate(shapes) if s.is_valid]
    invalid = {str(i): f"{fc['features'][i]['properties']['name']}: {explain_validity(s)}"
               for i, s in enumerate(shapes) if not s.is_valid}

    rng = SplitMix64(SEED)
    points = []
    for _ in range(N_POINTS):
        kind = rng.next() % 10
        if kind < 5:
            lon = rng.unit() * 360.0 - 180.0
            lat = rng.unit() * 180.0 - 90.0
        elif kind < 9:
            minx, miny, maxx, maxy = shapes[valid[rng.next() % len(valid)]].bounds
            lon = minx + rng.unit() * (maxx - minx)
            lat = miny + rng.unit() * (maxy - miny)
        else:
            polys = polygons_of(fc["features"][valid[rng.next() % len(valid)]]["geometry"])
            rings = polys[rng.next() % len(polys)]
            ring = rings[rng.next() % len(rings)]
            s = rng.next() % (len(ring) - 1)
            a, b = ring[s], ring[s + 1]
            t = rng.unit()
            scale = NEAR_SCALES[rng.next() % len(NEAR_SCALES)]
            ox = (rng.unit() * 2.0 - 1.0) * scale
            oy = (rng.unit() * 2.0 - 1.0) * scale
            lon = a[0] + t * (b[0] - a[0]) + ox
            lat = a[1] + t * (b[1] - a[1]) + oy
        points.append((lon, lat))

    geoms = [Point(lon, lat) for lon, lat in points]
    tree = STRtree([shapes[i] for i in valid])
    inside = [[] for _ in points]
    p_idx, g_idx = tree.query(geoms, predicate="within")
    for p, g in zip(p_idx, g_idx):
        inside[p].append(valid[g])
    boundaries = STRtree([shapes[i].boundary for i in valid])
    near = set(boundaries.query(geoms, predicate="dwithin", distance=EDGE_EPS)[0].tolist())

    lines = []
    for i in range(N_POINTS):
        if i in near:
            lines.append("~")
        elif inside[i]:
            lines.append(",".join(str(x) for x in sorted(inside[i])))
        else:
            lines.append("-")
    header = {
        "generator": f"shapely {shapely.__version__} (GEOS {shapely.geos_version_string}), tests/data/geofences/reference.py",
        "fences": "countries-110m.geojson",
        "seed": f"{SEED:#x}",
        "points": N_POINTS,
        "points_fnv1a": f"{fnv1a(points):#018x}",
        "edge_eps_deg": EDGE_EPS,
        "valid": valid,
        "invalid": invalid,
        "near_edge": len(near),
        "inside": sum(1 for x in inside if x),
    }
    (HERE / "expected.txt").write_text(json.dumps(header) + "\n" + "\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in header.items() if k != "valid"}, indent=1))


if __name__ == "__main__":
    main()
