//! Criterion benchmarks of the processor.
//!
//! `cargo bench -p fleetd-processor --bench processor` runs all;
//! append a filter such as `-- geofence` for one group.

use criterion::{criterion_group, criterion_main};

mod geofence;
mod vehicle;

criterion_group!(
    benches,
    geofence::contains,
    geofence::insert,
    vehicle::pipeline
);
criterion_main!(benches);
