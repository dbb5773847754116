//! Processing one micro-batch of one partition: dedupe, latest, reorder,
//! vehicle state, geofences, and what to write.
//!
//! Pure: no I/O and no clock reads (the worker passes the time in), so it is
//! tested with plain data.

use fleetd_schemas::{
    AlertKind, DeviceId, DeviceTrip, EnrichedPosition, Fix, H3Cells, MembershipChange,
    PositionReport, RejectReason, Rejection,
};
use fleetd_store::{LatestUpdate, WriteBatch};
use h3o::{CellIndex, Resolution};

use crate::reorder::Admission;
use crate::settings::VehicleSettings;
use crate::state::{DeviceState, LatestFix, PartitionState};
use crate::vehicle::{self, Effects, Limits, gate};
use fleetd_geofence::{self as geofence, FenceFix, Geofences};
use fleetd_store::Registry;

/// Filtered fixes sampled for `GET /v1/rejections` per reason and batch.
const SAMPLES_PER_REASON: usize = 4;

/// Enrichment settings of the processor.
#[derive(Debug, Clone)]
pub struct EnrichSettings {
    /// Resolution of `H3Cells::detail` (the area cell is always res 7).
    pub detail_res: Resolution,
    /// Vehicle-state thresholds.
    pub vehicle: VehicleSettings,
}

impl Default for EnrichSettings {
    fn default() -> Self {
        Self {
            detail_res: Resolution::Nine,
            vehicle: VehicleSettings::default(),
        }
    }
}

/// What a batch needs from outside: time, the registry, and what kind of
/// batch it is.
#[derive(Debug, Clone, Copy)]
pub struct BatchContext<'a> {
    /// Server time, Unix ms (for the reorder allowance and silent devices).
    pub now_ms: i64,
    /// The registry cache joined into the batch.
    pub registry: &'a Registry,
    /// The geofences the batch's fixes are evaluated against.
    pub geofences: &'a Geofences,
    /// Release every waiting fix (the last batch before shutdown).
    pub release_all: bool,
    /// Also close the trips of devices that went silent.
    pub sweep: bool,
}

/// The result of processing a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// What to write to the store.
    pub write: WriteBatch,
    /// Fixes dropped or flagged by each filter.
    pub filtered: Vec<(RejectReason, u64)>,
    /// A few of them, for `GET /v1/rejections`.
    pub samples: Vec<Rejection>,
}

impl BatchOutcome {
    /// How many fixes `reason` filtered.
    pub fn count(&self, reason: RejectReason) -> u64 {
        self.filtered
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    fn filter(
        &mut self,
        reason: RejectReason,
        device: &DeviceId,
        now_ms: i64,
        detail: impl FnOnce() -> String,
    ) {
        let n = match self.filtered.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.filtered.push((reason, 1));
                1
            }
        };
        if n as usize <= SAMPLES_PER_REASON {
            self.samples.push(Rejection {
                at_ms: now_ms,
                reason,
                source: "processor".into(),
                device_id: Some(device.to_string()),
                detail: detail(),
                payload_len: 0,
                payload_head: String::new(),
            });
        }
    }
}

/// Processes one batch: per device, sorts by device time, drops duplicates,
/// decides the latest position (never older than the previous one, gated
/// against teleports), holds fixes for the reorder allowance, then applies
/// the fixes whose turn came to the vehicle state and emits their history
/// rows (flagged when filtered), state, closed trips and alerts.
pub fn process_batch(
    state: &mut PartitionState,
    mut reports: Vec<PositionReport>,
    settings: &EnrichSettings,
    ctx: &BatchContext<'_>,
) -> BatchOutcome {
    // Stable order within a device: by device time, then by arrival.
    reports.sort_unstable_by(|a, b| {
        a.device_id
            .cmp(&b.device_id)
            .then(a.ts_ms.cmp(&b.ts_ms))
            .then(a.received_ms.cmp(&b.received_ms))
    });
    let vs = &settings.vehicle;
    let mut outcome = BatchOutcome::default();
    outcome.write.history.reserve(reports.len());
    // Reports move into their positions: no copy per fix.
    let mut reports = reports.into_iter().peekable();
    while let Some(first) = reports.peek() {
        let device = first.device_id.clone();
        let ds = state.devices.entry(device.clone()).or_default();
        let previous_cell = ds.latest.map(|l| l.area_cell);
        let mut new_latest = None;
        while let Some(report) = reports.next_if(|r| r.device_id == device) {
            // Silence is counted from the last arrival, not from the last
            // fix applied, which trails it by up to the reorder allowance.
            ds.vehicle.last_seen_ms = ds.vehicle.last_seen_ms.max(report.received_ms);
            let Some(h3) = cells(report.lat, report.lon, settings.detail_res) else {
                continue;
            };
            let ts_ms = report.ts_ms;
            let mut position = EnrichedPosition {
                report,
                h3,
                speed_derived: false,
                heading_derived: false,
                flag: None,
            };
            match ds.reorder.classify(ts_ms, ds.vehicle.ts_ms) {
                Admission::Duplicate => {
                    outcome.filter(RejectReason::Duplicate, &device, ctx.now_ms, || {
                        format!("a fix at ts_ms {ts_ms} was already received")
                    });
                }
                Admission::TooLate => {
                    let applied = ds.vehicle.ts_ms;
                    outcome.filter(RejectReason::TooLate, &device, ctx.now_ms, || {
                        format!(
                            "ts_ms {} is {} ms older than the newest applied fix, beyond the \
                             reorder allowance of {} ms; kept in history only",
                            ts_ms,
                            applied - ts_ms,
                            vs.reorder_ms
                        )
                    });
                    position.flag = Some(RejectReason::TooLate);
                    outcome.write.history.push(position);
                }
                Admission::Pending => {
                    if let Some(latest) = latest_candidate(ds, &position, vs) {
                        new_latest = Some(latest);
                    }
                    ds.reorder.insert(position);
                }
            }
        }
        if let Some(position) = new_latest {
            outcome.write.latest.push(LatestUpdate {
                position,
                previous_area_cell: previous_cell,
            });
        }
        if !ds.reorder.is_empty() {
            state.buffered.insert(device);
        }
    }

    let registry = ctx.registry.read();
    let fences = ctx.geofences.read();
    let tracking = ctx.geofences.tracking();
    let buffered: Vec<DeviceId> = state.buffered.iter().cloned().collect();
    for device in buffered {
        let Some(ds) = state.devices.get_mut(&device) else {
            state.buffered.remove(&device);
            continue;
        };
        let info = registry.get(&device);
        let limits = Limits {
            speed_limit_kmh: ctx.registry.speed_limit_kmh(info),
            device_name: info.and_then(|i| i.name.as_deref()),
        };
        let mut effects = Effects::default();
        let mut released = 0usize;
        let due: Vec<EnrichedPosition> = ds
            .reorder
            .release(ctx.now_ms, vs.reorder_ms, ctx.release_all)
            .collect();
        for mut position in due {
            released += 1;
            let last = ds.vehicle.last_fix;
            let applied = vehicle::apply(&mut ds.vehicle, &mut position, limits, vs, &mut effects);
            if let Some(reason) = applied.flag {
                let r = &position.report;
                outcome.filter(reason, &device, ctx.now_ms, || {
                    filter_detail(reason, r, last, applied.implied_mps, vs)
                });
            }
            // Fences see every fix the state accepted, stationary ones
            // included (a parked vehicle is inside its depot), in device
            // time order; a fix the gate refused could flip membership on
            // a bad position.
            let usable = matches!(applied.flag, None | Some(RejectReason::StationaryJitter));
            let tracked = !fences.is_empty() || !ds.vehicle.fences.members.is_empty();
            if usable && tracked {
                let r = &position.report;
                let fix = FenceFix {
                    device: &device,
                    ts_ms: r.ts_ms,
                    lat: r.lat,
                    lon: r.lon,
                    accuracy_m: r.accuracy_m,
                    cell: CellIndex::try_from(position.h3.detail).ok(),
                };
                let first = effects.alerts.len();
                geofence::evaluate(
                    &mut ds.vehicle.fences,
                    &fix,
                    &fences,
                    tracking,
                    &mut effects.alerts,
                );
                if let Some(name) = limits.device_name {
                    for alert in &mut effects.alerts[first..] {
                        alert.detail.device_name = Some(name.to_owned());
                    }
                }
            }
            outcome.write.history.push(position);
        }
        if ds.reorder.is_empty() {
            state.buffered.remove(&device);
        }
        if released > 0 {
            push_effects(&mut outcome, &device, ds, effects);
        }
    }

    if ctx.sweep {
        for (device, ds) in state.devices.iter_mut() {
            let mut effects = Effects::default();
            // A device with fixes still waiting is not silent.
            if ds.reorder.is_empty()
                && vehicle::close_if_silent(&mut ds.vehicle, ctx.now_ms, vs, &mut effects)
            {
                push_effects(&mut outcome, device, ds, effects);
            }
        }
    }
    outcome
}

/// Adds a device's changed state, closed trips and alerts to the write.
fn push_effects(outcome: &mut BatchOutcome, device: &DeviceId, ds: &DeviceState, effects: Effects) {
    outcome
        .write
        .states
        .push((device.clone(), ds.vehicle.clone()));
    outcome
        .write
        .trips
        .extend(effects.closed_trips.into_iter().map(|trip| DeviceTrip {
            device_id: device.clone(),
            trip,
        }));
    // Enter and exit are the membership changes of the store's fence index.
    outcome
        .write
        .memberships
        .extend(effects.alerts.iter().filter_map(|alert| {
            let entered = match alert.kind {
                AlertKind::Enter => true,
                AlertKind::Exit => false,
                _ => return None,
            };
            Some(MembershipChange {
                fence: alert.geofence_id.clone()?,
                device: device.clone(),
                ts_ms: alert.ts_ms,
                entered,
            })
        }));
    outcome.write.alerts.extend(effects.alerts);
}

/// The latest-position update for `position`, if it is newer than the
/// device's latest and passes the gate (accuracy, teleport).
fn latest_candidate(
    ds: &mut DeviceState,
    position: &EnrichedPosition,
    settings: &VehicleSettings,
) -> Option<EnrichedPosition> {
    let r = &position.report;
    let fix = Fix {
        ts_ms: r.ts_ms,
        lat: r.lat,
        lon: r.lon,
    };
    let last = ds.latest.map(|l| l.fix);
    if last.is_some_and(|l| l.ts_ms >= fix.ts_ms) {
        return None;
    }
    let verdict = gate::check(last, &mut ds.latest_suspect, fix, r.accuracy_m, settings);
    let mut latest = position.clone();
    match verdict {
        gate::Verdict::Reject(_) => return None,
        gate::Verdict::Accept => {
            if let Some(l) = last {
                vehicle::derive_motion(&mut latest, l);
            }
        }
        gate::Verdict::Relocate => {}
    }
    ds.latest = Some(LatestFix {
        fix,
        area_cell: latest.h3.area,
    });
    Some(latest)
}

/// The human-readable reason a fix was flagged.
fn filter_detail(
    reason: RejectReason,
    r: &PositionReport,
    last: Option<Fix>,
    implied_mps: Option<f64>,
    vs: &VehicleSettings,
) -> String {
    match reason {
        RejectReason::PoorAccuracy => format!(
            "accuracy {} m is worse than the bound of {} m; kept in history, not applied",
            r.accuracy_m.unwrap_or_default(),
            vs.max_accuracy_m
        ),
        RejectReason::Teleport => format!(
            "reaching ({:.6}, {:.6}) from the previous fix{} takes {:.0} m/s, above {} m/s; \
             kept in history, not applied",
            r.lat,
            r.lon,
            last.map(|l| format!(" at ts_ms {}", l.ts_ms))
                .unwrap_or_default(),
            implied_mps.unwrap_or_default(),
            vs.max_speed_mps
        ),
        RejectReason::StationaryJitter => format!(
            "moved within the stop radius while stopped (ts_ms {}); no distance added",
            r.ts_ms
        ),
        other => other.code().to_owned(),
    }
}

/// Both H3 cells of a point (see [`H3Cells::of`]).
pub fn cells(lat: f64, lon: f64, detail_res: Resolution) -> Option<H3Cells> {
    H3Cells::of(lat, lon, detail_res)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
