use fleetd_schemas::test_support::report;
use fleetd_schemas::{DeviceId, DeviceInfo, Motion};

use crate::settings::VehicleSettings;

use super::*;

/// Settings with no reorder wait, so each batch applies what it gets.
fn immediate() -> EnrichSettings {
    EnrichSettings {
        vehicle: VehicleSettings {
            reorder_ms: 0,
            ..VehicleSettings::default()
        },
        ..EnrichSettings::default()
    }
}

fn run_with(
    state: &mut PartitionState,
    reports: Vec<PositionReport>,
    settings: &EnrichSettings,
    now_ms: i64,
) -> BatchOutcome {
    let registry = Registry::default();
    let ctx = BatchContext {
        now_ms,
        registry: &registry,
        geofences: &fleetd_geofence::Geofences::default(),
        release_all: false,
        sweep: false,
    };
    process_batch(state, reports, settings, &ctx)
}

fn run(state: &mut PartitionState, reports: Vec<PositionReport>) -> BatchOutcome {
    let now = reports.iter().map(|r| r.ts_ms).max().unwrap_or(0);
    run_with(state, reports, &immediate(), now)
}

fn latest_ts(out: &BatchOutcome, device: &str) -> Option<i64> {
    out.write
        .latest
        .iter()
        .find(|u| u.position.report.device_id.as_str() == device)
        .map(|u| u.position.report.ts_ms)
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("id")
}

#[test]
fn sorts_dedupes_and_picks_latest_per_device() {
    let mut state = PartitionState::default();
    let out = run(
        &mut state,
        vec![
            report("b", 3000, 1.0, 1.0),
            report("a", 2000, 52.0, 13.0),
            report("a", 1000, 52.0, 13.0),
            report("a", 2000, 52.0, 13.0),
            report("b", 1000, 1.0, 1.0),
        ],
    );
    assert_eq!(out.count(RejectReason::Duplicate), 1);
    assert_eq!(out.write.history.len(), 4);
    let mut order: Vec<_> = out
        .write
        .history
        .iter()
        .map(|p| (p.report.device_id.as_str(), p.report.ts_ms))
        .collect();
    order.sort();
    assert_eq!(order, [("a", 1000), ("a", 2000), ("b", 1000), ("b", 3000)]);
    assert_eq!(latest_ts(&out, "a"), Some(2000));
    assert_eq!(latest_ts(&out, "b"), Some(3000));
    assert!(
        out.write
            .latest
            .iter()
            .all(|u| u.previous_area_cell.is_none())
    );
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].reason, RejectReason::Duplicate);
}

#[test]
fn late_points_go_to_history_without_regressing_latest() {
    let mut state = PartitionState::default();
    let first = run(&mut state, vec![report("a", 10_000, 52.0, 13.0)]);
    let area = first.write.latest[0].position.h3.area;
    let out = run(
        &mut state,
        vec![
            report("a", 5_000, 52.0001, 13.0),
            report("a", 10_000, 52.0, 13.0),
        ],
    );
    assert_eq!(out.count(RejectReason::TooLate), 1);
    assert_eq!(
        out.count(RejectReason::Duplicate),
        1,
        "same ts as the latest"
    );
    assert_eq!(out.write.history.len(), 1);
    assert_eq!(out.write.history[0].flag, Some(RejectReason::TooLate));
    assert!(out.write.latest.is_empty(), "latest must not regress");
    assert_eq!(state.devices[&id("a")].vehicle.ts_ms, 10_000);

    let out = run(&mut state, vec![report("a", 11_000, 52.0001, 13.0)]);
    assert_eq!(latest_ts(&out, "a"), Some(11_000));
    assert_eq!(out.write.latest[0].previous_area_cell, Some(area));
}

#[test]
fn fixes_wait_for_the_reorder_allowance_and_apply_in_order() {
    let settings = EnrichSettings::default();
    let allowance = settings.vehicle.reorder_ms;
    let mut state = PartitionState::default();
    // Two fixes out of order in one batch, a third older one in the next.
    let out = run_with(
        &mut state,
        vec![
            report("a", 10_000, 52.0, 13.0),
            report("a", 9_000, 52.0, 13.0),
        ],
        &settings,
        10_000,
    );
    assert_eq!(latest_ts(&out, "a"), Some(10_000), "latest does not wait");
    assert!(out.write.history.is_empty(), "history waits");
    assert!(state.has_buffered());
    let out = run_with(
        &mut state,
        vec![report("a", 8_500, 52.0, 13.0)],
        &settings,
        10_100,
    );
    assert!(out.write.latest.is_empty());
    assert_eq!(out.count(RejectReason::TooLate), 0);
    // The allowance passes in server time: all three, in device-time order.
    let out = run_with(&mut state, vec![], &settings, 10_100 + allowance);
    let order: Vec<i64> = out.write.history.iter().map(|p| p.report.ts_ms).collect();
    assert_eq!(order, [8_500, 9_000, 10_000]);
    assert!(!state.has_buffered());
    assert_eq!(out.write.states.len(), 1);
}

#[test]
fn derives_speed_and_heading_when_absent() {
    let mut state = PartitionState::default();
    // 0.001° of latitude north in 10 s: 111.195 m → 11.12 m/s, heading 0.
    let out = run(
        &mut state,
        vec![
            report("a", 1_000_000, 52.0, 13.0),
            report("a", 1_010_000, 52.001, 13.0),
        ],
    );
    let p = &out.write.history[1];
    assert!(p.speed_derived && p.heading_derived);
    let speed = p.report.speed_mps.expect("derived");
    assert!((speed - 11.1195).abs() < 0.01, "{speed}");
    assert!(p.report.heading_deg.expect("derived").abs() < 1e-3);
    // The latest row derives the same way.
    let latest = &out.write.latest[0].position;
    assert_eq!(latest.report.speed_mps, p.report.speed_mps);
    // The first point has nothing to derive from.
    assert!(out.write.history[0].report.speed_mps.is_none());

    // Sent values are kept; no heading from a 1 m move.
    let mut sent = report("a", 1_020_000, 52.00101, 13.0);
    sent.speed_mps = Some(3.0);
    let out = run(&mut state, vec![sent]);
    let p = &out.write.history[0];
    assert_eq!(p.report.speed_mps, Some(3.0));
    assert!(!p.speed_derived);
    assert!(p.report.heading_deg.is_none() && !p.heading_derived);
}

#[test]
fn teleports_are_flagged_and_never_become_latest() {
    let mut state = PartitionState::default();
    let out = run(
        &mut state,
        vec![
            report("a", 1_000, 52.0, 13.0),
            report("a", 2_000, 52.0001, 13.0),
            // 111 km in one second.
            report("a", 3_000, 53.0, 13.0),
            report("a", 4_000, 52.0002, 13.0),
        ],
    );
    assert_eq!(out.count(RejectReason::Teleport), 1);
    assert_eq!(latest_ts(&out, "a"), Some(4_000));
    let flagged: Vec<i64> = out
        .write
        .history
        .iter()
        .filter(|p| p.flag == Some(RejectReason::Teleport))
        .map(|p| p.report.ts_ms)
        .collect();
    assert_eq!(flagged, [3_000]);
    let sample = out
        .samples
        .iter()
        .find(|s| s.reason == RejectReason::Teleport)
        .expect("sampled");
    assert!(sample.detail.contains("m/s"), "{}", sample.detail);
    assert!(state.devices[&id("a")].vehicle.odometer_m < 50.0);
}

#[test]
fn overspeed_uses_the_registry_and_fires_once() {
    let settings = immediate();
    let registry = Registry::default();
    registry.upsert(
        id("car"),
        DeviceInfo {
            name: Some("Car 1".into()),
            speed_limit_kmh: Some(50.0),
            ..DeviceInfo::default()
        },
    );
    let mut state = PartitionState::default();
    let mut alerts = Vec::new();
    // 20 m/s (72 km/h) due north for 60 s, one fix per second and batch.
    for t in 0..60i64 {
        let mut r = report("car", t * 1000, 52.0 + t as f64 * 0.00018, 13.0);
        r.speed_mps = Some(20.0);
        let ctx = BatchContext {
            now_ms: t * 1000,
            registry: &registry,
            geofences: &fleetd_geofence::Geofences::default(),
            release_all: false,
            sweep: false,
        };
        let out = process_batch(&mut state, vec![r], &settings, &ctx);
        alerts.extend(out.write.alerts);
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.kind, fleetd_schemas::AlertKind::Overspeed);
    assert_eq!(alert.detail.device_name.as_deref(), Some("Car 1"));
    assert_eq!(alert.detail.limit_kmh, Some(50.0));
    assert_eq!(state.devices[&id("car")].vehicle.motion, Motion::Moving);
}

#[test]
fn h3_cells_have_the_configured_resolutions() {
    let mut state = PartitionState::default();
    let settings = EnrichSettings {
        detail_res: Resolution::Eleven,
        ..immediate()
    };
    let out = run_with(
        &mut state,
        vec![report("a", 1, 37.7749, -122.4194)],
        &settings,
        1,
    );
    let h3 = out.write.history[0].h3;
    let area = h3o::CellIndex::try_from(h3.area).expect("cell");
    let detail = h3o::CellIndex::try_from(h3.detail).expect("cell");
    assert_eq!(area.resolution(), Resolution::Seven);
    assert_eq!(detail.resolution(), Resolution::Eleven);
    assert_eq!(detail.parent(Resolution::Seven), Some(area));
}

/// Cells agree with the `h3` reference implementation (values generated by
/// tests/data/h3_reference.py) at the stored and the finest resolution.
#[test]
fn h3_cells_match_the_reference_implementation() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/data/h3_expected.json")).expect("json");
    let points = reference["points"].as_array().expect("points");
    assert!(points.len() >= 5);
    for point in points {
        let (lat, lon) = (
            point["lat"].as_f64().expect("lat"),
            point["lon"].as_f64().expect("lon"),
        );
        for (res, want) in point["cells"].as_object().expect("cells") {
            let res: u8 = res.parse().expect("resolution");
            let detail_res = Resolution::try_from(res).expect("resolution");
            let got = cells(lat, lon, detail_res).expect("valid point");
            let got = h3o::CellIndex::try_from(got.detail)
                .expect("cell")
                .to_string();
            assert_eq!(
                &got,
                want.as_str().expect("hex"),
                "{} res {res}",
                point["name"]
            );
        }
    }
}
