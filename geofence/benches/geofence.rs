//! Geofence point checks: the H3 index against a linear scan, with 10k and
//! 100k polygons of 50 vertices, and the cost of one incremental insert.
//!
//! Fences are star-shaped 50-vertex polygons, 100–1000 m in radius, spread
//! at a constant density (10k per 1° × 1° at 52° N, about 7,600 km²), so a
//! point lies in ~1 fence on average; points are uniform over the same area.
//! Set `FLEETD_GEOFENCE_DUMP=dir` to write the fences (WKT) and points (CSV)
//! for `bench/geofence/postgis.sh`, which runs PostGIS on the same data.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput};
use fleetd_geofence::{Geofence, GeofenceIndex, IndexSettings, Shape};
use fleetd_schemas::GeofenceId;
use geo::{BoundingRect, Contains, Coord, LineString, Point, Polygon, Rect};
use h3o::{CellIndex, LatLng, Resolution};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const M_PER_DEG: f64 = 111_195.0;
const LAT0: f64 = 52.0;
const LON0: f64 = 13.0;
const VERTICES: usize = 50;
const POINTS: usize = 10_000;

struct Case {
    fences: Vec<Geofence>,
    /// (lat, lon)
    points: Vec<(f64, f64)>,
}

fn star(rng: &mut SmallRng, lon: f64, lat: f64, r_m: f64) -> Polygon<f64> {
    let kx = M_PER_DEG * lat.to_radians().cos();
    let mut pts: Vec<Coord<f64>> = (0..VERTICES)
        .map(|i| {
            let a = i as f64 / VERTICES as f64 * std::f64::consts::TAU;
            let r = r_m * rng.random_range(0.6..1.0);
            Coord {
                x: lon + r * a.cos() / kx,
                y: lat + r * a.sin() / M_PER_DEG,
            }
        })
        .collect();
    pts.push(pts[0]);
    Polygon::new(LineString(pts), vec![])
}

fn case(n: usize, seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let side = (n as f64 / 10_000.0).sqrt();
    let fences = (0..n)
        .map(|i| {
            let lon = LON0 + rng.random_range(0.0..side);
            let lat = LAT0 + rng.random_range(0.0..side);
            let r_m = 10f64.powf(rng.random_range(2.0..3.0));
            Geofence {
                id: GeofenceId::parse(&format!("f{i}")).expect("valid id"),
                name: None,
                properties: serde_json::Map::new(),
                dwell_s: None,
                shape: Shape::Polygon(star(&mut rng, lon, lat, r_m)),
            }
        })
        .collect();
    let points = (0..POINTS)
        .map(|_| {
            (
                LAT0 + rng.random_range(0.0..side),
                LON0 + rng.random_range(0.0..side),
            )
        })
        .collect();
    Case { fences, points }
}

/// The baseline: every fence's bbox, then the exact test, for every point.
struct LinearScan(Vec<(Rect<f64>, Polygon<f64>)>);

impl LinearScan {
    fn new(fences: &[Geofence]) -> Self {
        Self(
            fences
                .iter()
                .filter_map(|f| match &f.shape {
                    Shape::Polygon(p) => p.bounding_rect().map(|r| (r, p.clone())),
                    _ => None,
                })
                .collect(),
        )
    }

    fn count(&self, lat: f64, lon: f64) -> usize {
        let pt = Point::new(lon, lat);
        self.0
            .iter()
            .filter(|(r, p)| {
                lon >= r.min().x
                    && lon <= r.max().x
                    && lat >= r.min().y
                    && lat <= r.max().y
                    && p.contains(&pt)
            })
            .count()
    }
}

fn build(case: &Case, settings: IndexSettings) -> GeofenceIndex {
    let mut index = GeofenceIndex::new(settings);
    for f in &case.fences {
        index.insert(f.clone());
    }
    index
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn total_hits(index: &GeofenceIndex, points: &[(f64, f64)]) -> usize {
    let mut hits = Vec::new();
    points
        .iter()
        .map(|&(lat, lon)| {
            hits.clear();
            index.containing(lat, lon, &mut hits);
            hits.len()
        })
        .sum()
}

fn dump(dir: &Path, n: usize, case: &Case, index: &GeofenceIndex) {
    let mut wkt = String::new();
    for f in &case.fences {
        let Shape::Polygon(p) = &f.shape else {
            continue;
        };
        let coords: Vec<String> = p
            .exterior()
            .0
            .iter()
            .map(|c| format!("{} {}", c.x, c.y))
            .collect();
        let _ = writeln!(wkt, "{}\tSRID=4326;POLYGON(({}))", f.id, coords.join(","));
    }
    let mut csv = String::new();
    for (lat, lon) in &case.points {
        let _ = writeln!(csv, "{lon}\t{lat}");
    }
    let hits = total_hits(index, &case.points);
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(format!("fences-{n}.tsv")), wkt))
        .and_then(|()| std::fs::write(dir.join(format!("points-{n}.tsv")), csv))
        .and_then(|()| std::fs::write(dir.join(format!("hits-{n}.txt")), format!("{hits}\n")));
    if let Err(e) = written {
        eprintln!("cannot write {}: {e}", dir.display());
    }
}

/// Point checks per second: the index at 10k and 100k fences, with covers
/// capped at res 9 (the default: the pipeline's detail cell serves the
/// lookup) and at res 13 (finer covers, fewer candidates, but a cell of its
/// own per lookup), each looked up from lat/lon alone and with the point's
/// res-9 cell known; the linear scan at 10k. One group, so they are
/// measured side by side.
pub(crate) fn contains(c: &mut Criterion) {
    let mut group = c.benchmark_group("geofence_contains");
    for n in [10_000, 100_000] {
        let case = case(n, 42);
        // As in the pipeline, where each fix's res-9 cell is already
        // computed (for storage) before fences are evaluated.
        let cells: Vec<CellIndex> = case
            .points
            .iter()
            .map(|&(lat, lon)| {
                LatLng::new(lat, lon)
                    .expect("valid point")
                    .to_cell(Resolution::Nine)
            })
            .collect();
        for (label, max_res) in [("res9", Resolution::Nine), ("res13", Resolution::Thirteen)] {
            let settings = IndexSettings {
                max_res,
                ..IndexSettings::default()
            };
            let rss_before = rss_bytes();
            let start = std::time::Instant::now();
            let index = build(&case, settings);
            let built = start.elapsed();
            let rss_after = rss_bytes();
            eprintln!(
                "{n} fences, covers to {label}: built in {:.2} s ({:.1} µs/fence); index estimate {:.0} B/fence, RSS +{:.0} B/fence; {:.3} hits/point",
                built.as_secs_f64(),
                built.as_secs_f64() * 1e6 / n as f64,
                index.memory_bytes() as f64 / n as f64,
                rss_after.saturating_sub(rss_before) as f64 / n as f64,
                total_hits(&index, &case.points) as f64 / POINTS as f64,
            );
            if max_res == IndexSettings::default().max_res
                && let Some(dir) = std::env::var_os("FLEETD_GEOFENCE_DUMP")
            {
                dump(Path::new(&dir), n, &case, &index);
            }
            group.throughput(Throughput::Elements(POINTS as u64));
            group.bench_function(BenchmarkId::new(format!("{label}_from_latlng"), n), |b| {
                let mut hits = Vec::new();
                b.iter(|| {
                    let mut total = 0;
                    for &(lat, lon) in &case.points {
                        hits.clear();
                        index.containing(black_box(lat), black_box(lon), &mut hits);
                        total += hits.len();
                    }
                    total
                });
            });
            group.bench_function(BenchmarkId::new(format!("{label}_cell_known"), n), |b| {
                let mut hits = Vec::new();
                b.iter(|| {
                    let mut total = 0;
                    for (&(lat, lon), &cell) in case.points.iter().zip(&cells) {
                        hits.clear();
                        index.containing_in_cell(black_box(lat), black_box(lon), cell, &mut hits);
                        total += hits.len();
                    }
                    total
                });
            });
        }
        if n == 10_000 {
            let scan = LinearScan::new(&case.fences);
            // A tenth of the points: a scan of 10k fences is slow.
            let few = &case.points[..POINTS / 10];
            group.throughput(Throughput::Elements(few.len() as u64));
            group.bench_function(BenchmarkId::new("linear_scan", n), |b| {
                b.iter(|| {
                    few.iter()
                        .map(|&(lat, lon)| scan.count(black_box(lat), black_box(lon)))
                        .sum::<usize>()
                });
            });
        }
    }
    group.finish();
}

/// One PUT: replacing a fence in an index of 100k (remove + cover + insert).
pub(crate) fn insert(c: &mut Criterion) {
    let case = case(100_000, 42);
    let mut index = build(&case, IndexSettings::default());
    let mut rng = SmallRng::seed_from_u64(7);
    let mut group = c.benchmark_group("geofence_insert");
    group.bench_function("replace_one_in_100k", |b| {
        b.iter(|| {
            let i = rng.random_range(0..case.fences.len());
            index.insert(case.fences[i].clone())
        });
    });
    group.finish();
}
