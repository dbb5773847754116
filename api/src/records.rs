//! JSON shapes of vehicle state, trips, alerts and registry entries.
//!
//! **Vehicle detail** (`GET /v1/vehicles/{id}`): the vehicle JSON of the
//! latest position (see `dto`) plus
//!
//! ```json
//! {"motion": "moving", "motion_since_ms": 1700000000000, "odometer_m": 12345.6,
//!  "state_ts_ms": 1700000000000, "trip": {trip...} | absent,
//!  "name": "Truck 7", "class": "truck", "speed_limit_kmh": 80.0, "tags": {"depot": "north"}}
//! ```
//!
//! `state_ts_ms` is the device time the state was last advanced to (it
//! trails `ts_ms` by up to the reorder allowance). Registry fields are
//! absent for devices without an entry.
//!
//! **Trip**: `{"device_id", "trip_id", "open", "start_ts_ms", "start": {"lat", "lon"},
//! "end_ts_ms", "end", "distance_m", "duration_s", "max_speed_mps",
//! "avg_speed_mps", "points", "track": "/v1/vehicles/{id}/trips/{trip_id}/track"}`;
//! `end_ts_ms`/`end` are null while open. `trip_id` is the start time.

use std::collections::BTreeMap;

use fleetd_schemas::{DeviceInfo, Trip, VehicleState};
use serde::Serialize;

use crate::dto::Vehicle;

/// A point as `{"lat", "lon"}`.
#[derive(Debug, Serialize)]
pub(crate) struct LatLon {
    lat: f64,
    lon: f64,
}

impl From<(f64, f64)> for LatLon {
    fn from((lat, lon): (f64, f64)) -> Self {
        Self { lat, lon }
    }
}

/// One trip.
#[derive(Debug, Serialize)]
pub(crate) struct TripJson {
    device_id: String,
    trip_id: String,
    open: bool,
    start_ts_ms: i64,
    start: LatLon,
    end_ts_ms: Option<i64>,
    end: Option<LatLon>,
    distance_m: f64,
    duration_s: f64,
    max_speed_mps: f64,
    avg_speed_mps: f64,
    points: u32,
    track: String,
}

impl TripJson {
    pub(crate) fn new(device_id: &str, trip: &Trip) -> Self {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        Self {
            device_id: device_id.to_owned(),
            trip_id: trip.start_ts_ms.to_string(),
            open: !trip.is_closed(),
            start_ts_ms: trip.start_ts_ms,
            start: trip.start.into(),
            end_ts_ms: trip.end_ts_ms,
            end: trip.end.map(LatLon::from),
            distance_m: round(trip.distance_m),
            duration_s: round(trip.duration_s()),
            max_speed_mps: round(trip.max_speed_mps),
            avg_speed_mps: round(trip.avg_speed_mps()),
            points: trip.points,
            track: format!(
                "/v1/vehicles/{}/trips/{}/track",
                percent_encode(device_id),
                trip.start_ts_ms
            ),
        }
    }
}

/// Device ids may hold one `/` (OwnTracks `user/device`), which must be
/// escaped in a path segment; every other id character is URL-safe.
fn percent_encode(id: &str) -> String {
    id.replace('/', "%2F")
}

/// A registry entry, as `PUT/GET /v1/devices/{id}` answer it.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceJson<'a> {
    device_id: &'a str,
    #[serde(flatten)]
    info: &'a DeviceInfo,
}

impl<'a> DeviceJson<'a> {
    pub(crate) fn new(device_id: &'a str, info: &'a DeviceInfo) -> Self {
        Self { device_id, info }
    }
}

/// `GET /v1/vehicles/{id}`: the latest position with state and registry.
#[derive(Debug, Serialize)]
pub(crate) struct VehicleDetail<'a> {
    #[serde(flatten)]
    position: Vehicle<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    motion: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    motion_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    odometer_m: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_ts_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trip: Option<TripJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_limit_kmh: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a BTreeMap<String, String>>,
}

impl<'a> VehicleDetail<'a> {
    pub(crate) fn new(
        position: Vehicle<'a>,
        device_id: &str,
        state: Option<&'a VehicleState>,
        info: Option<&'a DeviceInfo>,
        speed_limit_kmh: Option<f64>,
    ) -> Self {
        Self {
            position,
            motion: state.map(|s| s.motion.code()),
            motion_since_ms: state.map(|s| s.motion_since_ms),
            odometer_m: state.map(|s| (s.odometer_m * 10.0).round() / 10.0),
            state_ts_ms: state.map(|s| s.ts_ms),
            trip: state
                .and_then(|s| s.trip.as_ref())
                .map(|t| TripJson::new(device_id, t)),
            name: info.and_then(|i| i.name.as_deref()),
            class: info.and_then(|i| i.class.as_deref()),
            speed_limit_kmh,
            tags: info.map(|i| &i.tags).filter(|t| !t.is_empty()),
        }
    }
}
