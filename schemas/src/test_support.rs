//! Constructors for the tests and benchmarks of every crate (feature
//! `test-support`): one way to make a position, so a change of the types
//! is one change here.

use crate::{DeviceId, EnrichedPosition, H3Cells, PositionReport};

/// A bare fix of `device` at device time `ts_ms` (received then too), with
/// no optional field set. Panics on an invalid device id: it is test input.
pub fn report(device: &str, ts_ms: i64, lat: f64, lon: f64) -> PositionReport {
    PositionReport {
        device_id: DeviceId::parse(device).expect("a valid device id"),
        ts_ms,
        lat,
        lon,
        accuracy_m: None,
        altitude_m: None,
        speed_mps: None,
        heading_deg: None,
        battery_pct: None,
        seq: None,
        received_ms: ts_ms,
    }
}

/// [`report`] as the processor would store it: its H3 cells (detail at
/// res 9), nothing derived or flagged. Panics on coordinates H3 refuses.
pub fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
    EnrichedPosition {
        report: report(device, ts_ms, lat, lon),
        h3: H3Cells::of(lat, lon, h3o::Resolution::Nine).expect("finite coordinates"),
        speed_derived: false,
        heading_derived: false,
        flag: None,
    }
}

/// [`position`] with every optional field of the report set (accuracy,
/// altitude, speed, heading, battery, seq), the speed marked derived, and
/// received 120 ms after `ts_ms`: what storage round trips must keep.
pub fn full_position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
    let mut p = position(device, ts_ms, lat, lon);
    p.report.accuracy_m = Some(4.5);
    p.report.altitude_m = Some(34.0);
    p.report.speed_mps = Some(12.25);
    p.report.heading_deg = Some(270.0);
    p.report.battery_pct = Some(81.0);
    p.report.seq = Some(ts_ms.unsigned_abs());
    p.report.received_ms = ts_ms + 120;
    p.speed_derived = true;
    p
}
