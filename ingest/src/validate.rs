//! Validation of decoded positions into [`PositionReport`]s.

use fleetd_schemas::{DeviceId, PositionReport, RejectReason};

use crate::decode::Reject;

/// 2000-01-01T00:00:00Z in Unix ms: anything older is a broken clock.
const EPOCH_2000_MS: i64 = 946_684_800_000;

/// A decoded but not yet validated position (wire-format independent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawPosition {
    /// Device time, Unix ms.
    pub ts_ms: Option<i64>,
    /// Latitude, degrees.
    pub lat: Option<f64>,
    /// Longitude, degrees.
    pub lon: Option<f64>,
    /// Accuracy radius, metres.
    pub accuracy_m: Option<f64>,
    /// Altitude, metres.
    pub altitude_m: Option<f64>,
    /// Speed, m/s.
    pub speed_mps: Option<f64>,
    /// Heading, degrees.
    pub heading_deg: Option<f64>,
    /// Battery, percent.
    pub battery_pct: Option<f64>,
    /// Device counter.
    pub seq: Option<u64>,
}

/// Input limits enforced by ingest. All are configurable (`[ingest]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Payloads larger than this are rejected as `oversize`.
    pub max_payload_bytes: usize,
    /// Batches with more positions than this are rejected as `batch_too_large`.
    pub max_batch_positions: usize,
    /// Device times further than this ahead of the server clock are rejected
    /// as `future_timestamp` (device clocks drift; GPS time does not).
    pub max_future_ms: i64,
    /// Device times further than this behind the server clock are rejected
    /// as `stale_timestamp` (older data would expire from history anyway).
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_batch_positions: 1000,
            max_future_ms: 5 * 60 * 1000,
            max_age_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

impl Limits {
    /// Checks `raw` and turns it into a report for `device`.
    pub fn validate(
        &self,
        device: &DeviceId,
        raw: RawPosition,
        received_ms: i64,
    ) -> Result<PositionReport, Reject> {
        let ts_ms = match raw.ts_ms {
            Some(ts) if ts != 0 => ts,
            _ => return Err(Reject::new(RejectReason::Malformed, "missing ts_ms")),
        };
        if ts_ms > received_ms.saturating_add(self.max_future_ms) {
            return Err(Reject::new(
                RejectReason::FutureTimestamp,
                format!(
                    "ts_ms {ts_ms} is {} s ahead of the server clock (limit {} s)",
                    (ts_ms - received_ms) / 1000,
                    self.max_future_ms / 1000
                ),
            ));
        }
        if ts_ms < EPOCH_2000_MS || ts_ms < received_ms.saturating_sub(self.max_age_ms) {
            return Err(Reject::new(
                RejectReason::StaleTimestamp,
                format!(
                    "ts_ms {ts_ms} is older than the {} h limit or before 2000",
                    self.max_age_ms / 3_600_000
                ),
            ));
        }
        let (lat, lon) = match (raw.lat, raw.lon) {
            (Some(lat), Some(lon)) => (lat, lon),
            _ => {
                return Err(Reject::new(
                    RejectReason::BadCoordinates,
                    "missing lat or lon",
                ));
            }
        };
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Err(Reject::new(
                RejectReason::BadCoordinates,
                format!("lat {lat} is not in [-90, 90]"),
            ));
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Err(Reject::new(
                RejectReason::BadCoordinates,
                format!("lon {lon} is not in [-180, 180]"),
            ));
        }
        if lat == 0.0 && lon == 0.0 {
            // Trackers without a fix commonly send (0, 0); protobuf also
            // cannot tell it from absent coordinates.
            return Err(Reject::new(
                RejectReason::BadCoordinates,
                "(0, 0) is treated as no fix",
            ));
        }
        Ok(PositionReport {
            device_id: device.clone(),
            ts_ms,
            lat,
            lon,
            accuracy_m: optional("accuracy_m", raw.accuracy_m, 0.0, 1e6)?,
            altitude_m: optional("altitude_m", raw.altitude_m, -1e5, 1e6)?,
            speed_mps: optional("speed_mps", raw.speed_mps, 0.0, 1e4)?,
            // 360 is north as well; normalise so consumers see [0, 360).
            heading_deg: optional("heading_deg", raw.heading_deg, 0.0, 360.0)?
                .map(|h| h.rem_euclid(360.0)),
            battery_pct: optional("battery_pct", raw.battery_pct, 0.0, 100.0)?,
            seq: raw.seq,
            received_ms,
        })
    }
}

/// Checks an optional numeric field against `[min, max]`.
fn optional(name: &str, value: Option<f64>, min: f64, max: f64) -> Result<Option<f32>, Reject> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && (min..=max).contains(&v) => Ok(Some(v as f32)),
        Some(v) => Err(Reject::new(
            RejectReason::BadField,
            format!("{name} {v} is not in [{min}, {max}]"),
        )),
    }
}
