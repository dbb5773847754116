//! The index against a brute-force exact test, over fences from metres to
//! a thousand kilometres, and its incremental updates and distances.

use fleetd_schemas::GeofenceId;
use geo::{Contains, Coord, Distance, Geodesic, LineString, Point, Polygon};
use h3o::{LatLng, Resolution};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const M_PER_DEG: f64 = 111_195.0;

fn gid(s: &str) -> GeofenceId {
    GeofenceId::parse(s).expect("valid id")
}

fn fence(id: &str, shape: Shape) -> Geofence {
    Geofence {
        id: gid(id),
        name: None,
        properties: serde_json::Map::new(),
        dwell_s: None,
        shape,
    }
}

/// A star-shaped (so simple) polygon of `n` vertices around a centre, radius
/// `r_m` metres jittered down to 60 %, optionally with a hole.
pub(super) fn star(
    rng: &mut SmallRng,
    lon: f64,
    lat: f64,
    r_m: f64,
    n: usize,
    hole: bool,
) -> Polygon<f64> {
    let ring = |rng: &mut SmallRng, r_m: f64, lo: f64| {
        let kx = M_PER_DEG * lat.to_radians().cos();
        let mut pts: Vec<Coord<f64>> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                let r = r_m * rng.random_range(lo..1.0);
                Coord {
                    x: lon + r * a.cos() / kx,
                    y: lat + r * a.sin() / M_PER_DEG,
                }
            })
            .collect();
        pts.push(pts[0]);
        LineString(pts)
    };
    let shell = ring(rng, r_m, 0.6);
    let holes = if hole {
        vec![ring(rng, r_m * 0.4, 0.5)]
    } else {
        vec![]
    };
    Polygon::new(shell, holes)
}

/// What a fence's exact geometry says, with no index involved.
fn brute(f: &Geofence, lat: f64, lon: f64) -> bool {
    let pt = Point::new(lon, lat);
    match &f.shape {
        Shape::Circle(c) => Geodesic.distance(Point::from(c.center), pt) < c.radius_m,
        Shape::Polygon(p) => p.contains(&pt),
        Shape::MultiPolygon(mp) => mp.contains(&pt),
    }
}

/// Builds an index of `fences` and checks every point's answer against the
/// brute-force test over all fences.
fn check(fences: &[Geofence], points: &[(f64, f64)], settings: IndexSettings) -> usize {
    let mut index = GeofenceIndex::new(settings);
    for f in fences {
        assert!(index.insert(f.clone()).is_none());
    }
    assert_eq!(index.len(), fences.len());
    let mut hits = Vec::new();
    let mut inside = 0;
    for (i, &(lat, lon)) in points.iter().enumerate() {
        hits.clear();
        // Every third point as the processor asks, with its cell at the
        // detail resolution or finer; the rest from lat/lon alone.
        let known = LatLng::new(lat, lon).ok().map(|ll| {
            let res = if i % 2 == 0 {
                Resolution::Nine
            } else {
                Resolution::Twelve
            };
            ll.to_cell(res)
        });
        match known {
            Some(cell) if i % 3 == 0 => index.containing_in_cell(lat, lon, cell, &mut hits),
            _ => index.containing(lat, lon, &mut hits),
        }
        let mut got: Vec<&str> = hits.iter().map(|f| f.id.as_str()).collect();
        got.sort_unstable();
        let mut want: Vec<&str> = fences
            .iter()
            .filter(|f| brute(f, lat, lon))
            .map(|f| f.id.as_str())
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "point lat {lat} lon {lon}");
        inside += want.len();
    }
    inside
}

/// Random fences of every size (5 m to 1,000 km, log-uniform), polygons with
/// and without holes and circles, some at the antimeridian and the poles;
/// points in and around each bbox and right next to its vertices.
fn random_case(seed: u64, n_fences: usize) -> (Vec<Geofence>, Vec<(f64, f64)>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut fences = Vec::new();
    let mut points = Vec::new();
    for i in 0..n_fences {
        let r_m = 10f64.powf(rng.random_range(0.7..6.0));
        let lat = rng.random_range(-80.0..80.0);
        let span = r_m / (M_PER_DEG * f64::cos(f64::to_radians(lat))) * 1.2 + 0.001;
        let lon = if span < 170.0 {
            rng.random_range(-180.0 + span..180.0 - span)
        } else {
            0.0
        };
        let shape = match i % 4 {
            0 => Shape::Circle(Circle {
                center: Coord {
                    x: if i % 8 == 0 { 179.999 } else { lon },
                    y: if i % 16 == 4 { 89.5 } else { lat },
                },
                radius_m: r_m,
            }),
            1 => Shape::Polygon(star(&mut rng, lon, lat, r_m, 50, true)),
            _ => {
                let n = rng.random_range(3..80);
                Shape::Polygon(star(&mut rng, lon, lat, r_m, n, false))
            }
        };
        let f = fence(&format!("f{i}"), shape);
        let (cx, cy, ex, ey) = match &f.shape {
            Shape::Circle(c) => {
                let ey = c.radius_m / M_PER_DEG * 1.5;
                let ex = (ey / c.center.y.to_radians().cos().max(0.01)).min(180.0);
                (c.center.x, c.center.y, ex, ey)
            }
            _ => (lon, lat, span, r_m / M_PER_DEG * 1.2),
        };
        for _ in 0..300 {
            let plat = (cy + rng.random_range(-ey..ey)).clamp(-90.0, 90.0);
            let mut plon = cx + rng.random_range(-ex..ex);
            if plon > 180.0 {
                plon -= 360.0;
            }
            if plon < -180.0 {
                plon += 360.0;
            }
            points.push((plat, plon));
        }
        if let Shape::Polygon(p) = &f.shape {
            for c in p
                .exterior()
                .0
                .iter()
                .chain(p.interiors().iter().flat_map(|r| r.0.iter()))
            {
                let d = 10f64.powi(-rng.random_range(4..10));
                points.push((
                    c.y + d * rng.random_range(-1.0..1.0),
                    c.x + d * rng.random_range(-1.0..1.0),
                ));
            }
        }
        fences.push(f);
    }
    (fences, points)
}

#[test]
fn matches_brute_force_over_all_sizes() {
    let cases = [
        (1, 24, Resolution::Nine),
        (2, 24, Resolution::Thirteen),
        (3, 4, Resolution::Nine),
        (4, 96, Resolution::Eleven),
        (5, 48, Resolution::Seven),
    ];
    for (seed, budget, max_res) in cases {
        let (fences, points) = random_case(seed, 60);
        let inside = check(
            &fences,
            &points,
            IndexSettings {
                cell_budget: budget,
                max_res,
            },
        );
        // Points land both inside and outside, or the test proves nothing.
        assert!(
            inside > points.len() / 10 && inside < points.len(),
            "{inside} of {}",
            points.len()
        );
    }
}

#[test]
fn overlapping_fences_and_shared_cells() {
    let mut rng = SmallRng::seed_from_u64(7);
    // 200 fences around one spot: most cells are shared by many fences.
    let fences: Vec<Geofence> = (0..200)
        .map(|i| {
            let r = rng.random_range(50.0..500.0);
            let (lon, lat) = (
                13.4 + rng.random_range(-0.003..0.003),
                52.5 + rng.random_range(-0.003..0.003),
            );
            let shape = if i % 3 == 0 {
                Shape::Circle(Circle {
                    center: Coord { x: lon, y: lat },
                    radius_m: r,
                })
            } else {
                Shape::Polygon(star(&mut rng, lon, lat, r, 50, i % 5 == 0))
            };
            fence(&format!("o{i}"), shape)
        })
        .collect();
    let points: Vec<(f64, f64)> = (0..3000)
        .map(|_| {
            (
                52.5 + rng.random_range(-0.01..0.01),
                13.4 + rng.random_range(-0.015..0.015),
            )
        })
        .collect();
    check(&fences, &points, IndexSettings::default());
}

#[test]
fn insert_replace_remove() {
    let mut index = GeofenceIndex::new(IndexSettings::default());
    let mut rng = SmallRng::seed_from_u64(9);
    let a = fence(
        "a",
        Shape::Polygon(star(&mut rng, 13.40, 52.50, 300.0, 50, false)),
    );
    let b = fence(
        "b",
        Shape::Circle(Circle {
            center: Coord { x: 13.40, y: 52.50 },
            radius_m: 100.0,
        }),
    );
    let moved = fence(
        "a",
        Shape::Polygon(star(&mut rng, 13.50, 52.50, 300.0, 50, false)),
    );
    let ids = |index: &GeofenceIndex, lat, lon| {
        let mut hits = Vec::new();
        index.containing(lat, lon, &mut hits);
        let mut ids: Vec<String> = hits.iter().map(|f| f.id.to_string()).collect();
        ids.sort();
        ids
    };
    assert!(index.is_empty());
    assert!(index.insert(a.clone()).is_none());
    assert!(index.insert(b.clone()).is_none());
    assert_eq!(index.len(), 2);
    assert_eq!(ids(&index, 52.50, 13.40), ["a", "b"]);
    // Replacing moves the fence: the old area no longer answers for it.
    assert_eq!(index.insert(moved.clone()), Some(a.clone()));
    assert_eq!(index.len(), 2);
    assert_eq!(ids(&index, 52.50, 13.40), ["b"]);
    assert_eq!(ids(&index, 52.50, 13.50), ["a"]);
    assert_eq!(index.get(&gid("a")), Some(&moved));
    // Removing frees the cells; a later insert reuses the slot.
    assert_eq!(index.remove(&gid("b")), Some(b.clone()));
    assert_eq!(index.remove(&gid("b")), None);
    assert!(ids(&index, 52.50, 13.40).is_empty());
    assert_eq!(index.remove(&gid("a")), Some(moved));
    assert!(index.is_empty());
    assert!(ids(&index, 52.50, 13.50).is_empty());
    assert!(index.holds_no_cells(), "no cell left behind");
    index.insert(a);
    assert_eq!(ids(&index, 52.50, 13.40), ["a"]);
    assert_eq!(index.iter().count(), 1);
}

#[test]
fn cell_count_stays_bounded_from_parking_lot_to_country() {
    let mut rng = SmallRng::seed_from_u64(11);
    let budget = IndexSettings::default().cell_budget;
    let mut index = GeofenceIndex::new(IndexSettings::default());
    for (i, r_m) in [5.0, 50.0, 500.0, 5e3, 5e4, 5e5, 2e6]
        .into_iter()
        .enumerate()
    {
        let p = fence(
            &format!("p{i}"),
            Shape::Polygon(star(&mut rng, 10.0, 45.0, r_m, 50, true)),
        );
        let c = fence(
            &format!("c{i}"),
            Shape::Circle(Circle {
                center: Coord { x: 10.0, y: 45.0 },
                radius_m: r_m.min(1e6),
            }),
        );
        for f in [p, c] {
            let id = f.id.clone();
            index.insert(f);
            let n = index.cell_count(&id).expect("inserted");
            assert!(n > 0 && n <= 4 * budget, "{id}: {n} cells");
        }
    }
    assert!(index.memory_bytes() > 0);
}

/// `(fence, lat, lon, margin, expected)`: containment with a margin.
#[test]
fn containment_with_margin() {
    // A 0.01° square at 52°N (about 685 m × 1112 m); its west edge is at 13.0.
    let square = Polygon::new(
        LineString::from(vec![
            (13.0, 52.0),
            (13.01, 52.0),
            (13.01, 52.01),
            (13.0, 52.01),
            (13.0, 52.0),
        ]),
        vec![],
    );
    let mut index = GeofenceIndex::new(IndexSettings::default());
    index.insert(fence("sq", Shape::Polygon(square)));
    index.insert(fence(
        "ci",
        Shape::Circle(Circle {
            center: Coord { x: 13.0, y: 52.0 },
            radius_m: 1000.0,
        }),
    ));
    // Metres east of the west edge at 52.005°N, as a longitude.
    let east = |m: f64| 13.0 + m / (M_PER_DEG * 52.005f64.to_radians().cos());
    let cases = [
        ("sq", 52.005, east(30.0), 10.0, Containment::Inside),
        ("sq", 52.005, east(30.0), 40.0, Containment::Straddling),
        ("sq", 52.005, east(-30.0), 10.0, Containment::Outside),
        ("sq", 52.005, east(-30.0), 40.0, Containment::Straddling),
        ("sq", 52.005, east(5.0), 0.0, Containment::Inside),
        ("sq", 52.005, east(300.0), 250.0, Containment::Inside),
        ("sq", 53.0, 14.0, 1000.0, Containment::Outside),
        // The circle: 1000 m radius around the square's south-west corner.
        ("ci", 52.0, 13.0, 500.0, Containment::Inside),
        (
            "ci",
            52.0 + 990.0 / 111_250.0,
            13.0,
            5.0,
            Containment::Inside,
        ),
        (
            "ci",
            52.0 + 990.0 / 111_250.0,
            13.0,
            20.0,
            Containment::Straddling,
        ),
        (
            "ci",
            52.0 + 1020.0 / 111_250.0,
            13.0,
            10.0,
            Containment::Outside,
        ),
    ];
    for (id, lat, lon, margin, want) in cases {
        assert_eq!(
            index.containment(&gid(id), lat, lon, margin),
            Some(want),
            "{id} {lat} {lon} {margin}"
        );
    }
    assert_eq!(index.containment(&gid("nope"), 52.0, 13.0, 1.0), None);
}

#[test]
fn boundary_distance_is_close_to_geodesic() {
    let square = Polygon::new(
        LineString::from(vec![
            (13.0, 52.0),
            (13.01, 52.0),
            (13.01, 52.01),
            (13.0, 52.01),
            (13.0, 52.0),
        ]),
        vec![],
    );
    let mut index = GeofenceIndex::new(IndexSettings::default());
    index.insert(fence("sq", Shape::Polygon(square)));
    for (lat, lon, foot) in [
        // West of the west edge, inside it, and south of the south edge.
        (52.005, 12.999, (13.0, 52.005)),
        (52.005, 13.002, (13.0, 52.005)),
        (51.99, 13.005, (13.005, 52.0)),
        (52.001, 13.005, (13.005, 52.0)),
    ] {
        let got = index
            .distance_to_boundary_m(&gid("sq"), lat, lon)
            .expect("fence");
        let want = Geodesic.distance(Point::new(lon, lat), Point::new(foot.0, foot.1));
        assert!(
            (got - want).abs() <= 0.01 * want,
            "{lat} {lon}: {got} vs geodesic {want}"
        );
    }
    let mut index = GeofenceIndex::new(IndexSettings::default());
    index.insert(fence(
        "ci",
        Shape::Circle(Circle {
            center: Coord { x: 13.0, y: 52.0 },
            radius_m: 1000.0,
        }),
    ));
    let at = Point::new(13.0, 52.02);
    let want = Geodesic.distance(Point::new(13.0, 52.0), at) - 1000.0;
    let got = index
        .distance_to_boundary_m(&gid("ci"), 52.02, 13.0)
        .expect("fence");
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn bad_points_match_nothing() {
    let mut index = GeofenceIndex::new(IndexSettings::default());
    index.insert(fence(
        "all",
        Shape::Circle(Circle {
            center: Coord { x: 0.0, y: 0.0 },
            radius_m: 1e6,
        }),
    ));
    let mut hits = Vec::new();
    for (lat, lon) in [(f64::NAN, 0.0), (0.0, f64::INFINITY), (91.0, 0.0)] {
        index.containing(lat, lon, &mut hits);
    }
    assert!(hits.is_empty());
    index.containing(0.0, 0.0, &mut hits);
    assert_eq!(hits.len(), 1);
}
