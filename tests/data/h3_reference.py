#!/usr/bin/env python3
"""Writes h3_expected.json: reference H3 cells for the end-to-end tests.

The values come from the `h3` Python package (the bindings of Uber's C
reference implementation), so fleetd's cells (computed with h3o) are checked
against an independent implementation. Re-run after changing POINTS:

    pip install 'h3>=4,<5' && python3 tests/data/h3_reference.py
"""

import json
import pathlib

import h3

# (name, lat, lon): places the e2e tests publish to, spread over hemispheres,
# near the antimeridian and at high latitude.
POINTS = [
    ("berlin_alexanderplatz", 52.521918, 13.413215),
    ("san_francisco_ferry_building", 37.795490, -122.393570),
    ("sydney_opera_house", -33.856784, 151.215297),
    ("suva_fiji_antimeridian", -18.141600, 178.441900),
    ("longyearbyen_svalbard", 78.223172, 15.626723),
    ("sao_paulo_se", -23.550520, -46.633308),
]

RESOLUTIONS = (7, 9, 15)


def main() -> None:
    out = {
        "generator": f"h3 {h3.__version__} (python), tests/data/h3_reference.py",
        "points": [
            {
                "name": name,
                "lat": lat,
                "lon": lon,
                "cells": {str(r): h3.latlng_to_cell(lat, lon, r) for r in RESOLUTIONS},
            }
            for name, lat, lon in POINTS
        ],
    }
    path = pathlib.Path(__file__).with_name("h3_expected.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
