//! Criterion benchmark of `near` queries over the embedded store's latest
//! positions: a million vehicles spread over a 100 × 100 km city, 1 km
//! radius, at random points; side by side with a linear scan of the same
//! positions in memory (the cost of having no index at all).
//!
//! `cargo bench -p fleetd-store --bench area`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleetd_schemas::{DeviceId, EnrichedPosition, H3Cells, PositionReport};
use fleetd_store::{AreaQuery, FjallStore, LatestUpdate, Store, WriteBatch};
use h3o::{LatLng, Resolution};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const VEHICLES: usize = 1_000_000;
/// The city's south-west corner and size in degrees (~100 km at 52.5° N).
const SW: (f64, f64) = (52.05, 12.66);
const SPAN: (f64, f64) = (0.9, 1.48);
const RADIUS_M: f64 = 1_000.0;
/// Matches `GET /v1/vehicles?near=…&limit=1000` (one extra row tells
/// whether the answer was cut).
const LIMIT: usize = 1_001;

fn position(i: usize, rng: &mut SmallRng) -> EnrichedPosition {
    let lat = SW.0 + rng.random_range(0.0..SPAN.0);
    let lon = SW.1 + rng.random_range(0.0..SPAN.1);
    let point = LatLng::new(lat, lon).expect("finite");
    EnrichedPosition {
        report: PositionReport {
            device_id: DeviceId::parse(&format!("bench-{i}")).expect("valid id"),
            ts_ms: 1_700_000_000_000,
            lat,
            lon,
            accuracy_m: Some(5.0),
            altitude_m: None,
            speed_mps: Some(8.0),
            heading_deg: Some(90.0),
            battery_pct: None,
            seq: None,
            received_ms: 1_700_000_000_050,
        },
        h3: H3Cells {
            area: u64::from(point.to_cell(Resolution::Seven)),
            detail: u64::from(point.to_cell(Resolution::Nine)),
        },
        speed_derived: false,
        heading_derived: false,
        flag: None,
    }
}

fn near(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = FjallStore::open(dir.path()).expect("open");
    let mut rng = SmallRng::seed_from_u64(1);
    let fleet: Vec<EnrichedPosition> = (0..VEHICLES).map(|i| position(i, &mut rng)).collect();
    runtime.block_on(async {
        for chunk in fleet.chunks(50_000) {
            let batch = WriteBatch {
                latest: chunk
                    .iter()
                    .map(|p| LatestUpdate {
                        position: p.clone(),
                        previous_area_cell: None,
                    })
                    .collect(),
                ..WriteBatch::default()
            };
            store.write_batch(batch.into()).await.expect("write");
        }
    });
    let queries: Vec<AreaQuery> = (0..256)
        .map(|_| AreaQuery::Near {
            lat: SW.0 + rng.random_range(0.05..SPAN.0 - 0.05),
            lon: SW.1 + rng.random_range(0.05..SPAN.1 - 0.05),
            radius_m: RADIUS_M,
        })
        .collect();

    let mut group = c.benchmark_group("near_1km_among_1m");
    let mut next = 0usize;
    group.bench_function("latest_index", |b| {
        b.iter(|| {
            next = (next + 1) % queries.len();
            let found = runtime
                .block_on(store.latest_in_area(&queries[next], LIMIT))
                .expect("query");
            black_box(found.len())
        })
    });
    group.sample_size(10);
    group.bench_function("linear_scan", |b| {
        b.iter(|| {
            next = (next + 1) % queries.len();
            let query = &queries[next];
            let found: Vec<&EnrichedPosition> = fleet
                .iter()
                .filter(|p| query.contains(p.report.lat, p.report.lon))
                .take(LIMIT)
                .collect();
            black_box(found.len())
        })
    });
    group.finish();
}

criterion_group!(benches, near);
criterion_main!(benches);
