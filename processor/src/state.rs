//! Per-device state kept by the partition that owns the device.

use std::collections::HashSet;

use fleetd_schemas::{DeviceId, EnrichedPosition, Fix, Suspect, VehicleState};

use crate::device_map::DeviceMap;
use crate::reorder::Reorder;

/// The newest fix accepted as a device's latest position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestFix {
    /// The fix; later fixes must be newer to replace it, so late data never
    /// regresses `latest`.
    pub fix: Fix,
    /// Its area cell (to move the device in the area index).
    pub area_cell: u64,
}

/// What a partition remembers about one device between batches.
#[derive(Debug, Clone, Default)]
pub struct DeviceState {
    /// The latest position (decided on arrival, without waiting for the
    /// reorder allowance).
    pub latest: Option<LatestFix>,
    /// The latest position's teleport run (its own gate, see
    /// `vehicle::gate`). Boxed: rare, and every device has a state.
    pub latest_suspect: Option<Box<Suspect>>,
    /// Motion, odometer, trip, filters: advanced in device-time order.
    pub vehicle: VehicleState,
    /// Fixes waiting for their turn.
    pub(crate) reorder: Reorder,
}

impl DeviceState {
    /// State restored from a stored latest position and vehicle state.
    pub fn restore(latest: Option<&EnrichedPosition>, vehicle: Option<VehicleState>) -> Self {
        Self {
            latest: latest.map(|p| LatestFix {
                fix: Fix {
                    ts_ms: p.report.ts_ms,
                    lat: p.report.lat,
                    lon: p.report.lon,
                },
                area_cell: p.h3.area,
            }),
            latest_suspect: None,
            vehicle: vehicle.unwrap_or_default(),
            reorder: Reorder::default(),
        }
    }
}

/// The state of every device of one partition. Owned by exactly one worker,
/// so it needs no lock.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Devices by id (packed: see [`DeviceMap`]).
    pub devices: DeviceMap,
    /// Devices with fixes waiting in their reorder buffer.
    pub(crate) buffered: HashSet<DeviceId>,
}

impl PartitionState {
    /// Whether some device has fixes waiting, so the partition must run a
    /// batch even without new input.
    pub fn has_buffered(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// The earliest receive time of a fix waiting in a reorder buffer
    /// (`None`: none waits). Journal checkpoints wait for it.
    pub fn oldest_buffered_received_ms(&self) -> Option<i64> {
        self.buffered
            .iter()
            .filter_map(|id| self.devices.get(id))
            .filter_map(|ds| ds.reorder.oldest_received_ms())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tracked device costs this much in a partition, so growth here
    /// is memory a million-device fleet pays a million times: rare records
    /// are boxed to stay within budget (BENCHMARKS.md, 1M vehicles).
    #[test]
    fn per_device_state_stays_within_budget() {
        let per_device = std::mem::size_of::<(DeviceId, DeviceState)>();
        assert!(per_device <= 336, "{per_device} bytes per device");
    }
}
