//! Processor settings (`[processor]` in fleetd.toml).

use std::time::Duration;

use crate::batch::EnrichSettings;

/// Validated processor settings.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Micro-batch window: each partition flushes at this cadence.
    pub window: Duration,
    /// A partition flushes early when it holds this many positions, and
    /// stops taking input above it until the flush is under way.
    pub max_batch: usize,
    /// Number of partition workers (default: one per core).
    pub partitions: usize,
    /// Capacity, in chunks, of the queue from ingest to the processor. With
    /// ingest chunks of at most 512 positions (~200 B each) the default 256
    /// bounds it at ~26 MB.
    pub queue_chunks: usize,
    /// Capacity, in chunks, of each partition's input queue.
    pub partition_queue_chunks: usize,
    /// Store write attempts per batch before it is dropped (and counted).
    pub store_retry_max: u32,
    /// Enrichment settings (H3 detail resolution).
    pub enrich: EnrichSettings,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(1000),
            max_batch: 50_000,
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_chunks: 256,
            partition_queue_chunks: 64,
            store_retry_max: 10,
            enrich: EnrichSettings::default(),
        }
    }
}
