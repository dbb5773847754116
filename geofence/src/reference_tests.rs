//! fleetd's validation and point membership against shapely on real
//! country borders (tests/data/geofences, made by its reference.py).

use std::path::PathBuf;

use fleetd_schemas::GeofenceId;
use serde_json::Value;

use super::*;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/geofences")
}

/// The generator of reference.py, bit for bit.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NEAR_SCALES: [f64; 6] = [1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5];

fn polygons_of(geometry: &Value) -> Vec<&Value> {
    let coords = &geometry["coordinates"];
    match geometry["type"].as_str() {
        Some("Polygon") => vec![coords],
        _ => coords
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

/// The points of reference.py, regenerated from the same seed and data.
fn points(seed: u64, n: usize, features: &[Value], valid: &[usize]) -> Vec<(f64, f64)> {
    let bounds: Vec<(f64, f64, f64, f64)> = features
        .iter()
        .map(|f| {
            let mut b = (
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
            );
            for p in polygons_of(&f["geometry"]) {
                for ring in p.as_array().expect("rings") {
                    for c in ring.as_array().expect("positions") {
                        let (x, y) = (num(&c[0]), num(&c[1]));
                        b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
                    }
                }
            }
            b
        })
        .collect();
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = rng.next() % 10;
        let point = if kind < 5 {
            let lon = rng.unit() * 360.0 - 180.0;
            let lat = rng.unit() * 180.0 - 90.0;
            (lon, lat)
        } else if kind < 9 {
            let (minx, miny, maxx, maxy) = bounds[valid[rng.below(valid.len())]];
            let lon = minx + rng.unit() * (maxx - minx);
            let lat = miny + rng.unit() * (maxy - miny);
            (lon, lat)
        } else {
            let polys = polygons_of(&features[valid[rng.below(valid.len())]]["geometry"]);
            let rings = polys[rng.below(polys.len())].as_array().expect("rings");
            let ring = rings[rng.below(rings.len())].as_array().expect("positions");
            let s = rng.below(ring.len() - 1);
            let (a, b) = (&ring[s], &ring[s + 1]);
            let t = rng.unit();
            let scale = NEAR_SCALES[rng.below(NEAR_SCALES.len())];
            let ox = (rng.unit() * 2.0 - 1.0) * scale;
            let oy = (rng.unit() * 2.0 - 1.0) * scale;
            let lon = num(&a[0]) + t * (num(&b[0]) - num(&a[0])) + ox;
            let lat = num(&a[1]) + t * (num(&b[1]) - num(&a[1])) + oy;
            (lon, lat)
        };
        out.push(point);
    }
    out
}

fn fnv1a(points: &[(f64, f64)]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for (lon, lat) in points {
        for b in lon.to_le_bytes().into_iter().chain(lat.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

#[test]
fn countries_match_shapely() {
    let fc: Value = serde_json::from_str(
        &std::fs::read_to_string(data_dir().join("countries-110m.geojson")).expect("fences file"),
    )
    .expect("geojson");
    let features = fc["features"].as_array().expect("features").clone();
    let expected = std::fs::read_to_string(data_dir().join("expected.txt")).expect("expected file");
    let mut lines = expected.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header json");
    let valid: Vec<usize> = header["valid"]
        .as_array()
        .expect("valid")
        .iter()
        .map(|v| v.as_u64().expect("index") as usize)
        .collect();

    // Validation: fleetd accepts exactly the countries shapely finds valid.
    let mut index = GeofenceIndex::new(IndexSettings::default());
    let mut accepted = Vec::new();
    for (i, feature) in features.iter().enumerate() {
        let id = GeofenceId::parse(&format!("c{i}")).expect("id");
        match Geofence::from_value(id, feature, &GeofenceLimits::default()) {
            Ok(fence) => {
                accepted.push(i);
                index.insert(fence);
            }
            Err(e) => {
                let shapely = header["invalid"][i.to_string()].as_str().unwrap_or("valid");
                eprintln!("c{i} refused: {e} (shapely: {shapely})");
            }
        }
    }
    assert_eq!(accepted, valid, "fleetd and shapely disagree on validity");

    // Membership of every point not within 1e-9 degrees of an edge.
    let seed = u64::from_str_radix(
        header["seed"]
            .as_str()
            .expect("seed")
            .trim_start_matches("0x"),
        16,
    )
    .expect("hex seed");
    let n = header["points"].as_u64().expect("count") as usize;
    let pts = points(seed, n, &features, &valid);
    assert_eq!(
        format!("{:#018x}", fnv1a(&pts)),
        header["points_fnv1a"].as_str().expect("hash"),
        "points differ from the generator's"
    );
    let mut hits = Vec::new();
    let (mut compared, mut inside) = (0, 0);
    for (i, ((lon, lat), want)) in pts.iter().zip(lines.by_ref()).enumerate() {
        if want == "~" {
            continue;
        }
        hits.clear();
        index.containing(*lat, *lon, &mut hits);
        let mut got: Vec<usize> = hits
            .iter()
            .map(|f| f.id.as_str()[1..].parse().expect("numeric id"))
            .collect();
        got.sort_unstable();
        let got = if got.is_empty() {
            "-".to_string()
        } else {
            got.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(got, want, "point {i}: lon {lon} lat {lat}");
        compared += 1;
        inside += usize::from(want != "-");
    }
    assert_eq!(lines.next(), None, "as many expectations as points");
    assert!(
        compared > 95_000 && inside > 40_000,
        "{compared} compared, {inside} inside"
    );
}
