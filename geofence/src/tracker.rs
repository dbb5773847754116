//! Per-device fence membership: `enter`, `exit` and `dwell` alerts from a
//! device's fixes in event-time order, with accuracy-aware hysteresis.
//!
//! Pure: no clock and no I/O. Time is the fixes' device time, so replaying
//! the same fixes gives the same alerts (with the same ids).

use fleetd_schemas::{Alert, AlertDetail, AlertKind, DeviceFences, DeviceId, Membership};
use h3o::CellIndex;

use crate::index::{Containment, GeofenceIndex};
use crate::model::Geofence;

/// Membership rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FenceSettings {
    /// A member leaves (an `exit` fires) only once its fixes have been
    /// certainly outside for this long without a break, milliseconds. A fix
    /// inside or straddling the boundary restarts the count, so a vehicle
    /// idling on an edge stays a member instead of flapping.
    pub min_outside_ms: i64,
    /// Position error assumed for a fix without `accuracy_m`, metres.
    pub default_accuracy_m: f64,
}

impl Default for FenceSettings {
    fn default() -> Self {
        Self {
            min_outside_ms: 30_000,
            default_accuracy_m: 10.0,
        }
    }
}

/// One position of one device, as the tracker needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FenceFix<'a> {
    /// The device.
    pub device: &'a DeviceId,
    /// Device time, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Reported horizontal accuracy (radius), metres.
    pub accuracy_m: Option<f32>,
    /// The fix's H3 cell, when already computed (the processor has it at
    /// its detail resolution): spares the index computing it.
    pub cell: Option<CellIndex>,
}

/// Drops, without alerts, memberships of fences no longer in `index`
/// (deleted fences): no exit will ever fire for them.
pub fn purge(state: &mut DeviceFences, index: &GeofenceIndex) {
    state.members.retain(|m| index.get(&m.fence).is_some());
}

/// Evaluates one fix against the fences and appends the alerts it causes.
///
/// Feed each device's fixes in device-time order; a fix older than the
/// newest one evaluated is ignored. A fix enters a fence when it is inside
/// by at least its accuracy (a new fence is entered on the first such fix,
/// even if the device was already there when the fence was created); a
/// member exits after [`FenceSettings::min_outside_ms`] of fixes outside by
/// at least their accuracy; a fix whose accuracy circle straddles the
/// boundary changes nothing. `dwell` fires once per visit, on the first fix
/// at least the fence's `dwell_s` after the enter. Memberships of fences
/// missing from `index` are dropped silently.
pub fn evaluate(
    state: &mut DeviceFences,
    fix: &FenceFix<'_>,
    index: &GeofenceIndex,
    settings: &FenceSettings,
    out: &mut Vec<Alert>,
) {
    if !(fix.lat.is_finite() && fix.lon.is_finite()) {
        return;
    }
    if state.last_ts_ms.is_some_and(|t| fix.ts_ms < t) {
        return;
    }
    state.last_ts_ms = Some(fix.ts_ms);
    let margin = fix
        .accuracy_m
        .map(f64::from)
        .filter(|a| a.is_finite() && *a >= 0.0)
        .unwrap_or(settings.default_accuracy_m);
    let alert = |kind, fence: &Geofence, dwell_s| {
        Alert::new(
            kind,
            fix.device.clone(),
            Some(fence.id.clone()),
            fix.ts_ms,
            (fix.lat, fix.lon),
            AlertDetail {
                geofence_name: fence.name.clone(),
                dwell_s,
                accuracy_m: fix.accuracy_m.filter(|a| a.is_finite()),
                ..AlertDetail::default()
            },
        )
    };
    let mut i = 0;
    while i < state.members.len() {
        let m = &mut state.members[i];
        let Some((fence, place)) = index.fence_containment(&m.fence, fix.lat, fix.lon, margin)
        else {
            state.members.remove(i);
            continue;
        };
        match place {
            Containment::Outside => {
                let since = *m.outside_since_ms.get_or_insert(fix.ts_ms);
                if fix.ts_ms - since >= settings.min_outside_ms {
                    let inside_s = (since - m.entered_ms) as f64 / 1000.0;
                    out.push(alert(AlertKind::Exit, fence, Some(inside_s)));
                    state.members.remove(i);
                    continue;
                }
            }
            Containment::Inside | Containment::Straddling => {
                m.outside_since_ms = None;
                let inside_s = (fix.ts_ms - m.entered_ms) as f64 / 1000.0;
                if !m.dwell_fired && fence.dwell_s.is_some_and(|t| inside_s >= t) {
                    m.dwell_fired = true;
                    out.push(alert(AlertKind::Dwell, fence, Some(inside_s)));
                }
            }
        }
        i += 1;
    }
    let mut hits = Vec::new();
    match fix.cell {
        Some(cell) => index.containing_in_cell(fix.lat, fix.lon, cell, &mut hits),
        None => index.containing(fix.lat, fix.lon, &mut hits),
    }
    if hits.len() > 1 {
        hits.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    }
    for fence in hits {
        let Err(at) = state.find(&fence.id) else {
            continue;
        };
        let place = index.fence_containment(&fence.id, fix.lat, fix.lon, margin);
        if matches!(place, Some((_, Containment::Inside))) {
            state.members.insert(
                at,
                Membership {
                    fence: fence.id.clone(),
                    entered_ms: fix.ts_ms,
                    outside_since_ms: None,
                    dwell_fired: false,
                },
            );
            out.push(alert(AlertKind::Enter, fence, None));
        }
    }
}
