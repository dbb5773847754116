//! Processing one micro-batch of one partition: order, dedupe, enrich.
//!
//! Pure: no I/O and no clock reads, so it is tested with plain data.

use fleetd_schemas::{EnrichedPosition, H3Cells, PositionReport};
use fleetd_store::{LatestUpdate, WriteBatch};
use h3o::{LatLng, Resolution};

use crate::kinematics::{bearing_deg, distance_m};
use crate::state::{DeviceState, PartitionState};

/// Movement below this is not used to derive a heading: the bearing of a
/// few metres of GPS noise is meaningless.
const MIN_HEADING_DISTANCE_M: f64 = 3.0;

/// Enrichment settings of the processor.
#[derive(Debug, Clone, Copy)]
pub struct EnrichSettings {
    /// Resolution of `H3Cells::detail` (the area cell is always res 7).
    pub detail_res: Resolution,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        Self {
            detail_res: Resolution::Nine,
        }
    }
}

/// The result of processing a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// What to write to the store.
    pub write: WriteBatch,
    /// Exact duplicates (same device and `ts_ms`) dropped.
    pub duplicates: u64,
    /// Points older than their device's latest: kept in history only.
    pub late: u64,
}

/// Processes one batch: per device, sorts by device time, drops duplicates,
/// computes H3 cells, derives missing speed/heading from the previous fix,
/// and produces at most one latest update per device (never older than the
/// previous latest).
pub fn process_batch(
    state: &mut PartitionState,
    mut reports: Vec<PositionReport>,
    settings: &EnrichSettings,
) -> BatchOutcome {
    // Stable order within a device: by device time, then by arrival.
    reports.sort_unstable_by(|a, b| {
        a.device_id
            .cmp(&b.device_id)
            .then(a.ts_ms.cmp(&b.ts_ms))
            .then(a.received_ms.cmp(&b.received_ms))
    });
    let mut outcome = BatchOutcome::default();
    outcome.write.history.reserve(reports.len());
    let mut start = 0;
    while start < reports.len() {
        let device = reports[start].device_id.clone();
        let end = start
            + reports[start..]
                .iter()
                .position(|r| r.device_id != device)
                .unwrap_or(reports.len() - start);
        let previous = state.devices.get(&device).cloned();
        let mut last = previous.clone();
        // Index in `history` of the device's newest point, if it advanced.
        let mut newest = None;
        let mut prev_ts = None;
        for report in &reports[start..end] {
            if prev_ts == Some(report.ts_ms)
                || previous
                    .as_ref()
                    .is_some_and(|p| p.last_ts_ms == report.ts_ms)
            {
                outcome.duplicates += 1;
                continue;
            }
            prev_ts = Some(report.ts_ms);
            let Some(h3) = cells(report.lat, report.lon, settings.detail_res) else {
                continue;
            };
            let mut enriched = EnrichedPosition {
                report: report.clone(),
                h3,
                speed_derived: false,
                heading_derived: false,
            };
            match &last {
                Some(l) if report.ts_ms < l.last_ts_ms => outcome.late += 1,
                l => {
                    if let Some(l) = l {
                        derive_motion(&mut enriched, l);
                    }
                    last = Some(DeviceState::from(&enriched));
                    newest = Some(outcome.write.history.len());
                }
            }
            outcome.write.history.push(enriched);
        }
        if let (Some(idx), Some(new)) = (newest, last) {
            outcome.write.latest.push(LatestUpdate {
                position: outcome.write.history[idx].clone(),
                previous_area_cell: previous.as_ref().map(|p| p.last_area_cell),
            });
            state.devices.insert(device, new);
        }
        start = end;
    }
    outcome
}

/// Both H3 cells of a point; `None` only for coordinates ingest would never
/// pass (non-finite).
pub fn cells(lat: f64, lon: f64, detail_res: Resolution) -> Option<H3Cells> {
    let ll = LatLng::new(lat, lon).ok()?;
    Some(H3Cells {
        area: u64::from(ll.to_cell(Resolution::Seven)),
        detail: u64::from(ll.to_cell(detail_res)),
    })
}

/// Fills in speed and heading the device did not send, from the previous fix.
fn derive_motion(p: &mut EnrichedPosition, prev: &DeviceState) {
    let r = &mut p.report;
    let dt_s = (r.ts_ms - prev.last_ts_ms) as f64 / 1000.0;
    if dt_s <= 0.0 || (r.speed_mps.is_some() && r.heading_deg.is_some()) {
        return;
    }
    let d = distance_m(prev.last_lat, prev.last_lon, r.lat, r.lon);
    if r.speed_mps.is_none() {
        r.speed_mps = Some((d / dt_s) as f32);
        p.speed_derived = true;
    }
    if r.heading_deg.is_none() && d >= MIN_HEADING_DISTANCE_M {
        r.heading_deg = Some(bearing_deg(prev.last_lat, prev.last_lon, r.lat, r.lon) as f32);
        p.heading_derived = true;
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
