//! The per-device vehicle state machine: filters, motion with hysteresis,
//! odometer, trips and overspeed, applied one fix at a time in device-time
//! order.
//!
//! Pure: no I/O, no clock. [`apply`] takes one fix and the state, and
//! reports what changed through [`Effects`]. The rules, in order:
//!
//! 1. **Gate** ([`gate`]): poor accuracy and teleports are flagged and not
//!    applied; a run of agreeing teleports relocates the vehicle.
//! 2. **Motion**: the state keeps an *anchor*, the first fix of a run of
//!    fixes that all stay within the stop radius of it. A fix of the run
//!    that, with the fix before it, lies 3 × its accuracy (at least 3 m)
//!    from the anchor confirms a move ([`moved`]): the run starts over there
//!    and keeps the way it moved, the rest of its path being noise. A run
//!    with no confirmed move lasting `stopped_after` makes the vehicle
//!    `stopped` at the anchor (its path was noise and leaves the odometer);
//!    lasting `trip_end` ends the trip at the anchor. So a car creeping in
//!    a queue or driving round a car park keeps its way, and a shorter run
//!    is movement and counts. A stopped vehicle, or one not yet seen
//!    moving, moves after `depart_fixes` consecutive fixes outside the
//!    radius (of the anchor, and once stopped also of the mean of the fixes
//!    that made it a stop), or after a confirmed move (from the anchor, or
//!    once stopped from that mean); the way out counts from the anchor.
//!    Other fixes inside a stop are `stationary_jitter` and add no
//!    distance. A fix without an accuracy confirms nothing: without one,
//!    noise and creep cannot be told apart.
//! 3. **Trips** run from the last fix at one stop to the first fix of the
//!    next; a trip shorter than `min_trip_m` is forgotten.
//! 4. **Silence**: a device that sends nothing for `trip_end` is taken to
//!    have stopped at its last fix ([`settle`]). The same rule runs on device
//!    time (a gap of `trip_end` between two fixes) and on server time (the
//!    worker's sweep, [`close_if_silent`]), so whichever sees the silence
//!    first, the trip ends at the same place with the same distance.
//! 5. **Overspeed** ([`overspeed`]) against the registry's limit.

pub(crate) mod gate;
pub(crate) mod overspeed;

use fleetd_schemas::{
    Alert, Anchor, EnrichedPosition, Fix, Motion, RejectReason, Trip, VehicleState,
};

use crate::kinematics::{bearing_deg, distance_m, geodesic_m};
use crate::settings::VehicleSettings;
use gate::Verdict;

/// Movement below this is not used to derive a heading: the bearing of a
/// few metres of GPS noise is meaningless.
const MIN_HEADING_DISTANCE_M: f64 = 3.0;

/// A run restarts where a fix confirms movement: this many times the fix's
/// accuracy from the run's first fix. Two fixes of a standing device are
/// that far apart less than once in a hundred (Gaussian errors whose 68%
/// radius is the stated accuracy), and the previous fix must be that far
/// too, so noise almost never confirms a move.
const MOVE_ACCURACY_FACTOR: f64 = 3.0;

/// The smallest move that confirms movement, however accurate the fix
/// claims to be: at a standstill even an RTK receiver wanders (the
/// Vincennes RTK car of `tests/data/traces/` scatters with a 68% radius of
/// 0.6–2 m over its stands).
const MIN_MOVE_M: f64 = 3.0;

/// The registry facts that apply to one device during a batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits<'a> {
    /// Speed limit (device's, else its class's), km/h.
    pub(crate) speed_limit_kmh: Option<f64>,
    /// Registry name, carried into alerts.
    pub(crate) device_name: Option<&'a str>,
}

/// What applying fixes produced besides the state itself.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Alerts raised.
    pub(crate) alerts: Vec<Alert>,
    /// Trips that ended (and are long enough to keep).
    pub(crate) closed_trips: Vec<Trip>,
}

/// The result of applying one fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Applied {
    /// The filter flag for the history row, if any.
    pub(crate) flag: Option<RejectReason>,
    /// For a teleport: the speed it implied, m/s.
    pub(crate) implied_mps: Option<f64>,
}

/// Applies one fix (newer than `state.ts_ms`) to `state`: filters it,
/// derives missing speed/heading, and advances motion, odometer, trip and
/// overspeed. `position` is the history row; its flag and derived fields
/// are filled in.
pub(crate) fn apply(
    state: &mut VehicleState,
    position: &mut EnrichedPosition,
    limits: Limits<'_>,
    settings: &VehicleSettings,
    effects: &mut Effects,
) -> Applied {
    let r = &position.report;
    let fix = Fix {
        ts_ms: r.ts_ms,
        lat: r.lat,
        lon: r.lon,
    };
    state.last_seen_ms = state.last_seen_ms.max(r.received_ms);
    let verdict = gate::check(
        state.last_fix,
        &mut state.suspect,
        fix,
        r.accuracy_m,
        settings,
    );
    let relocated = match verdict {
        Verdict::Reject(reason) => {
            position.flag = Some(reason);
            let implied_mps = (reason == RejectReason::Teleport)
                .then(|| state.last_fix.map(|l| gate::implied_speed(l, fix)))
                .flatten();
            return Applied {
                flag: Some(reason),
                implied_mps,
            };
        }
        Verdict::Relocate => true,
        Verdict::Accept => false,
    };
    if let Some(last) = state.last_fix
        && fix.ts_ms - last.ts_ms >= settings.trip_end_ms
    {
        settle(state, settings, effects);
    }
    let seg_m = match state.last_fix {
        Some(last) if !relocated => {
            let seg_m = geodesic_m(last.lat, last.lon, fix.lat, fix.lon);
            derive_motion_over(position, last, seg_m);
            seg_m
        }
        _ => 0.0,
    };
    let accuracy = position.report.accuracy_m.map(f64::from);
    let radius = settings
        .stop_radius_m
        .max(settings.accuracy_factor * accuracy.unwrap_or(0.0));
    let min_move = accuracy.map(|a| (MOVE_ACCURACY_FACTOR * a).max(MIN_MOVE_M));
    let flag = if relocated {
        relocate(state, fix);
        None
    } else {
        let step = Step {
            fix,
            seg_m,
            radius,
            min_move,
        };
        step_motion(state, step, settings, effects)
    };
    position.flag = flag;
    if state.motion == Motion::Moving && flag.is_none() {
        let speed = position.report.speed_mps.map_or(0.0, f64::from);
        if let Some(trip) = &mut state.trip {
            trip.max_speed_mps = trip.max_speed_mps.max(speed);
        }
        let device = &position.report.device_id;
        if let Some(alert) = overspeed::update(
            &mut state.overspeed,
            device,
            fix,
            speed,
            limits.speed_limit_kmh,
            limits.device_name,
            settings,
        ) {
            effects.alerts.push(alert);
        }
    } else if state.motion == Motion::Stopped {
        state.overspeed = None;
    }
    state.last_fix = Some(fix);
    state.ts_ms = fix.ts_ms;
    Applied {
        flag,
        implied_mps: None,
    }
}

/// A confirmed jump: the vehicle is here now; no distance is added and the
/// stop measurement starts over.
fn relocate(state: &mut VehicleState, fix: Fix) {
    state.anchor = Some(new_anchor(fix));
    state.departing = 0;
    state.departing_m = 0.0;
    if let Some(trip) = &mut state.trip {
        trip.last_ts_ms = fix.ts_ms;
        trip.last = (fix.lat, fix.lon);
        trip.points += 1;
    }
}

fn new_anchor(fix: Fix) -> Anchor {
    Anchor {
        fix,
        last_ts_ms: fix.ts_ms,
        run_m: 0.0,
        points: 1,
        mean: Some((fix.lat, fix.lon)),
        last: Some((fix.lat, fix.lon)),
    }
}

/// One accepted fix as the motion rules see it.
#[derive(Debug, Clone, Copy)]
struct Step {
    fix: Fix,
    /// Metres from the previous accepted fix.
    seg_m: f64,
    /// Within this of where the vehicle stands, it counts as standing there.
    radius: f64,
    /// A displacement that confirms movement rather than noise (see
    /// [`moved`]); `None` for a fix that states no accuracy, which confirms
    /// nothing.
    min_move: Option<f64>,
}

/// Adds `fix`, `seg_m` metres from the previous fix, to the anchor's run.
/// The mean follows the run until the vehicle is stopped, then stays: the
/// stop's centre is where the fixes that made it a stop were, and later
/// fixes at the stop do not move it.
fn extend(anchor: &mut Anchor, fix: Fix, seg_m: f64, stopped: bool) {
    anchor.last_ts_ms = fix.ts_ms;
    anchor.last = Some((fix.lat, fix.lon));
    anchor.run_m += seg_m;
    anchor.points += 1;
    if stopped {
        return;
    }
    let (lat, lon) = anchor.mean.unwrap_or((anchor.fix.lat, anchor.fix.lon));
    let n = f64::from(anchor.points);
    anchor.mean = Some((
        lat + (fix.lat - lat) / n,
        wrap_lon(lon + wrap_lon(fix.lon - lon) / n),
    ));
}

/// Whether `step.fix` confirms that the vehicle moved during the run: it
/// is `min_move` or more from `from`, and so was the previous fix `last`
/// (a lone far fix followed by one back near is an outlier). `from` is the
/// run's first fix, or for a stop its centre. Returns the way the vehicle
/// moved: from the run's first fix `base` to the previous fix, then to this
/// one. The rest of the run's path was noise around those points (a run's
/// path can be far longer than its way when its fixes scatter). A car
/// creeping in a queue or turning in a yard confirms a move every few
/// accuracies, so it never becomes a stop and keeps its way; a standing
/// car's fixes stay within a few accuracies of each other and confirm
/// nothing.
fn moved(from: (f64, f64), base: Fix, last: Option<Fix>, step: Step) -> Option<f64> {
    let min_move = step.min_move?;
    let last = last?;
    let (lat, lon) = from;
    if distance_m(lat, lon, step.fix.lat, step.fix.lon) < min_move
        || distance_m(lat, lon, last.lat, last.lon) < min_move
    {
        return None;
    }
    Some(geodesic_m(base.lat, base.lon, last.lat, last.lon) + step.seg_m)
}

/// [`moved`] within the run of `anchor`.
fn moved_in_run(anchor: &Anchor, last: Option<Fix>, step: Step) -> Option<f64> {
    moved((anchor.fix.lat, anchor.fix.lon), anchor.fix, last, step)
}

/// A longitude brought back into [-180, 180) (means across the antimeridian).
fn wrap_lon(lon: f64) -> f64 {
    (lon + 180.0).rem_euclid(360.0) - 180.0
}

/// Whether `fix` lies within `radius` of where the vehicle stands: of the
/// anchor fix (the start of the run or stop), or, once stopped, of the mean
/// of the fixes that made it a stop. The mean is what keeps a parked device
/// with 20 m of jitter parked (a single fix is a poor centre when each can
/// be 20 m off); the anchor keeps a stop the same as one measured from its
/// first fix. Leaving takes leaving both.
fn inside(state: &VehicleState, fix: Fix, radius: f64) -> bool {
    let Some(a) = state.anchor.as_ref() else {
        return false;
    };
    let near = |(lat, lon): (f64, f64)| distance_m(lat, lon, fix.lat, fix.lon) <= radius;
    near((a.fix.lat, a.fix.lon)) || (state.motion == Motion::Stopped && a.mean.is_some_and(near))
}

/// Advances motion, odometer and trip by one accepted fix `step.seg_m`
/// metres from the previous one; returns the jitter flag when the fix is
/// noise.
fn step_motion(
    state: &mut VehicleState,
    step: Step,
    settings: &VehicleSettings,
    effects: &mut Effects,
) -> Option<RejectReason> {
    let Step {
        fix, seg_m, radius, ..
    } = step;
    let is_inside = inside(state, fix, radius);
    match state.motion {
        Motion::Stopped | Motion::Unknown if state.anchor.is_some() && !is_inside => {
            // Leaving, or an outlier: moving only after `depart_fixes`
            // consecutive fixes outside. From a stop, the way out is
            // measured from the stop's first fix, where the odometer
            // stopped counting, so the metres the vehicle crept or drove
            // inside the radius before leaving it count too.
            let from_stop = match state.anchor.as_ref() {
                Some(a) if state.motion == Motion::Stopped && state.departing == 0 => {
                    Some(geodesic_m(a.fix.lat, a.fix.lon, fix.lat, fix.lon))
                }
                _ => None,
            };
            state.departing += 1;
            state.departing_m += from_stop.unwrap_or(seg_m);
            if state.departing >= settings.depart_fixes.max(1) {
                depart(state, fix);
            }
            None
        }
        Motion::Stopped | Motion::Unknown => {
            // Back inside after fixes outside: they were noise, and so is
            // the way back.
            let excursion = std::mem::take(&mut state.departing) > 0;
            state.departing_m = 0.0;
            let Some(a) = state.anchor.as_mut() else {
                state.anchor = Some(new_anchor(fix));
                return None;
            };
            if state.motion == Motion::Stopped {
                // Driving about inside the radius (round a car park, out of
                // a yard) is leaving: measured against the stop's centre,
                // which the fixes of a parked vehicle scatter around.
                let centre = a.mean.unwrap_or((a.fix.lat, a.fix.lon));
                if !excursion && let Some(way) = moved(centre, a.fix, state.last_fix, step) {
                    state.departing_m = way;
                    depart(state, fix);
                    return None;
                }
                extend(a, fix, 0.0, true);
                end_trip_if_due(state, settings, effects);
                return Some(RejectReason::StationaryJitter);
            }
            // Not seen moving yet: this run is the start of a move (its
            // way counts once the vehicle leaves) or a stop.
            extend(a, fix, if excursion { 0.0 } else { seg_m }, false);
            if !excursion && let Some(way) = moved_in_run(a, state.last_fix, step) {
                // Seen moving inside the radius: a vehicle first seen
                // pulling out of a car park has been on its way since its
                // first fix.
                a.run_m = way;
                depart(state, fix);
                return None;
            }
            if a.last_ts_ms - a.fix.ts_ms >= settings.stopped_after_ms {
                a.run_m = 0.0;
                state.motion = Motion::Stopped;
                state.motion_since_ms = a.fix.ts_ms;
            }
            None
        }
        Motion::Moving => {
            state.odometer_m += seg_m;
            let trip = state
                .trip
                .get_or_insert_with(|| Box::new(Trip::start_at(state.last_fix.unwrap_or(fix))));
            trip.distance_m += seg_m;
            trip.points += 1;
            trip.last_ts_ms = fix.ts_ms;
            trip.last = (fix.lat, fix.lon);
            match &mut state.anchor {
                Some(a) if is_inside => {
                    extend(a, fix, seg_m, false);
                    if let Some(way) = moved_in_run(a, state.last_fix, step) {
                        // Not standing: the run starts over here, and of
                        // its path only the way it moved counts.
                        let noise = (a.run_m - way).max(0.0);
                        state.odometer_m = (state.odometer_m - noise).max(0.0);
                        if let Some(trip) = &mut state.trip {
                            trip.distance_m = (trip.distance_m - noise).max(0.0);
                        }
                        *a = new_anchor(fix);
                    }
                }
                _ => {
                    // A new run: from the previous fix when this one is still
                    // near it (a long gap between two close fixes is a stop),
                    // otherwise from here.
                    let near_last = state
                        .last_fix
                        .filter(|l| distance_m(l.lat, l.lon, fix.lat, fix.lon) <= radius);
                    state.anchor = Some(match near_last {
                        Some(l) => {
                            let mut a = new_anchor(l);
                            extend(&mut a, fix, seg_m, false);
                            a
                        }
                        None => new_anchor(fix),
                    });
                }
            }
            if let Some(a) = state.anchor
                && a.last_ts_ms - a.fix.ts_ms >= settings.stopped_after_ms
            {
                // The run was a stop: no fix of it confirmed a move, so its
                // path was noise around where the vehicle stood (or creep
                // below the confirming distance, which the way out counts,
                // measured from the run's first fix). It leaves the
                // odometer and the trip.
                state.motion = Motion::Stopped;
                state.motion_since_ms = a.fix.ts_ms;
                state.odometer_m = (state.odometer_m - a.run_m).max(0.0);
                if let Some(trip) = &mut state.trip {
                    trip.distance_m = (trip.distance_m - a.run_m).max(0.0);
                }
                if let Some(anchor) = &mut state.anchor {
                    anchor.run_m = 0.0;
                }
                state.overspeed = None;
                end_trip_if_due(state, settings, effects);
            }
            None
        }
    }
}

/// The vehicle has left: `depart_fixes` fixes in a row outside the radius,
/// or a fix that confirms a move, the newest `fix`.
/// From a stop, the trip starts at the last fix within the radius and
/// counts the way from the stop's first fix. A vehicle first seen already
/// moving starts its trip where it was first seen, and the way it came
/// inside the radius counts too (it was under `stopped_after`, so not a
/// stop, as for a run in motion).
fn depart(state: &mut VehicleState, fix: Fix) {
    let anchor = state.anchor.unwrap_or_else(|| new_anchor(fix));
    let departed_m = std::mem::take(&mut state.departing_m);
    let departing = std::mem::take(&mut state.departing);
    let (start, carried_m, carried_points) = if state.motion == Motion::Stopped {
        let (lat, lon) = anchor.last.unwrap_or((anchor.fix.lat, anchor.fix.lon));
        let start = Fix {
            ts_ms: anchor.last_ts_ms,
            lat,
            lon,
        };
        (start, departed_m, departing)
    } else {
        let points = anchor.points.saturating_sub(1) + departing;
        (anchor.fix, anchor.run_m + departed_m, points)
    };
    state.motion = Motion::Moving;
    state.motion_since_ms = start.ts_ms;
    state.odometer_m += carried_m;
    let trip = state
        .trip
        .get_or_insert_with(|| Box::new(Trip::start_at(start)));
    trip.distance_m += carried_m;
    trip.points += carried_points;
    trip.last_ts_ms = fix.ts_ms;
    trip.last = (fix.lat, fix.lon);
    state.anchor = Some(new_anchor(fix));
}

/// Ends the open trip at the anchor once the stop has lasted `trip_end`.
fn end_trip_if_due(state: &mut VehicleState, settings: &VehicleSettings, effects: &mut Effects) {
    let Some(anchor) = state.anchor else { return };
    if anchor.last_ts_ms - anchor.fix.ts_ms < settings.trip_end_ms {
        return;
    }
    close_trip(state, anchor.fix, settings, effects);
}

/// Closes the open trip at `end`; keeps it only if it is long enough.
pub(crate) fn close_trip(
    state: &mut VehicleState,
    end: Fix,
    settings: &VehicleSettings,
    effects: &mut Effects,
) {
    let Some(mut trip) = state.trip.take() else {
        return;
    };
    let end_ts = end.ts_ms.max(trip.start_ts_ms);
    trip.end_ts_ms = Some(end_ts);
    trip.end = Some((end.lat, end.lon));
    if end_ts >= trip.last_ts_ms {
        trip.last_ts_ms = end_ts;
        trip.last = (end.lat, end.lon);
    }
    if trip.distance_m >= settings.min_trip_m {
        effects.closed_trips.push(*trip);
    }
}

/// Closes the trip of a device that went silent: nothing arrived from it
/// for `trip_end` (server time) while it was on a trip. See [`settle`].
pub(crate) fn close_if_silent(
    state: &mut VehicleState,
    now_ms: i64,
    settings: &VehicleSettings,
    effects: &mut Effects,
) -> bool {
    if now_ms - state.last_seen_ms < settings.trip_end_ms {
        return false;
    }
    settle(state, settings, effects)
}

/// Ends the open trip as if the vehicle had stood at its last fix since:
/// what the state concludes when a device sends nothing for `trip_end`.
/// A moving vehicle stopped at its last fix (the way there counts); a
/// stopped one ends its trip where the stop began. Returns whether a trip
/// was closed.
fn settle(state: &mut VehicleState, settings: &VehicleSettings, effects: &mut Effects) -> bool {
    if state.trip.is_none() {
        return false;
    }
    let end = match (state.motion, state.anchor, state.last_fix) {
        (Motion::Stopped, Some(a), _) => a.fix,
        (_, _, Some(last)) => last,
        (_, Some(a), None) => a.fix,
        (_, None, None) => return false,
    };
    if state.motion != Motion::Stopped {
        state.motion = Motion::Stopped;
        state.motion_since_ms = end.ts_ms;
        state.anchor = Some(new_anchor(end));
    }
    state.departing = 0;
    state.departing_m = 0.0;
    state.overspeed = None;
    close_trip(state, end, settings, effects);
    true
}

/// Fills in speed and heading the device did not send, from the previous
/// accepted fix.
pub(crate) fn derive_motion(p: &mut EnrichedPosition, prev: Fix) {
    let r = &p.report;
    if r.ts_ms <= prev.ts_ms || (r.speed_mps.is_some() && r.heading_deg.is_some()) {
        return;
    }
    let d = geodesic_m(prev.lat, prev.lon, r.lat, r.lon);
    derive_motion_over(p, prev, d);
}

/// [`derive_motion`] when the geodesic distance `d` from `prev` is known.
/// Speed is geodesic, like the odometer, so a trip's average speed agrees
/// with its fixes' speeds; the heading is the spherical initial bearing,
/// within 0.2° of the ellipsoidal one and several times cheaper.
fn derive_motion_over(p: &mut EnrichedPosition, prev: Fix, d: f64) {
    let r = &mut p.report;
    let dt_s = (r.ts_ms - prev.ts_ms) as f64 / 1000.0;
    if dt_s <= 0.0 || (r.speed_mps.is_some() && r.heading_deg.is_some()) {
        return;
    }
    if r.speed_mps.is_none() {
        r.speed_mps = Some((d / dt_s) as f32);
        p.speed_derived = true;
    }
    if r.heading_deg.is_none() && d >= MIN_HEADING_DISTANCE_M {
        r.heading_deg = Some(bearing_deg(prev.lat, prev.lon, r.lat, r.lon) as f32);
        p.heading_derived = true;
    }
}

#[cfg(test)]
#[path = "motion_tests.rs"]
mod tests;
