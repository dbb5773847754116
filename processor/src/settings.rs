//! Processor settings (`[processor]` and `[vehicle]` in fleetd.toml).

use std::collections::HashMap;
use std::time::Duration;

use crate::batch::EnrichSettings;

/// Validated processor settings.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Micro-batch window: each partition flushes at this cadence.
    pub window: Duration,
    /// A partition flushes early when it holds this many positions, and
    /// stops taking input above it until the flush is under way. The
    /// default (20,000) keeps the peak memory at a million devices
    /// ~100–150 MB below 50,000; a batch writes each device's state once,
    /// so with many fixes per device per second larger batches store more
    /// per core (BENCHMARKS.md, issue 20 goal 3).
    pub max_batch: usize,
    /// Number of partition workers (default: one per core).
    pub partitions: usize,
    /// Capacity, in chunks, of the queue from ingest to the processor. With
    /// ingest chunks of at most 512 positions (~200 B each) the default 64
    /// bounds it at ~6.5 MB.
    pub queue_chunks: usize,
    /// Capacity, in chunks, of each partition's input queue.
    pub partition_queue_chunks: usize,
    /// Enrichment settings (H3 detail resolution, vehicle state).
    pub enrich: EnrichSettings,
    /// How often a partition looks for open trips of devices that went
    /// silent (and closes them).
    pub sweep_every: Duration,
    /// How often the registry cache reloads from the store, picking up
    /// changes made through other fleetd nodes.
    pub registry_refresh: Duration,
    /// How often the geofences reload from the store; `None` when no other
    /// node writes them (the embedded store).
    pub geofence_refresh: Option<Duration>,
    /// Speed limits per registry class, km/h (a device's own limit wins).
    pub class_speed_limits_kmh: HashMap<String, f64>,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(1000),
            max_batch: 20_000,
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_chunks: 64,
            partition_queue_chunks: 64,
            enrich: EnrichSettings::default(),
            sweep_every: Duration::from_secs(30),
            registry_refresh: Duration::from_secs(30),
            geofence_refresh: None,
            class_speed_limits_kmh: HashMap::new(),
        }
    }
}

/// The vehicle-state pipeline's thresholds (`[vehicle]` in fleetd.toml).
///
/// Times are in milliseconds of device time unless named otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleSettings {
    /// Reorder allowance: a fix waits this long (in device time behind its
    /// device's newest fix, or in server time since it arrived) before it is
    /// applied to the state, so fixes arriving out of order within it are
    /// applied in order. Later fixes are stored but not applied (`too_late`).
    /// `latest` does not wait.
    pub reorder_ms: i64,
    /// Fixes whose accuracy radius is larger are `poor_accuracy` (0: off).
    pub max_accuracy_m: f64,
    /// Fastest plausible speed between two fixes; faster is a `teleport`.
    pub max_speed_mps: f64,
    /// Distance every teleport check allows on top of `max_speed × dt`
    /// (plus the fix's accuracy), so GPS error over short intervals is not
    /// mistaken for speed.
    pub teleport_slack_m: f64,
    /// This many consecutive teleports that agree with each other mean the
    /// device really is there: the state jumps to them (no distance added).
    pub teleport_confirm: u32,
    /// A vehicle within this radius of a point counts as standing there.
    pub stop_radius_m: f64,
    /// The stop radius grows to this many times a fix's accuracy.
    pub accuracy_factor: f64,
    /// Standing this long makes a vehicle `stopped`.
    pub stopped_after_ms: i64,
    /// Standing this long ends the trip (at the first fix of the stop).
    pub trip_end_ms: i64,
    /// A trip shorter than this is discarded when it ends: the vehicle was
    /// moved in a car park, or the stop was interrupted by noise.
    pub min_trip_m: f64,
    /// A stopped vehicle, or one not yet seen moving, starts moving after
    /// this many consecutive fixes outside the stop radius (one noisy fix
    /// does not start a trip).
    pub depart_fixes: u32,
    /// Overspeed fires after the limit has been exceeded for this long.
    pub overspeed_grace_ms: i64,
    /// An overspeed episode ends after the speed has stayed at or below
    /// the limit for this long; the next excess is a new episode.
    pub overspeed_clear_ms: i64,
}

impl Default for VehicleSettings {
    fn default() -> Self {
        Self {
            reorder_ms: 2_000,
            max_accuracy_m: 100.0,
            max_speed_mps: crate::config::MAX_SPEED_KMH / 3.6,
            teleport_slack_m: 20.0,
            teleport_confirm: 3,
            stop_radius_m: 50.0,
            accuracy_factor: 2.0,
            stopped_after_ms: 60_000,
            trip_end_ms: 180_000,
            min_trip_m: 200.0,
            depart_fixes: 3,
            overspeed_grace_ms: 10_000,
            overspeed_clear_ms: 10_000,
        }
    }
}
