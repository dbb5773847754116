//! Criterion benchmarks of the processor.
//!
//! `cargo bench -p fleetd-processor --bench processor` runs all;
//! append a filter such as `-- vehicle` for one group.

use criterion::{criterion_group, criterion_main};

mod vehicle;

criterion_group!(benches, vehicle::pipeline);
criterion_main!(benches);
