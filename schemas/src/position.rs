//! Position domain types: device ids, reports and enriched positions.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest accepted device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// A validated device id: 1–128 characters of `[A-Za-z0-9._:-]`, or two such
/// parts joined by one `/` (OwnTracks `user/device` ids).
///
/// Cheap to clone (shared string), since every position of a device carries it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(Arc<str>);

/// What kind of id a [`InvalidId`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A device id ([`DeviceId`]).
    Device,
    /// A geofence id ([`crate::GeofenceId`]).
    Geofence,
    /// An OwnTracks user name ([`crate::Principal::User`]).
    User,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Geofence => "geofence",
            Self::User => "user",
        }
    }

    /// The characters beyond `[A-Za-z0-9._:-]` this kind allows.
    fn also_allowed(self) -> &'static str {
        match self {
            Self::Device => " (and one / for OwnTracks ids)",
            Self::Geofence | Self::User => "",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a valid id; the message names the kind of id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// The id is empty.
    #[error("{0} id is empty")]
    Empty(IdKind),
    /// The id is longer than [`MAX_DEVICE_ID_LEN`] bytes.
    #[error("{0} id is {1} bytes long, the limit is 128")]
    TooLong(IdKind, usize),
    /// The id contains a character its kind does not allow.
    #[error("{0} id contains {1:?}; allowed are A-Z a-z 0-9 . _ : -{also}", also = .0.also_allowed())]
    BadChar(IdKind, char),
}

impl InvalidId {
    /// Checks the rules every id shares (not empty, not too long) and each
    /// character with `allowed` (its index and the character).
    pub(crate) fn check(
        kind: IdKind,
        s: &str,
        mut allowed: impl FnMut(usize, char) -> bool,
    ) -> Result<(), Self> {
        if s.is_empty() {
            return Err(Self::Empty(kind));
        }
        if s.len() > MAX_DEVICE_ID_LEN {
            return Err(Self::TooLong(kind, s.len()));
        }
        match s.char_indices().find(|&(i, c)| !allowed(i, c)) {
            Some((_, bad)) => Err(Self::BadChar(kind, bad)),
            None => Ok(()),
        }
    }
}

impl DeviceId {
    /// Validates `s` as a device id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let mut slashes = 0;
        InvalidId::check(IdKind::Device, s, |i, c| match c {
            // One separator for OwnTracks `user/device`, never at either end.
            '/' if slashes == 0 && i > 0 && i + 1 < s.len() => {
                slashes += 1;
                true
            }
            c => is_id_char(c),
        })?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The characters every id may hold: `[A-Za-z0-9._:-]`.
pub(crate) fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0.to_string()
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One validated GPS fix from one device, as ingest hands it to the processor.
///
/// Invariants (checked by ingest): `lat` in [-90, 90], `lon` in [-180, 180],
/// both finite; optional fields finite when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionReport {
    /// Which device sent the fix (the MQTT topic's id wins over the payload's).
    pub device_id: DeviceId,
    /// Device time of the fix, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// WGS84 latitude, degrees.
    pub lat: f64,
    /// WGS84 longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    pub accuracy_m: Option<f32>,
    /// Altitude, metres.
    pub altitude_m: Option<f32>,
    /// Ground speed, metres per second.
    pub speed_mps: Option<f32>,
    /// Course over ground, degrees clockwise from true north.
    pub heading_deg: Option<f32>,
    /// Battery level, percent.
    pub battery_pct: Option<f32>,
    /// Per-device counter sent by the device, if any.
    pub seq: Option<u64>,
    /// Server receive time, Unix epoch milliseconds (for lag metrics).
    pub received_ms: i64,
}

/// H3 cells of a position, as raw H3 indexes.
///
/// `area` is always at [`H3Cells::AREA_RES`], the resolution of the store's
/// "who is in this area" index; `detail` is at the configured detail
/// resolution (default 9). Each index encodes its own resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct H3Cells {
    /// Cell at [`H3Cells::AREA_RES`].
    pub area: u64,
    /// Cell at the configured detail resolution.
    pub detail: u64,
}

impl H3Cells {
    /// Resolution of the area index (cells ~5 km², edge ~1.4 km).
    pub const AREA_RES: u8 = 7;

    /// Both cells of a point, the detail one at `detail_res`; `None` only
    /// for coordinates ingest would never pass (non-finite).
    pub fn of(lat: f64, lon: f64, detail_res: h3o::Resolution) -> Option<Self> {
        let ll = h3o::LatLng::new(lat, lon).ok()?;
        Some(Self {
            area: u64::from(ll.to_cell(h3o::Resolution::Seven)),
            detail: u64::from(ll.to_cell(detail_res)),
        })
    }
}

/// A report plus what the processor derived for it; the unit the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedPosition {
    /// The report as received (speed/heading filled in when derived).
    pub report: PositionReport,
    /// H3 cells of the fix.
    pub h3: H3Cells,
    /// `report.speed_mps` was derived from the previous fix, not sent.
    pub speed_derived: bool,
    /// `report.heading_deg` was derived from the previous fix, not sent.
    pub heading_derived: bool,
    /// Set when a data-quality filter flagged the fix (poor accuracy,
    /// teleport, stationary jitter, too late): it is kept in history for
    /// the record but did not move the vehicle's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<crate::RejectReason>,
}

impl From<&EnrichedPosition> for crate::storage::StoredPosition {
    fn from(p: &EnrichedPosition) -> Self {
        let r = &p.report;
        Self {
            device_id: r.device_id.as_str().to_owned(),
            ts_ms: r.ts_ms,
            lat: r.lat,
            lon: r.lon,
            accuracy_m: r.accuracy_m,
            altitude_m: r.altitude_m,
            speed_mps: r.speed_mps,
            heading_deg: r.heading_deg,
            battery_pct: r.battery_pct,
            seq: r.seq,
            h3_area: p.h3.area,
            h3_detail: p.h3.detail,
            speed_derived: p.speed_derived,
            heading_derived: p.heading_derived,
            received_ms: r.received_ms,
            flag: p.flag.map(|f| f.code().to_owned()).unwrap_or_default(),
        }
    }
}

impl TryFrom<crate::storage::StoredPosition> for EnrichedPosition {
    type Error = InvalidId;
    fn try_from(s: crate::storage::StoredPosition) -> Result<Self, Self::Error> {
        Ok(Self {
            report: PositionReport {
                device_id: DeviceId::parse(&s.device_id)?,
                ts_ms: s.ts_ms,
                lat: s.lat,
                lon: s.lon,
                accuracy_m: s.accuracy_m,
                altitude_m: s.altitude_m,
                speed_mps: s.speed_mps,
                heading_deg: s.heading_deg,
                battery_pct: s.battery_pct,
                seq: s.seq,
                received_ms: s.received_ms,
            },
            h3: H3Cells {
                area: s.h3_area,
                detail: s.h3_detail,
            },
            speed_derived: s.speed_derived,
            heading_derived: s.heading_derived,
            // A code this build does not know (written by a newer fleetd)
            // reads as unflagged rather than failing the whole row.
            flag: crate::RejectReason::from_code(&s.flag),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "truck-17", "x.y_z:1", "alice/phone", &"a".repeat(128)] {
            assert!(DeviceId::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(DeviceId::parse(""), Err(InvalidId::Empty(IdKind::Device)));
        assert_eq!(
            DeviceId::parse(&"a".repeat(129)),
            Err(InvalidId::TooLong(IdKind::Device, 129))
        );
        for bad in ["a b", "a/b/c", "/a", "a/", "a+", "a#", "é", "a\0"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
    }
}
