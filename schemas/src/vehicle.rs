//! Vehicle state, trips and the device registry: what the processor derives
//! per device and keeps across restarts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fences::DeviceFences;

/// Whether a vehicle is moving, with hysteresis (see the processor's
/// `MotionSettings`): it takes sustained displacement to start moving and a
/// sustained stay within the stop radius to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    /// Not enough fixes yet to tell.
    #[default]
    Unknown,
    /// Displaced beyond the stop radius and not yet settled.
    Moving,
    /// Within the stop radius of its anchor for at least the stop time.
    Stopped,
}

impl Motion {
    /// The stable code, e.g. `moving`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Moving => "moving",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Motion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One fix as the state machine remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Fix {
    /// Device time, Unix epoch milliseconds.
    pub ts_ms: i64,
    /// WGS84 latitude.
    pub lat: f64,
    /// WGS84 longitude.
    pub lon: f64,
}

/// A trip: from leaving one stop to arriving at the next.
///
/// A trip is identified by its device and `start_ts_ms`. While it is open
/// (`end_ts_ms` is `None`) it grows with every batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// Device time the vehicle left its stop (the last fix at the stop).
    pub start_ts_ms: i64,
    /// Where it started (lat, lon).
    pub start: (f64, f64),
    /// Device time it arrived (the first fix of the next stop); `None`
    /// while open.
    pub end_ts_ms: Option<i64>,
    /// Where it ended; `None` while open.
    pub end: Option<(f64, f64)>,
    /// Device time of the newest fix counted into the trip.
    pub last_ts_ms: i64,
    /// Newest fix counted (lat, lon).
    pub last: (f64, f64),
    /// Distance driven, metres (geodesic, filtered points excluded).
    pub distance_m: f64,
    /// Highest speed seen, m/s (reported, or derived between fixes).
    pub max_speed_mps: f64,
    /// Fixes counted into the trip.
    pub points: u32,
}

impl Trip {
    /// A new open trip starting at `fix`.
    pub fn start_at(fix: Fix) -> Self {
        Self {
            start_ts_ms: fix.ts_ms,
            start: (fix.lat, fix.lon),
            end_ts_ms: None,
            end: None,
            last_ts_ms: fix.ts_ms,
            last: (fix.lat, fix.lon),
            distance_m: 0.0,
            max_speed_mps: 0.0,
            points: 1,
        }
    }

    /// Duration in seconds, to the end or (open) to the newest fix.
    pub fn duration_s(&self) -> f64 {
        (self.end_ts_ms.unwrap_or(self.last_ts_ms) - self.start_ts_ms).max(0) as f64 / 1000.0
    }

    /// Average speed over the trip, m/s (0 for a zero-length duration).
    pub fn avg_speed_mps(&self) -> f64 {
        let d = self.duration_s();
        if d > 0.0 { self.distance_m / d } else { 0.0 }
    }

    /// Whether the trip has ended.
    pub fn is_closed(&self) -> bool {
        self.end_ts_ms.is_some()
    }
}

/// A trip of one device, as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTrip {
    /// Whose trip.
    pub device_id: crate::DeviceId,
    /// The trip.
    pub trip: Trip,
}

/// The stop the state machine is measuring against: the first fix of a run
/// of fixes that all stayed within the stop radius of it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Anchor {
    /// The anchoring fix.
    pub fix: Fix,
    /// Device time of the newest fix still within the radius.
    pub last_ts_ms: i64,
    /// Path length driven since the anchor (removed from the odometer if
    /// the run turns out to be a stop: it was jitter).
    pub run_m: f64,
    /// Fixes in the run, the anchor included.
    pub points: u32,
    /// Mean position of the run's fixes (lat, lon) up to the moment it
    /// became a stop: where a stopped vehicle is taken to stand. `None` in
    /// states stored before it was kept (the anchoring fix stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<(f64, f64)>,
    /// Position of the newest fix within the radius (lat, lon): where a
    /// trip leaving this stop starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<(f64, f64)>,
}

/// An overspeed episode in progress.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Overspeed {
    /// Device time the speed first exceeded the limit.
    pub since_ms: i64,
    /// Highest speed of the episode, m/s.
    pub max_speed_mps: f64,
    /// Whether the episode's alert has fired (once per episode).
    pub alerted: bool,
    /// Device time of the newest fix at or below the limit, while the
    /// episode waits to end (`None` while still above).
    pub below_since_ms: Option<i64>,
}

/// A run of fixes rejected as teleports that agree with each other: once
/// long enough, the device really is there (the earlier fix was wrong, or
/// it was moved), and the state re-anchors.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Suspect {
    /// The newest fix of the run.
    pub fix: Fix,
    /// How many fixes agree.
    pub count: u32,
}

/// Everything the processor remembers about one device between batches and
/// across restarts (the store keeps it per device).
///
/// Public facts (motion, odometer, trip) are served by
/// `GET /v1/vehicles/{id}`; the rest is the state machines' memory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VehicleState {
    /// Device time of the newest fix applied to this state.
    pub ts_ms: i64,
    /// Moving or stopped.
    pub motion: Motion,
    /// Device time the current motion state began.
    pub motion_since_ms: i64,
    /// Metres driven since the device was first seen (stationary jitter,
    /// teleports and poor fixes excluded).
    pub odometer_m: f64,
    /// The open trip, if the vehicle is on one. Boxed: 112 bytes that every
    /// parked device would otherwise carry empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<Box<Trip>>,
    /// The newest accepted fix (the reference of the teleport filter and of
    /// derived speed/heading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fix: Option<Fix>,
    /// Stop anchor (see [`Anchor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// While stopped: consecutive fixes seen outside the stop radius.
    #[serde(default)]
    pub departing: u32,
    /// While stopped: path from the anchor through the departing fixes.
    #[serde(default)]
    pub departing_m: f64,
    /// Overspeed episode in progress. Boxed, like `suspect`: every device
    /// keeps a state, few are in either episode, and inline each would
    /// cost every device 32 bytes more (a million devices: 64 MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overspeed: Option<Box<Overspeed>>,
    /// Teleport run being confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<Box<Suspect>>,
    /// Server time the newest fix was received (for closing the trips of
    /// devices that went silent).
    #[serde(default)]
    pub last_seen_ms: i64,
    /// The geofences the device is inside now.
    #[serde(default, skip_serializing_if = "DeviceFences::is_empty")]
    pub fences: DeviceFences,
}

/// A device's entry in the registry (`PUT /v1/devices/{id}`): who it is and
/// the limits that apply to it. Joined into vehicle state and alerts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Vehicle class (e.g. `truck`); class limits come from configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Speed limit, km/h; overrides the class's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_limit_kmh: Option<f64>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Server time of the last change, Unix epoch milliseconds.
    #[serde(default)]
    pub updated_ms: i64,
}
