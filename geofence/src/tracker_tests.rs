//! Membership scenarios: crossings, edge idling with GPS noise, dwell,
//! fences created around or deleted under a vehicle.

use fleetd_schemas::{Alert, AlertKind, DeviceFences, DeviceId, GeofenceId};
use geo::{Coord, LineString, Polygon};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

const M_PER_DEG: f64 = 111_195.0;
const LAT0: f64 = 52.0;
const LON0: f64 = 13.0;

fn gid(s: &str) -> GeofenceId {
    GeofenceId::parse(s).expect("valid id")
}

/// A 0.01° × 0.01° square (≈ 685 m × 1112 m) with its south-west corner
/// at (LAT0, LON0).
fn square(id: &str, dwell_s: Option<f64>) -> Geofence {
    let (x, y, s) = (LON0, LAT0, 0.01);
    Geofence {
        id: gid(id),
        name: Some(format!("{id} name")),
        properties: serde_json::Map::new(),
        dwell_s,
        shape: Shape::Polygon(Polygon::new(
            LineString::from(vec![(x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y)]),
            vec![],
        )),
    }
}

/// A fix `east_m` metres east of the square's west edge, halfway up.
fn fix_at(ts_s: i64, east_m: f64, accuracy_m: Option<f32>) -> (i64, f64, f64, Option<f32>) {
    let lat = LAT0 + 0.005;
    let lon = LON0 + east_m / (M_PER_DEG * lat.to_radians().cos());
    (ts_s * 1000, lat, lon, accuracy_m)
}

/// One alert as compared: kind, fence, time in seconds.
type Event = (AlertKind, String, i64);

/// Feeds `fixes` (ts ms, lat, lon, accuracy) of one device through
/// [`evaluate`] and returns the alerts as events, checking what every alert
/// carries on the way.
fn check(
    index: &GeofenceIndex,
    state: &mut DeviceFences,
    fixes: &[(i64, f64, f64, Option<f32>)],
    settings: &FenceSettings,
) -> Vec<Event> {
    let device = DeviceId::parse("truck-1").expect("valid id");
    let mut alerts: Vec<Alert> = Vec::new();
    for &(ts_ms, lat, lon, accuracy_m) in fixes {
        let before = alerts.len();
        evaluate(
            state,
            &FenceFix {
                device: &device,
                ts_ms,
                lat,
                lon,
                accuracy_m,
                // As the processor passes it: the fix's res-9 cell.
                cell: h3o::LatLng::new(lat, lon)
                    .ok()
                    .map(|ll| ll.to_cell(h3o::Resolution::Nine)),
            },
            index,
            settings,
            &mut alerts,
        );
        for a in &alerts[before..] {
            assert_eq!((a.ts_ms, a.lat, a.lon), (ts_ms, lat, lon));
            assert_eq!(a.device_id, device);
            let fence = a.geofence_id.as_ref().expect("fence alert");
            assert_eq!(
                a.detail.geofence_name.as_deref(),
                Some(format!("{fence} name").as_str())
            );
        }
    }
    alerts
        .iter()
        .map(|a| {
            let fence = a
                .geofence_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            (a.kind, fence, a.ts_ms / 1000)
        })
        .collect()
}

fn index_of(fences: Vec<Geofence>) -> GeofenceIndex {
    let mut index = GeofenceIndex::new(IndexSettings::default());
    for f in fences {
        index.insert(f);
    }
    index
}

fn ev(kind: AlertKind, fence: &str, ts_s: i64) -> Event {
    (kind, fence.to_string(), ts_s)
}

#[test]
fn crossing_gives_one_enter_and_one_exit() {
    let index = index_of(vec![square("sq", None)]);
    // West to east at 10 m/s, 1 Hz, through the 685 m wide square and 400 m
    // beyond: from -200 m to +1085 m.
    let fixes: Vec<_> = (0..=128)
        .map(|t| fix_at(t, -200.0 + 10.0 * t as f64, Some(5.0)))
        .collect();
    let mut state = DeviceFences::default();
    let events = check(&index, &mut state, &fixes, &FenceSettings::default());
    // In by 5 m at t = 21 (10 m in); certainly out from t = 89 (5 m past
    // the east edge at ≈ 685 m), 30 s later the exit.
    assert_eq!(
        events,
        [
            ev(AlertKind::Enter, "sq", 21),
            ev(AlertKind::Exit, "sq", 119)
        ]
    );
    assert!(state.memberships().is_empty());
}

#[test]
fn repeated_crossings_give_one_pair_each() {
    let index = index_of(vec![square("sq", None)]);
    // Back and forth three times between -500 m and +1200 m at 20 m/s.
    let mut fixes = Vec::new();
    let mut t = 0;
    for lap in 0..3 {
        for k in 0..=85 {
            let x = -500.0 + 20.0 * k as f64;
            let x = if lap % 2 == 0 { x } else { 700.0 - x };
            fixes.push(fix_at(t, x, None));
            t += 1;
        }
        for _ in 0..40 {
            let x = if lap % 2 == 0 { 1200.0 } else { -500.0 };
            fixes.push(fix_at(t, x, None));
            t += 1;
        }
    }
    let events = check(
        &index,
        &mut DeviceFences::default(),
        &fixes,
        &FenceSettings::default(),
    );
    let kinds: Vec<AlertKind> = events.iter().map(|e| e.0).collect();
    use AlertKind::{Enter, Exit};
    assert_eq!(kinds, [Enter, Exit, Enter, Exit, Enter, Exit], "{events:?}");
}

/// Gaussian noise, `sigma_m` per axis, in metres (Box–Muller).
fn noise(rng: &mut SmallRng, sigma_m: f64) -> (f64, f64) {
    let (u1, u2): (f64, f64) = (
        rng.random_range(f64::EPSILON..1.0),
        rng.random_range(0.0..1.0),
    );
    let r = (-2.0 * u1.ln()).sqrt() * sigma_m;
    (
        r * (std::f64::consts::TAU * u2).cos(),
        r * (std::f64::consts::TAU * u2).sin(),
    )
}

#[test]
fn idling_on_the_edge_with_noise_gives_at_most_one_pair() {
    let index = index_of(vec![square("sq", None)]);
    // (accuracy reported, per-axis noise): 15 m GPS noise, with and without
    // an accuracy figure; several seeds.
    for (accuracy, sigma) in [(Some(15.0f32), 15.0), (None, 15.0), (Some(5.0), 15.0)] {
        for seed in 0..5 {
            let mut rng = SmallRng::seed_from_u64(seed);
            // Ten minutes at 1 Hz parked on the west edge.
            let fixes: Vec<_> = (0..600)
                .map(|t| {
                    let (dx, dy) = noise(&mut rng, sigma);
                    let (ts, lat, lon, acc) = fix_at(t, dx, accuracy);
                    (ts, lat + dy / M_PER_DEG, lon, acc)
                })
                .collect();
            let events = check(
                &index,
                &mut DeviceFences::default(),
                &fixes,
                &FenceSettings::default(),
            );
            let enters = events.iter().filter(|e| e.0 == AlertKind::Enter).count();
            let exits = events.iter().filter(|e| e.0 == AlertKind::Exit).count();
            assert!(
                enters <= 1 && exits <= 1,
                "accuracy {accuracy:?} seed {seed}: {events:?}"
            );
        }
    }
}

#[test]
fn straddling_fixes_do_not_flip_state() {
    let index = index_of(vec![square("sq", None)]);
    // 8 m inside with 10 m accuracy: never certainly inside, no enter.
    let fixes: Vec<_> = (0..100).map(|t| fix_at(t, 8.0, Some(10.0))).collect();
    let mut state = DeviceFences::default();
    assert!(check(&index, &mut state, &fixes, &FenceSettings::default()).is_empty());
    // Once in, fixes 8 m outside with 10 m accuracy never make it leave.
    let mut fixes = vec![fix_at(100, 100.0, Some(5.0))];
    fixes.extend((101..400).map(|t| fix_at(t, -8.0, Some(10.0))));
    assert_eq!(
        check(&index, &mut state, &fixes, &FenceSettings::default()),
        [ev(AlertKind::Enter, "sq", 100)]
    );
    assert!(state.is_member(&gid("sq")));
}

#[test]
fn short_excursions_do_not_exit() {
    let index = index_of(vec![square("sq", None)]);
    let settings = FenceSettings {
        min_outside_ms: 60_000,
        ..FenceSettings::default()
    };
    // Inside, then 50 s clearly outside, then back: no exit; then 70 s out.
    let mut fixes: Vec<_> = (0..10).map(|t| fix_at(t, 100.0, None)).collect();
    fixes.extend((10..60).map(|t| fix_at(t, -100.0, None)));
    fixes.extend((60..70).map(|t| fix_at(t, 100.0, None)));
    fixes.extend((70..140).map(|t| fix_at(t, -100.0, None)));
    let events = check(&index, &mut DeviceFences::default(), &fixes, &settings);
    assert_eq!(
        events,
        [
            ev(AlertKind::Enter, "sq", 0),
            ev(AlertKind::Exit, "sq", 130)
        ]
    );
    // With no minimum, the first certainly-outside fix exits.
    let settings = FenceSettings {
        min_outside_ms: 0,
        ..FenceSettings::default()
    };
    let events = check(
        &index,
        &mut DeviceFences::default(),
        &fixes[..12],
        &settings,
    );
    assert_eq!(
        events,
        [ev(AlertKind::Enter, "sq", 0), ev(AlertKind::Exit, "sq", 10)]
    );
}

#[test]
fn dwell_fires_once_per_visit() {
    let index = index_of(vec![square("sq", Some(60.0)), square("nodwell", None)]);
    let device = DeviceId::parse("truck-1").expect("valid id");
    let mut state = DeviceFences::default();
    let mut alerts = Vec::new();
    // 5 minutes inside at 1 Hz, out for a minute, 2 minutes inside again.
    let mut fixes: Vec<_> = (0..300).map(|t| fix_at(t, 300.0, None)).collect();
    fixes.extend((300..360).map(|t| fix_at(t, -300.0, None)));
    fixes.extend((360..480).map(|t| fix_at(t, 300.0, None)));
    for (ts_ms, lat, lon, accuracy_m) in fixes {
        let fix = FenceFix {
            device: &device,
            ts_ms,
            lat,
            lon,
            accuracy_m,
            cell: None,
        };
        evaluate(
            &mut state,
            &fix,
            &index,
            &FenceSettings::default(),
            &mut alerts,
        );
    }
    let got: Vec<(AlertKind, &str, i64, Option<f64>)> = alerts
        .iter()
        .map(|a| {
            let fence = a.geofence_id.as_ref().map_or("", GeofenceId::as_str);
            (a.kind, fence, a.ts_ms / 1000, a.detail.dwell_s)
        })
        .collect();
    use AlertKind::{Dwell, Enter, Exit};
    assert_eq!(
        got,
        [
            (Enter, "nodwell", 0, None),
            (Enter, "sq", 0, None),
            (Dwell, "sq", 60, Some(60.0)),
            // Exit 30 s after the first outside fix; dwell_s is the time inside.
            (Exit, "nodwell", 330, Some(300.0)),
            (Exit, "sq", 330, Some(300.0)),
            (Enter, "nodwell", 360, None),
            (Enter, "sq", 360, None),
            (Dwell, "sq", 420, Some(60.0)),
        ]
    );
}

#[test]
fn fence_created_around_a_vehicle_is_entered_on_its_next_fix() {
    let mut index = index_of(vec![]);
    let mut state = DeviceFences::default();
    let before: Vec<_> = (0..10).map(|t| fix_at(t, 300.0, None)).collect();
    assert!(check(&index, &mut state, &before, &FenceSettings::default()).is_empty());
    index.insert(square("new", None));
    let after = [fix_at(10, 301.0, None)];
    assert_eq!(
        check(&index, &mut state, &after, &FenceSettings::default()),
        [ev(AlertKind::Enter, "new", 10)]
    );
    let members: Vec<&str> = state
        .memberships()
        .iter()
        .map(|m| m.fence.as_str())
        .collect();
    assert_eq!(members, ["new"]);
}

#[test]
fn deleted_fence_leaves_no_phantom_exit() {
    let mut index = index_of(vec![square("gone", None), square("kept", None)]);
    let mut state = DeviceFences::default();
    let inside = [fix_at(0, 300.0, None)];
    assert_eq!(
        check(&index, &mut state, &inside, &FenceSettings::default()).len(),
        2
    );
    index.remove(&gid("gone"));
    // Explicit purge, e.g. when the API deletes the fence.
    purge(&mut state, &index);
    let members: Vec<&str> = state
        .memberships()
        .iter()
        .map(|m| m.fence.as_str())
        .collect();
    assert_eq!(members, ["kept"]);
    // Without a purge, the next fix drops it silently too.
    index.remove(&gid("kept"));
    let away: Vec<_> = (1..100).map(|t| fix_at(t, -5000.0, None)).collect();
    assert!(check(&index, &mut state, &away, &FenceSettings::default()).is_empty());
    assert!(state.memberships().is_empty());
    // Re-created under the same id while away: no exit, and a later visit enters.
    index.insert(square("kept", None));
    let back = [fix_at(200, 300.0, None)];
    assert_eq!(
        check(&index, &mut state, &back, &FenceSettings::default()),
        [ev(AlertKind::Enter, "kept", 200)]
    );
}

#[test]
fn out_of_order_and_invalid_fixes_are_ignored() {
    let index = index_of(vec![square("sq", None)]);
    let mut state = DeviceFences::default();
    let fixes = [
        fix_at(100, -300.0, None),
        // Late: inside, but older than the last evaluated fix.
        fix_at(50, 300.0, None),
        (101_000, f64::NAN, LON0, None),
        fix_at(102, 300.0, Some(f32::NAN)),
    ];
    assert_eq!(
        check(&index, &mut state, &fixes, &FenceSettings::default()),
        [ev(AlertKind::Enter, "sq", 102)]
    );
}

#[test]
fn state_serializes_compactly_and_restores() {
    let index = index_of(vec![square("sq", Some(10.0))]);
    let mut state = DeviceFences::default();
    let fixes = [
        fix_at(0, 300.0, None),
        fix_at(20, 300.0, None),
        fix_at(21, -300.0, None),
    ];
    check(&index, &mut state, &fixes, &FenceSettings::default());
    let json = serde_json::to_string(&state).expect("serializes");
    assert_eq!(
        json,
        r#"{"t":21000,"m":[{"f":"sq","e":0,"o":21000,"d":true}]}"#
    );
    let mut restored: DeviceFences = serde_json::from_str(&json).expect("parses");
    assert_eq!(restored, state);
    // The restored state carries on: the exit comes 30 s after 21 s.
    let later = [fix_at(51, -300.0, None)];
    assert_eq!(
        check(&index, &mut restored, &later, &FenceSettings::default()),
        [ev(AlertKind::Exit, "sq", 51)]
    );
    assert_eq!(
        serde_json::to_string(&DeviceFences::default()).expect("serializes"),
        "{}"
    );
}

#[test]
fn circles_and_overlapping_fences() {
    let circle = Geofence {
        id: gid("ci"),
        name: Some("ci name".into()),
        properties: serde_json::Map::new(),
        dwell_s: None,
        shape: Shape::Circle(Circle {
            center: Coord {
                x: LON0,
                y: LAT0 + 0.005,
            },
            radius_m: 100.0,
        }),
    };
    let index = index_of(vec![square("sq", None), circle]);
    // From 500 m west of the square to its west edge area, through the
    // circle centred on the edge.
    let fixes: Vec<_> = (0..=120)
        .map(|t| fix_at(t, -500.0 + 5.0 * t as f64, Some(3.0)))
        .collect();
    let events = check(
        &index,
        &mut DeviceFences::default(),
        &fixes,
        &FenceSettings::default(),
    );
    // Circle: 3 m inside its 100 m radius at -97 m (t = 81); square: 3 m in at t = 101.
    assert_eq!(
        events,
        [
            ev(AlertKind::Enter, "ci", 81),
            ev(AlertKind::Enter, "sq", 101)
        ]
    );
}
