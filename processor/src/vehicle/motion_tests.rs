//! The motion rules one fix at a time: starts, stops, silence.

use fleetd_schemas::{DeviceId, H3Cells, PositionReport};

use super::*;

const M_PER_DEG: f64 = 111_195.0;

fn settings() -> VehicleSettings {
    VehicleSettings::default()
}

/// A fix `north_m` metres north of 52° N 13° E at second `t_s`.
fn position(t_s: i64, north_m: f64) -> EnrichedPosition {
    EnrichedPosition {
        report: PositionReport {
            device_id: DeviceId::parse("v").expect("id"),
            ts_ms: t_s * 1000,
            lat: 52.0 + north_m / M_PER_DEG,
            lon: 13.0,
            accuracy_m: None,
            altitude_m: None,
            speed_mps: None,
            heading_deg: None,
            battery_pct: None,
            seq: None,
            received_ms: t_s * 1000,
        },
        h3: H3Cells::default(),
        speed_derived: false,
        heading_derived: false,
        flag: None,
    }
}

/// Applies fixes `(t_s, north_m)`; returns the flags and what was closed.
fn run(state: &mut VehicleState, fixes: &[(i64, f64)]) -> (Vec<Option<RejectReason>>, Vec<Trip>) {
    let mut effects = Effects::default();
    let flags = fixes
        .iter()
        .map(|&(t, m)| {
            let mut p = position(t, m);
            apply(state, &mut p, Limits::default(), &settings(), &mut effects).flag
        })
        .collect();
    (flags, effects.closed_trips)
}

/// 10 m/s north for `secs` seconds from `t0`, starting at `from_m`.
fn drive(t0: i64, secs: i64, from_m: f64) -> Vec<(i64, f64)> {
    (0..=secs)
        .map(|i| (t0 + i, from_m + 10.0 * i as f64))
        .collect()
}

#[test]
fn a_vehicle_seen_moving_counts_its_way_from_the_first_fix() {
    let mut state = VehicleState::default();
    run(&mut state, &drive(0, 60, 0.0));
    assert_eq!(state.motion, Motion::Moving);
    let trip = state.trip.as_ref().expect("on a trip");
    assert_eq!(trip.start_ts_ms, 0);
    assert!(
        (state.odometer_m - 600.0).abs() < 1.0,
        "{}",
        state.odometer_m
    );
    assert!((trip.distance_m - state.odometer_m).abs() < 1e-9);
    assert_eq!(trip.points, 61);
}

#[test]
fn outliers_before_the_first_move_do_not_start_a_trip() {
    let mut state = VehicleState::default();
    // Parked at 0 m with two outliers 80 m off among the first fixes.
    let mut fixes: Vec<(i64, f64)> = (0..100).map(|t| (t, (t % 3) as f64)).collect();
    fixes[10].1 = 80.0;
    fixes[11].1 = -80.0;
    fixes[40].1 = 80.0;
    let (flags, closed) = run(&mut state, &fixes);
    assert!(state.trip.is_none() && closed.is_empty());
    assert_eq!(state.motion, Motion::Stopped);
    assert!(state.odometer_m < 1e-9, "{}", state.odometer_m);
    // Stopped after `stopped_after`, from then on every fix is jitter.
    assert!(
        flags[61..]
            .iter()
            .all(|f| *f == Some(RejectReason::StationaryJitter))
    );
}

#[test]
fn a_stop_ends_the_trip_where_it_began_and_the_next_starts_where_it_left() {
    let mut state = VehicleState::default();
    let mut fixes = drive(0, 60, 0.0);
    // Standing at 600 m for 4 min, then off again.
    fixes.extend((61..300).map(|t| (t, 600.0 + (t % 2) as f64)));
    fixes.extend(drive(300, 60, 610.0));
    let (flags, closed) = run(&mut state, &fixes);
    assert_eq!(closed.len(), 1);
    let first = &closed[0];
    // The run that became the stop began within the radius of it.
    let end_ts = first.end_ts_ms.expect("closed");
    assert!((55_000..=60_000).contains(&end_ts), "{first:?}");
    let next = state.trip.as_ref().expect("second trip");
    // The last fix within the radius of where it stood: 650 m at 304 s.
    assert_eq!(next.start_ts_ms, 304_000);
    assert!(flags.contains(&Some(RejectReason::StationaryJitter)));
    // Both trips hold their way; the stop's metre of jitter is not in it.
    assert!(
        (state.odometer_m - 1210.0).abs() < 60.0,
        "{}",
        state.odometer_m
    );
}

/// Silence seen by the sweep (server time) and by the next fix's gap
/// (device time) leave the same state and close the same trip.
#[test]
fn silence_by_sweep_or_by_gap_ends_the_trip_alike() {
    let s = settings();
    let fixes = drive(0, 60, 0.0);
    let after = drive(60 + 600, 30, 620.0);

    let mut by_gap = VehicleState::default();
    run(&mut by_gap, &fixes);
    let (_, closed_gap) = run(&mut by_gap, &after);

    let mut by_sweep = VehicleState::default();
    run(&mut by_sweep, &fixes);
    let mut effects = Effects::default();
    assert!(!close_if_silent(
        &mut by_sweep,
        60_000 + s.trip_end_ms - 1,
        &s,
        &mut effects
    ));
    assert!(close_if_silent(
        &mut by_sweep,
        60_000 + s.trip_end_ms,
        &s,
        &mut effects
    ));
    let (_, closed_after) = run(&mut by_sweep, &after);
    assert!(closed_after.is_empty());

    assert_eq!(effects.closed_trips, closed_gap);
    let trip = &closed_gap[0];
    assert_eq!(trip.end_ts_ms, Some(60_000), "ends at the last fix");
    assert!((trip.distance_m - 600.0).abs() < 1.0, "{trip:?}");
    by_sweep.last_seen_ms = by_gap.last_seen_ms;
    assert_eq!(by_sweep, by_gap);
}

/// A fix `north_m`, `east_m` from 52° N 13° E at second `t_s`, with an
/// accuracy radius.
fn position_at(t_s: i64, north_m: f64, east_m: f64, accuracy_m: f32) -> EnrichedPosition {
    let mut p = position(t_s, north_m);
    p.report.lon = 13.0 + east_m / (M_PER_DEG * 52f64.to_radians().cos());
    p.report.accuracy_m = Some(accuracy_m);
    p
}

/// Applies fixes `(t_s, north_m, east_m)` with 5 m accuracy.
fn run_2d(
    state: &mut VehicleState,
    fixes: &[(i64, f64, f64)],
) -> (Vec<Option<RejectReason>>, Vec<Trip>) {
    let mut effects = Effects::default();
    let flags = fixes
        .iter()
        .map(|&(t, n, e)| {
            let mut p = position_at(t, n, e, 5.0);
            apply(state, &mut p, Limits::default(), &settings(), &mut effects).flag
        })
        .collect();
    (flags, effects.closed_trips)
}

/// 10 m/s north for `secs` seconds from `t0` at `from_m` north.
fn drive_2d(t0: i64, secs: i64, from_m: f64) -> Vec<(i64, f64, f64)> {
    drive(t0, secs, from_m)
        .into_iter()
        .map(|(t, n)| (t, n, 0.0))
        .collect()
}

#[test]
fn creeping_in_a_queue_is_movement_not_a_stop() {
    let mut state = VehicleState::default();
    let mut fixes = drive_2d(0, 60, 0.0);
    // 100 s creeping at 0.4 m/s, 40 m: within the stop radius of where the
    // creep began for longer than `stopped_after`, but 15 m (3 × 5 m) on
    // every 38 s. (Creep slower than 3 accuracies per `stopped_after` is
    // a stop, and counts when the vehicle leaves it.)
    fixes.extend((61..=160).map(|t| (t, 600.0 + 0.4 * (t - 60) as f64, 0.0)));
    fixes.extend(drive_2d(161, 30, 650.0));
    let (flags, closed) = run_2d(&mut state, &fixes);
    assert!(closed.is_empty(), "{closed:?}");
    assert!(flags.iter().all(Option::is_none), "{flags:?}");
    assert_eq!(state.motion, Motion::Moving);
    // 600 m, the 40 m of creep and the 10 m on to the next fix, and 300 m.
    assert!(
        (state.odometer_m - 950.0).abs() < 1.0,
        "{}",
        state.odometer_m
    );
    let trip = state.trip.as_ref().expect("one trip");
    assert_eq!(trip.start_ts_ms, 0);
    assert!((trip.distance_m - state.odometer_m).abs() < 1e-9);
}

#[test]
fn jitter_within_three_accuracies_is_a_stop_and_adds_nothing() {
    let mut state = VehicleState::default();
    let mut fixes = drive_2d(0, 60, 0.0);
    // Standing at 600 m for 4 min, fixes scattered 6 m either way (less
    // than 3 × 5 m apart), then off again.
    let jitter = [(6.0, 0.0), (0.0, -6.0), (-6.0, 0.0), (0.0, 6.0), (4.0, 4.0)];
    fixes.extend((61..300).map(|t| {
        let (n, e) = jitter[(t % 5) as usize];
        (t, 600.0 + n, e)
    }));
    fixes.extend(drive_2d(300, 60, 610.0));
    let (flags, closed) = run_2d(&mut state, &fixes);
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(flags.contains(&Some(RejectReason::StationaryJitter)));
    let first = &closed[0];
    // The way to the stop, not its jitter: 600 m.
    assert!((first.distance_m - 600.0).abs() < 1.0, "{first:?}");
    // The way out counts from the stop's first fix (606 m): 4 m to the
    // first fix that confirms the move, then 600 m.
    assert!(
        (state.odometer_m - 1210.0).abs() < 1.0,
        "{}",
        state.odometer_m
    );
}

#[test]
fn a_loop_inside_the_stop_radius_leaves_the_stop() {
    let mut state = VehicleState::default();
    let mut fixes = drive_2d(0, 60, 0.0);
    // Parked at 600 m for 2 min: stopped.
    fixes.extend((61..180).map(|t| (t, 600.0 + (t % 2) as f64, 0.0)));
    // Round a 20 m × 20 m block of the car park at 2 m/s (80 m, never more
    // than 29 m from where it stood) and back to the same spot.
    let mut t = 180;
    for (dn, de) in [(2.0, 0.0), (0.0, 2.0), (-2.0, 0.0), (0.0, -2.0)] {
        for _ in 0..10 {
            let &(_, n, e) = fixes.last().expect("fixes");
            t += 1;
            fixes.push((t, n + dn, e + de));
        }
    }
    // Parked again, for good.
    fixes.extend((t + 1..t + 400).map(|t| (t, 600.0 + (t % 2) as f64, 0.0)));
    let (_, closed) = run_2d(&mut state, &fixes);
    assert_eq!(state.motion, Motion::Stopped);
    // 600 m to the car park and the 80 m loop (less the last metres below
    // the confirming distance, 15 m, back at the spot).
    assert!(
        (665.0..=681.0).contains(&state.odometer_m),
        "{}",
        state.odometer_m
    );
    // Two minutes in the car park do not end the trip (`trip_end` is
    // 3 min): one trip, to the final parking, holding the loop.
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(
        (closed[0].distance_m - state.odometer_m).abs() < 1e-6,
        "{closed:?}"
    );
}

#[test]
fn a_vehicle_first_seen_pulling_out_of_a_car_park_is_on_its_way() {
    let mut state = VehicleState::default();
    // Seen first while crawling out of a car park at 0.8 m/s for 70 s (56 m,
    // more than `stopped_after` within 50 m of its first fix), then driving.
    let mut fixes: Vec<(i64, f64, f64)> = (0..70).map(|t| (t, 0.8 * t as f64, 0.0)).collect();
    fixes.extend(drive_2d(70, 30, 56.0));
    let (flags, _) = run_2d(&mut state, &fixes);
    assert!(flags.iter().all(Option::is_none), "{flags:?}");
    let trip = state.trip.as_ref().expect("on a trip");
    assert_eq!(trip.start_ts_ms, 0);
    assert!(
        (state.odometer_m - 356.0).abs() < 1.0,
        "{}",
        state.odometer_m
    );
}
