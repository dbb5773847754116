//! The full vehicle-state pipeline per position: `process_batch` with
//! default settings (sort, dedupe, H3 cells, latest with its gate, reorder
//! allowance, filters, motion, odometer, trips, registry join, overspeed),
//! one fix per vehicle per 1 s batch, state carried from batch to batch.
//! Geofences are left empty here (they have their own group).
//!
//! Vehicles drive straight lines at 12 m/s for 5 min and stand for 2 min,
//! each with its own phase and heading, with ±3 m of GPS noise and no speed
//! field (so speed and heading are derived). `faulted` adds 5% duplicates,
//! 1% teleports and deliveries shuffled within the batch. `h3_cells_only`
//! is the baseline: the H3 part alone, what every position costs anyway.

use std::cell::Cell;
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use fleetd_geofence::Geofences;
use fleetd_processor::{BatchContext, EnrichSettings, PartitionState, cells, process_batch};
use fleetd_schemas::{DeviceId, DeviceInfo, PositionReport};
use fleetd_store::Registry;
use h3o::Resolution;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const VEHICLES: usize = 10_000;
const M_PER_DEG: f64 = 111_195.0;
const DRIVE_S: i64 = 300;
const STAND_S: i64 = 120;
const SPEED_MPS: f64 = 12.0;
/// Device time of the first batch (2024-01-01).
const T0_MS: i64 = 1_704_067_200_000;

/// One simulated vehicle: where it starts, where it heads, its cycle phase.
struct Vehicle {
    id: DeviceId,
    lat: f64,
    lon: f64,
    heading: f64,
    phase_s: i64,
}

impl Vehicle {
    /// Metres driven after `t_s` seconds of the cycle.
    fn driven_m(&self, t_s: i64) -> f64 {
        let t = t_s + self.phase_s;
        let cycle = DRIVE_S + STAND_S;
        let (cycles, rest) = (t / cycle, t % cycle);
        SPEED_MPS * (cycles * DRIVE_S + rest.min(DRIVE_S)) as f64
    }

    fn report(&self, rng: &mut SmallRng, t_s: i64) -> PositionReport {
        let d = self.driven_m(t_s);
        let (nx, ny) = (rng.random_range(-3.0..3.0), rng.random_range(-3.0..3.0));
        let north = d * self.heading.cos() + ny;
        let east = d * self.heading.sin() + nx;
        let ts_ms = T0_MS + t_s * 1000;
        PositionReport {
            device_id: self.id.clone(),
            ts_ms,
            lat: self.lat + north / M_PER_DEG,
            lon: self.lon + east / (M_PER_DEG * self.lat.to_radians().cos()),
            accuracy_m: Some(5.0),
            altitude_m: None,
            speed_mps: None,
            heading_deg: None,
            battery_pct: None,
            seq: None,
            received_ms: ts_ms + 300,
        }
    }
}

fn fleet(rng: &mut SmallRng) -> Vec<Vehicle> {
    (0..VEHICLES)
        .map(|i| Vehicle {
            id: DeviceId::parse(&format!("v{i:05}")).expect("valid id"),
            lat: 52.0 + rng.random_range(0.0..1.0),
            lon: 13.0 + rng.random_range(0.0..1.0),
            heading: rng.random_range(0.0..std::f64::consts::TAU),
            phase_s: rng.random_range(0..DRIVE_S + STAND_S),
        })
        .collect()
}

/// Every vehicle's fix for second `t_s`, optionally with faults.
fn batch(vehicles: &[Vehicle], rng: &mut SmallRng, t_s: i64, faulted: bool) -> Vec<PositionReport> {
    let mut out: Vec<PositionReport> = vehicles.iter().map(|v| v.report(rng, t_s)).collect();
    if faulted {
        for i in 0..out.len() {
            let roll: f64 = rng.random();
            if roll < 0.05 {
                out.push(out[i].clone());
            } else if roll < 0.06 {
                out[i].lat += 0.3;
            }
        }
        out.shuffle(rng);
    }
    out
}

/// `process_batch` per position, in steady state (the fleet has been
/// running for ten minutes of batches before measuring).
pub(crate) fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("vehicle_state");
    group.sample_size(20);
    group.throughput(Throughput::Elements(VEHICLES as u64));
    let registry = Registry::default();
    let geofences = Geofences::default();
    let settings = EnrichSettings::default();
    for faulted in [false, true] {
        let mut rng = SmallRng::seed_from_u64(7);
        let vehicles = fleet(&mut rng);
        for v in vehicles.iter().step_by(2) {
            registry.upsert(
                v.id.clone(),
                DeviceInfo {
                    name: Some(v.id.to_string()),
                    speed_limit_kmh: Some(40.0),
                    ..DeviceInfo::default()
                },
            );
        }
        let mut state = PartitionState::default();
        let second = Cell::new(0i64);
        let run = |state: &mut PartitionState, reports: Vec<PositionReport>| {
            let t_s = second.get();
            let ctx = BatchContext {
                now_ms: T0_MS + t_s * 1000 + 1000,
                registry: &registry,
                geofences: &geofences,
                release_all: false,
                sweep: t_s % 30 == 0,
            };
            second.set(t_s + 1);
            process_batch(state, reports, &settings, &ctx)
        };
        for t in 0..600 {
            let b = batch(&vehicles, &mut rng, t, faulted);
            run(&mut state, b);
        }
        let name = if faulted { "faulted" } else { "clean" };
        group.bench_function(BenchmarkId::new("process_batch", name), |b| {
            b.iter_batched(
                || batch(&vehicles, &mut rng, second.get(), faulted),
                |reports| black_box(run(&mut state, reports)),
                BatchSize::LargeInput,
            );
        });
    }
    let mut rng = SmallRng::seed_from_u64(7);
    let vehicles = fleet(&mut rng);
    let reports = batch(&vehicles, &mut rng, 0, false);
    group.bench_function("h3_cells_only", |b| {
        b.iter(|| {
            for r in &reports {
                black_box(cells(r.lat, r.lon, Resolution::Nine));
            }
        });
    });
    group.finish();
}
