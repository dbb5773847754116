//! Per-device state kept by the partition that owns the device.

use std::collections::HashMap;

use fleetd_schemas::{DeviceId, EnrichedPosition};

/// What a partition remembers about one device between batches.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Device time of the latest accepted fix; later fixes must be newer to
    /// become latest, so late data never regresses it.
    pub last_ts_ms: i64,
    /// Latitude of the latest fix.
    pub last_lat: f64,
    /// Longitude of the latest fix.
    pub last_lon: f64,
    /// Area cell of the latest fix (to move the device in the area index).
    pub last_area_cell: u64,
}

impl From<&EnrichedPosition> for DeviceState {
    fn from(p: &EnrichedPosition) -> Self {
        Self {
            last_ts_ms: p.report.ts_ms,
            last_lat: p.report.lat,
            last_lon: p.report.lon,
            last_area_cell: p.h3.area,
        }
    }
}

/// The state of every device of one partition. Owned by exactly one worker,
/// so it needs no lock.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Devices by id.
    pub devices: HashMap<DeviceId, DeviceState>,
}
