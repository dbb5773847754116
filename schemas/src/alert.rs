//! Alerts: what the processor tells operators and devices about a vehicle.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::position::{DeviceId, IdKind, InvalidId, is_id_char};

/// A validated geofence id: 1–128 characters of `[A-Za-z0-9._:-]`.
///
/// Cheap to clone (shared string): every membership and alert carries it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GeofenceId(Arc<str>);

impl GeofenceId {
    /// Validates `s` as a geofence id (the device id rules, without `/`).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        InvalidId::check(IdKind::Geofence, s, |_, c| is_id_char(c))?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GeofenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GeofenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl TryFrom<String> for GeofenceId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<GeofenceId> for String {
    fn from(id: GeofenceId) -> Self {
        id.0.to_string()
    }
}

/// What an alert is about. The string form ([`AlertKind::code`]) is part of
/// the contract (alert JSON `kind`, the `kind=` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// The vehicle entered a geofence.
    Enter,
    /// The vehicle left a geofence.
    Exit,
    /// The vehicle has been inside a geofence longer than its dwell threshold.
    Dwell,
    /// The vehicle drove faster than its speed limit for longer than the
    /// configured grace time.
    Overspeed,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 4] = [Self::Enter, Self::Exit, Self::Dwell, Self::Overspeed];

    /// The stable code, e.g. `overspeed`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Enter => "enter",
            Self::Exit => "exit",
            Self::Dwell => "dwell",
            Self::Overspeed => "overspeed",
        }
    }

    /// Parses a code as written by [`AlertKind::code`].
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Kind-specific facts of an alert; absent fields are omitted in JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertDetail {
    /// Geofence name (enter, exit, dwell), from the fence's properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geofence_name: Option<String>,
    /// Time spent inside the fence, seconds (dwell, exit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<f64>,
    /// Speed that triggered the alert, km/h (overspeed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_kmh: Option<f64>,
    /// The limit that was exceeded, km/h (overspeed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_kmh: Option<f64>,
    /// How long the limit had been exceeded when the alert fired, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_s: Option<f64>,
    /// Reported accuracy of the causing fix, metres (enter, exit, dwell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f32>,
    /// Registry name of the device, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// One alert, as stored, streamed and published on `fleet/{device}/alerts`.
///
/// `ts_ms` is the device time of the position that caused it, so replaying
/// the same input yields the same alert with the same [`Alert::id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id: the same device, kind, fence and time give the
    /// same id, so a retried store write or a replay does not duplicate it.
    pub id: String,
    /// What happened.
    pub kind: AlertKind,
    /// Which device.
    pub device_id: DeviceId,
    /// Which geofence, for enter/exit/dwell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geofence_id: Option<GeofenceId>,
    /// Device time of the causing position, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// Latitude of the causing position.
    pub lat: f64,
    /// Longitude of the causing position.
    pub lon: f64,
    /// Kind-specific facts.
    pub detail: AlertDetail,
}

impl Alert {
    /// An alert with its deterministic id.
    pub fn new(
        kind: AlertKind,
        device_id: DeviceId,
        geofence_id: Option<GeofenceId>,
        ts_ms: i64,
        (lat, lon): (f64, f64),
        detail: AlertDetail,
    ) -> Self {
        let id = alert_id(kind, &device_id, geofence_id.as_ref(), ts_ms);
        Self {
            id,
            kind,
            device_id,
            geofence_id,
            ts_ms,
            lat,
            lon,
            detail,
        }
    }
}

/// `{ts_ms:013}-{hash:016x}`: sorts by time, unique per (kind, device,
/// fence, time). FNV-1a, not std's hasher, so ids are stable across builds.
fn alert_id(kind: AlertKind, device: &DeviceId, fence: Option<&GeofenceId>, ts_ms: i64) -> String {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    kind.code().hash(&mut h);
    device.as_str().hash(&mut h);
    fence.map(GeofenceId::as_str).hash(&mut h);
    ts_ms.hash(&mut h);
    format!("{:013}-{:016x}", ts_ms.max(0), h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let dev = DeviceId::parse("truck-1").expect("id");
        let fence = GeofenceId::parse("depot").expect("id");
        let a = Alert::new(
            AlertKind::Enter,
            dev.clone(),
            Some(fence.clone()),
            1_700_000_000_000,
            (1.0, 2.0),
            AlertDetail::default(),
        );
        let b = Alert::new(
            AlertKind::Enter,
            dev.clone(),
            Some(fence.clone()),
            1_700_000_000_000,
            (1.0, 2.0),
            AlertDetail::default(),
        );
        let c = Alert::new(
            AlertKind::Exit,
            dev,
            Some(fence),
            1_700_000_000_000,
            (1.0, 2.0),
            AlertDetail::default(),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id.starts_with("1700000000000-"));
    }

    #[test]
    fn geofence_ids() {
        assert!(GeofenceId::parse("zone-1.a:b_c").is_ok());
        for bad in ["", "a/b", "a b", "é"] {
            assert!(GeofenceId::parse(bad).is_err(), "{bad}");
        }
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::from_code(kind.code()), Some(kind));
        }
    }
}
