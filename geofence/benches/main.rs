//! Criterion benchmarks of the geofence index.
//!
//! `cargo bench -p fleetd-geofence --bench geofence` runs all; append a
//! filter such as `-- insert` for one group.

use criterion::{criterion_group, criterion_main};

mod geofence;

criterion_group!(benches, geofence::contains, geofence::insert);
criterion_main!(benches);
