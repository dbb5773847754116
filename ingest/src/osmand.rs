//! The OsmAnd protocol, as Traccar Client, OsmAnd's online tracking and
//! many phone and vehicle trackers speak it to Traccar's port 5055: one fix
//! per HTTP request, in the query string (`GET` or `POST`), in a form body,
//! or (Traccar Client 9 and later) as a JSON body.
//!
//! Parameters, as Traccar's decoder takes them: `id` or `deviceid`; `lat`
//! and `lon`, or `location=lat,lon`; `timestamp` (Unix seconds or
//! milliseconds, ISO 8601, or `yyyy-MM-dd HH:mm:ss` in UTC); `speed` (knots
//! unless [`SpeedUnit`] says otherwise); `bearing` or `heading` (degrees);
//! `altitude` (m); `accuracy` (m); `hdop` (taken as the accuracy when no
//! `accuracy` is given: metres, roughly, for a phone); `batt` or `battery`
//! (percent); `valid` (`false`/`0` refuses the fix); `key` or `password`
//! (fleetd's addition: the device's secret, when it cannot send basic
//! auth). Every other parameter (`cell`, `wifi`, `charge`, `driverUniqueId`,
//! custom attributes) is ignored.
//!
//! The JSON body: `{"device_id", "location": {"timestamp", "coords":
//! {"latitude", "longitude", "speed" (m/s), "heading", "altitude",
//! "accuracy"}, "battery": {"level" (0–1)}, ...}}`.
//!
//! This module only reads the request into a [`RawPosition`]; validation,
//! reason codes and the journal are the same as for every other input
//! ([`crate::Submitter::submit_fix`]).

use std::fmt;

use chrono::{DateTime, NaiveDateTime};
use fleetd_schemas::RejectReason;
use serde::Deserialize;

use crate::decode::Reject;
use crate::validate::RawPosition;

/// 1 knot in m/s.
const KNOT_MPS: f64 = 1852.0 / 3600.0;

/// The unit of the `speed` parameter (the JSON body is always m/s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeedUnit {
    /// Knots: what the OsmAnd protocol and Traccar Client send.
    #[default]
    Knots,
    /// Kilometres per hour.
    Kmh,
    /// Metres per second.
    Mps,
    /// Miles per hour.
    Mph,
}

impl SpeedUnit {
    fn to_mps(self, v: f64) -> f64 {
        match self {
            Self::Knots => v * KNOT_MPS,
            Self::Kmh => v / 3.6,
            Self::Mps => v,
            Self::Mph => v * 0.44704,
        }
    }
}

impl fmt::Display for SpeedUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Knots => "knots",
            Self::Kmh => "kmh",
            Self::Mps => "mps",
            Self::Mph => "mph",
        })
    }
}

/// `[osmand]` of fleetd.toml: the OsmAnd / Traccar Client listener.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct OsmandConfig {
    /// Listen address (`--osmand`); empty: no listener.
    pub listen: String,
    pub speed_unit: SpeedUnit,
}

/// Validated `[osmand]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OsmandSettings {
    /// Where the listener binds; `None`: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Unit of the `speed` parameter.
    pub speed_unit: SpeedUnit,
}

impl OsmandConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<OsmandSettings, fleetd_schemas::InvalidSetting> {
        let listen = match self.listen.trim() {
            "" => None,
            addr => Some(crate::parse_addr("osmand.listen (--osmand)", addr)?),
        };
        Ok(OsmandSettings {
            listen,
            speed_unit: self.speed_unit,
        })
    }
}

/// One fix of an OsmAnd request, read but not validated.
#[derive(Debug, Clone, PartialEq)]
pub struct OsmandFix {
    /// The device id as sent (`id`, `deviceid`, or the JSON `device_id`).
    pub device: String,
    /// The secret of a `key` or `password` parameter, if any.
    pub key: Option<String>,
    /// The position.
    pub position: RawPosition,
}

/// Reads one request: `query` (without `?`), and `body` when it is a form
/// (`application/x-www-form-urlencoded`, or any non-JSON body) or JSON
/// (a body starting with `{`). Parameters of the body and the query are
/// read together, the body's first.
pub fn read_request(query: &str, body: &[u8], speed: SpeedUnit) -> Result<OsmandFix, Reject> {
    let body_text = std::str::from_utf8(body)
        .map_err(|_| Reject::new(RejectReason::Malformed, "the body is not UTF-8"))?;
    if body_text.trim_start().starts_with('{') {
        let mut fix = read_json(body_text)?;
        // A key may still come in the query of a JSON post.
        if fix.key.is_none() {
            fix.key = params(query)
                .find(|(k, _)| matches!(k.as_str(), "key" | "password"))
                .map(|(_, v)| v);
        }
        return Ok(fix);
    }
    read_params(params(body_text).chain(params(query)), speed)
}

/// The `name=value` pairs of a query or form body, percent-decoded, names
/// in lower case.
fn params(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(text.trim().as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
}

fn read_params(
    pairs: impl Iterator<Item = (String, String)>,
    speed_unit: SpeedUnit,
) -> Result<OsmandFix, Reject> {
    let mut device = None;
    let mut key = None;
    let mut p = RawPosition::default();
    let mut hdop = None;
    let mut any = false;
    for (name, value) in pairs {
        any = true;
        let value = value.trim();
        // The first occurrence wins (the body's before the query's).
        match name.as_str() {
            "id" | "deviceid" => {
                device.get_or_insert_with(|| value.to_owned());
            }
            "key" | "password" => {
                key.get_or_insert_with(|| value.to_owned());
            }
            "lat" => set(&mut p.lat, number("lat", value)?),
            "lon" => set(&mut p.lon, number("lon", value)?),
            "location" => {
                let (lat, lon) = value
                    .split_once(',')
                    .ok_or_else(|| bad_field(format!("location {value:?} is not \"lat,lon\"")))?;
                set(&mut p.lat, number("location", lat.trim())?);
                set(&mut p.lon, number("location", lon.trim())?);
            }
            "timestamp" => set(&mut p.ts_ms, timestamp(value)?),
            "speed" => set(&mut p.speed_mps, speed_unit.to_mps(number("speed", value)?)),
            "bearing" | "heading" => set(&mut p.heading_deg, number(&name, value)?),
            "altitude" => set(&mut p.altitude_m, number("altitude", value)?),
            "accuracy" => set(&mut p.accuracy_m, number("accuracy", value)?),
            "hdop" => set(&mut hdop, number("hdop", value)?),
            "batt" | "battery" => set(&mut p.battery_pct, number(&name, value)?),
            "valid" => {
                if matches!(value.to_ascii_lowercase().as_str(), "false" | "0") {
                    return Err(Reject::new(
                        RejectReason::BadCoordinates,
                        "the tracker marked the fix invalid (valid=false)",
                    ));
                }
            }
            _ => {}
        }
    }
    if !any {
        return Err(Reject::new(
            RejectReason::Malformed,
            "no parameters: expected id, lat, lon, timestamp in the query or a form body",
        ));
    }
    if p.accuracy_m.is_none() {
        p.accuracy_m = hdop;
    }
    let device = device
        .filter(|d| !d.is_empty())
        .ok_or_else(|| Reject::new(RejectReason::BadDeviceId, "missing id (or deviceid)"))?;
    Ok(OsmandFix {
        device,
        key,
        position: p,
    })
}

fn set<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

fn bad_field(detail: String) -> Reject {
    Reject::new(RejectReason::BadField, detail)
}

fn number(name: &str, value: &str) -> Result<f64, Reject> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| bad_field(format!("{name} {value:?} is not a number")))
}

/// Unix seconds or milliseconds (told apart by size, as Traccar does),
/// ISO 8601 / RFC 3339, or `yyyy-MM-dd HH:mm:ss[.fff]` taken as UTC.
fn timestamp(value: &str) -> Result<i64, Reject> {
    if let Ok(n) = value.parse::<i64>() {
        // Below 2^31 it can only be seconds (ms would be January 1970).
        return Ok(if n < i64::from(i32::MAX) {
            n.saturating_mul(1000)
        } else {
            n
        });
    }
    if let Ok(n) = value.parse::<f64>()
        && n.is_finite()
    {
        // Seconds with a fraction.
        return Ok((n * 1000.0).round() as i64);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(bad_field(format!(
        "timestamp {value:?} is neither Unix seconds/ms, ISO 8601 nor yyyy-MM-dd HH:mm:ss"
    )))
}

/// Traccar Client's JSON body.
#[derive(Debug, Deserialize)]
struct JsonRequest {
    device_id: Option<serde_json::Value>,
    location: Option<JsonLocation>,
}

#[derive(Debug, Deserialize)]
struct JsonLocation {
    timestamp: Option<serde_json::Value>,
    coords: Option<JsonCoords>,
    battery: Option<JsonBattery>,
}

#[derive(Debug, Deserialize)]
struct JsonCoords {
    latitude: Option<f64>,
    longitude: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    altitude: Option<f64>,
    accuracy: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct JsonBattery {
    level: Option<f64>,
}

fn read_json(body: &str) -> Result<OsmandFix, Reject> {
    let request: JsonRequest = serde_json::from_str(body)
        .map_err(|e| Reject::new(RejectReason::Malformed, format!("invalid JSON: {e}")))?;
    let device = match request.device_id {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        // Some builds send the id as a number.
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            return Err(Reject::new(RejectReason::BadDeviceId, "missing device_id"));
        }
    };
    let location = request
        .location
        .ok_or_else(|| Reject::new(RejectReason::Malformed, "missing location"))?;
    let ts_ms = match location.timestamp {
        Some(serde_json::Value::String(s)) => Some(timestamp(s.trim())?),
        Some(serde_json::Value::Number(n)) => Some(timestamp(&n.to_string())?),
        Some(_) => return Err(bad_field("location.timestamp is not a time".into())),
        None => None,
    };
    let coords = location
        .coords
        .ok_or_else(|| Reject::new(RejectReason::BadCoordinates, "missing location.coords"))?;
    // The app reports -1 for what the platform did not measure.
    let measured = |v: Option<f64>| v.filter(|v| *v >= 0.0);
    Ok(OsmandFix {
        device,
        key: None,
        position: RawPosition {
            ts_ms,
            lat: coords.latitude,
            lon: coords.longitude,
            accuracy_m: measured(coords.accuracy),
            altitude_m: coords.altitude,
            speed_mps: measured(coords.speed),
            heading_deg: measured(coords.heading),
            battery_pct: location
                .battery
                .and_then(|b| b.level)
                .filter(|l| *l >= 0.0)
                .map(|l| l * 100.0),
            seq: None,
        },
    })
}

#[cfg(test)]
#[path = "osmand_tests.rs"]
mod tests;
