//! Tests of the area cover: every point a query selects must fall in one of
//! the planned ranges.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::area::haversine_m;

fn random_point(rng: &mut SmallRng) -> (f64, f64) {
    // Uniform on the sphere, so polar and equatorial cells are both hit.
    let lat = rng.random_range(-1.0f64..=1.0).asin().to_degrees();
    (lat, rng.random_range(-180.0..=180.0))
}

fn cell_at(lat: f64, lon: f64, res: Resolution) -> CellIndex {
    LatLng::new(lat, lon)
        .expect("test coordinates are finite")
        .to_cell(res)
}

fn res(r: u8) -> Resolution {
    Resolution::try_from(r).expect("test resolutions are valid")
}

/// Whether the position at (lat, lon), stored under its res-7 cell, is in a
/// scan of the plan.
fn planned(plan: &ScanPlan, lat: f64, lon: f64) -> bool {
    let stored = u64::from(cell_at(lat, lon, Resolution::Seven));
    match plan {
        ScanPlan::FullScan => true,
        ScanPlan::Ranges(ranges) => ranges.iter().any(|r| r.contains(&stored)),
    }
}

fn ranges_of(plan: &ScanPlan) -> &[RangeInclusive<u64>] {
    match plan {
        ScanPlan::Ranges(ranges) => ranges,
        ScanPlan::FullScan => panic!("expected ranges, got a full scan"),
    }
}

#[test]
fn logical_ancestor_is_a_geometric_neighbour() {
    // The premise of the second ring (module doc): the logical ancestor of a
    // point's fine cell is the coarse cell holding the point or a neighbour.
    let mut rng = SmallRng::seed_from_u64(7);
    let mut differs = 0;
    for _ in 0..20_000 {
        let (lat, lon) = random_point(&mut rng);
        for (fine, coarse) in (1..=15u8).flat_map(|f| (0..f).map(move |c| (f, c))) {
            if fine != 7 && coarse != 7 {
                continue;
            }
            let ancestor = cell_at(lat, lon, res(fine))
                .parent(res(coarse))
                .expect("coarser parent exists");
            let geometric = cell_at(lat, lon, res(coarse));
            if ancestor != geometric {
                differs += 1;
                let disk: Vec<CellIndex> = geometric.grid_disk(1);
                assert!(
                    disk.contains(&ancestor),
                    "({lat}, {lon}) res {fine} -> {coarse}"
                );
            }
        }
    }
    // The case the ring exists for really occurs.
    assert!(differs > 100, "{differs}");
}

#[test]
fn bbox_plans_cover_every_inside_point() {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut full_scans = 0;
    for case in 0..300 {
        // Sizes from ~100 m to continental, anywhere, including boxes that
        // touch a pole or wrap the antimeridian.
        let (lat, lon) = random_point(&mut rng);
        let half_lat = 10f64.powf(rng.random_range(-3.0..1.5));
        let half_lon = 10f64.powf(rng.random_range(-3.0..1.8));
        let (min_lat, max_lat) = ((lat - half_lat).max(-90.0), (lat + half_lat).min(90.0));
        let mut min_lon = lon - half_lon;
        let mut max_lon = lon + half_lon;
        if min_lon < -180.0 {
            min_lon += 360.0;
        }
        if max_lon > 180.0 {
            max_lon -= 360.0;
        }
        let bbox = BBox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        };
        let plan = plan(&AreaQuery::BBox(bbox)).expect("valid bbox");
        if plan == ScanPlan::FullScan {
            full_scans += 1;
        }
        for _ in 0..500 {
            let p_lat = rng.random_range(min_lat..=max_lat);
            let p_lon = if bbox.crosses_antimeridian() {
                let lon = rng.random_range(min_lon..=max_lon + 360.0);
                if lon > 180.0 { lon - 360.0 } else { lon }
            } else {
                rng.random_range(min_lon..=max_lon)
            };
            assert!(bbox.contains(p_lat, p_lon));
            assert!(
                planned(&plan, p_lat, p_lon),
                "case {case}: {bbox:?} misses ({p_lat}, {p_lon})"
            );
        }
        // The corners are the most likely to be missed.
        for (p_lat, p_lon) in [
            (min_lat, min_lon),
            (min_lat, max_lon),
            (max_lat, min_lon),
            (max_lat, max_lon),
        ] {
            assert!(
                planned(&plan, p_lat, p_lon),
                "case {case}: {bbox:?} corner ({p_lat}, {p_lon})"
            );
        }
    }
    // Most of these boxes are far below a quarter of the earth.
    assert!(full_scans < 30, "{full_scans}");
}

#[test]
fn near_plans_cover_every_inside_point() {
    let mut rng = SmallRng::seed_from_u64(13);
    for case in 0..300 {
        let (lat, lon) = random_point(&mut rng);
        let radius_m = 10f64.powf(rng.random_range(1.0..6.5));
        let query = AreaQuery::Near { lat, lon, radius_m };
        let plan = plan(&query).expect("valid circle");
        let mut inside = 0;
        for _ in 0..2_000 {
            // Points around the centre at up to 1.5 radii, most inside.
            let bearing = rng.random_range(0.0..std::f64::consts::TAU);
            let dist = radius_m * rng.random_range(0.0f64..1.5).min(1.0) / EARTH_RADIUS_M;
            let (phi, lambda) = (lat.to_radians(), lon.to_radians());
            let p_phi = (phi.sin() * dist.cos() + phi.cos() * dist.sin() * bearing.cos()).asin();
            let p_lambda = lambda
                + (bearing.sin() * dist.sin() * phi.cos())
                    .atan2(dist.cos() - phi.sin() * p_phi.sin());
            let p_lat = p_phi.to_degrees();
            let p_lon = (p_lambda.to_degrees() + 540.0).rem_euclid(360.0) - 180.0;
            if query.contains(p_lat, p_lon) {
                inside += 1;
                assert!(
                    planned(&plan, p_lat, p_lon),
                    "case {case}: {query:?} misses ({p_lat}, {p_lon})"
                );
            }
        }
        assert!(inside > 1_000, "case {case}: only {inside} points inside");
    }
}

#[test]
fn cell_plans_cover_every_inside_point() {
    let mut rng = SmallRng::seed_from_u64(17);
    for r in 0..=15u8 {
        for _ in 0..50 {
            let (lat, lon) = random_point(&mut rng);
            let cell = cell_at(lat, lon, res(r));
            let plan = ScanPlan::Ranges(ranges(cell_cover(cell)));
            // Sample the cell densely around its centre and along its edges.
            let center = LatLng::from(cell);
            let boundary: Vec<LatLng> = cell.boundary().iter().copied().collect();
            for (i, vertex) in boundary.iter().enumerate() {
                let next = boundary[(i + 1) % boundary.len()];
                for _ in 0..20 {
                    let (a, b) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
                    // A point of the triangle centre–vertex–next vertex.
                    let (a, b) = if a + b > 1.0 {
                        (1.0 - a, 1.0 - b)
                    } else {
                        (a, b)
                    };
                    let p_lat = center.lat()
                        + a * (vertex.lat() - center.lat())
                        + b * (next.lat() - center.lat());
                    let p_lon = center.lng()
                        + a * (vertex.lng() - center.lng())
                        + b * (next.lng() - center.lng());
                    if !(-180.0..=180.0).contains(&p_lon) {
                        continue;
                    }
                    if AreaQuery::Cell(u64::from(cell)).contains(p_lat, p_lon) {
                        assert!(
                            planned(&plan, p_lat, p_lon),
                            "res {r}: {cell} misses ({p_lat}, {p_lon})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn small_areas_use_fine_cells_and_huge_ones_scan_everything() {
    // ~300 m around Alexanderplatz: a handful of res-7 cells.
    let small = AreaQuery::Near {
        lat: 52.5219,
        lon: 13.4132,
        radius_m: 300.0,
    };
    let small_plan = plan(&small).expect("valid");
    let ranges = ranges_of(&small_plan);
    assert!(ranges.len() <= 19, "{}", ranges.len());
    assert!(
        ranges.iter().all(|r| r.start() == r.end()),
        "res-7 cells only"
    );

    // All of Berlin: within the cover budget, nowhere near a full scan.
    let city = AreaQuery::BBox(BBox {
        min_lon: 13.08,
        min_lat: 52.33,
        max_lon: 13.77,
        max_lat: 52.68,
    });
    let city_plan = plan(&city).expect("valid");
    let ranges = ranges_of(&city_plan);
    assert!(!ranges.is_empty() && ranges.len() <= MAX_COVER_CELLS);
    // Consecutive res-7 indexes are 2^24 apart (digits 8–15 are fixed), so
    // this counts the res-7 index slots scanned, including the unused digit
    // value 7 in each scanned digit.
    let slots: u64 = ranges
        .iter()
        .map(|r| ((r.end() - r.start()) >> 24) + 1)
        .sum();
    // Berlin is ~170 res-7 cells; the cover may be a few times larger, not
    // a region-sized scan.
    assert!(slots < 5_000, "{slots} slots in {} ranges", ranges.len());

    let world = BBox {
        min_lon: -180.0,
        min_lat: -90.0,
        max_lon: 180.0,
        max_lat: 90.0,
    };
    assert_eq!(
        plan(&AreaQuery::BBox(world)).expect("valid"),
        ScanPlan::FullScan
    );
    let everything = AreaQuery::Near {
        lat: 0.0,
        lon: 0.0,
        radius_m: 3.0e7,
    };
    assert_eq!(plan(&everything).expect("valid"), ScanPlan::FullScan);
}

#[test]
fn circle_bboxes_wrap_and_reach_the_poles() {
    let wrap = circle_bbox(0.0, 179.9, 50_000.0).expect("not the whole earth");
    assert!(wrap.crosses_antimeridian(), "{wrap:?}");
    assert!(wrap.contains(0.0, -179.9) && wrap.contains(0.0, 179.6));

    let polar = circle_bbox(89.9, 10.0, 50_000.0).expect("not the whole earth");
    assert_eq!(
        (polar.min_lon, polar.max_lon, polar.max_lat),
        (-180.0, 180.0, 90.0)
    );

    // The box holds the whole circle: probe its widest parallel.
    let (lat, lon, radius_m) = (60.0, 20.0, 100_000.0);
    let bbox = circle_bbox(lat, lon, radius_m).expect("not the whole earth");
    let rho = radius_m / EARTH_RADIUS_M;
    let tangent_lat = (lat.to_radians().sin() / rho.cos()).asin().to_degrees();
    let d_lon = (rho.sin() / lat.to_radians().cos()).asin().to_degrees();
    let edge = haversine_m(lat, lon, tangent_lat, lon + d_lon);
    assert!((edge - radius_m).abs() < 1.0, "{edge}");
    assert!(bbox.contains(tangent_lat, lon + d_lon - 1e-9));
    assert!(circle_bbox(0.0, 0.0, 2.1e7).is_none());
}
