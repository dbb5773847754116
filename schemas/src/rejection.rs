//! Reasons for dropping input, and the shared log of recent rejections.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Why an input was dropped. The string form ([`RejectReason::code`]) is the
/// `reason` label of `fleetd_rejected_total` and is part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The payload is not valid protobuf/JSON, or a required field is missing.
    Malformed,
    /// Latitude/longitude missing, not finite or out of range; or another
    /// numeric field is not finite.
    BadCoordinates,
    /// An optional numeric field (speed, heading, accuracy, ...) is not
    /// finite or out of its range.
    BadField,
    /// The device id (topic or payload) is not a valid id.
    BadDeviceId,
    /// The device timestamp is too far in the future.
    FutureTimestamp,
    /// The device timestamp is too far in the past (or before 2000-01-01).
    StaleTimestamp,
    /// The payload is larger than the configured limit.
    Oversize,
    /// The topic is not one fleetd consumes.
    UnknownTopic,
    /// A batch holds more positions than the configured limit.
    BatchTooLarge,
    /// Processor filter: the same device and `ts_ms` was already seen.
    /// Dropped.
    Duplicate,
    /// Processor filter: the fix's accuracy radius is worse than the
    /// configured bound. Stored in history, flagged; not used for state.
    PoorAccuracy,
    /// Processor filter: reaching the fix from the previous one would take
    /// an implausible speed. Stored in history, flagged; not used for state.
    Teleport,
    /// Processor filter: a stopped vehicle's fix moved within its stop
    /// radius (GPS noise, not movement). Stored, flagged; adds no distance.
    StationaryJitter,
    /// Processor filter: the fix arrived after its device's reorder
    /// allowance had passed it. Stored in history, flagged; not used for
    /// state (odometer, trips, alerts).
    TooLate,
    /// The identity that sent it may not publish there (MQTT topic ACL) or
    /// post for that device (HTTP ingest). Dropped, never acknowledged as
    /// stored.
    NotAuthorized,
    /// The device sent faster than its message rate limit allows. Dropped.
    RateLimited,
}

impl RejectReason {
    /// Every reason, for pre-registering metrics so that dashboards see zeros.
    pub const ALL: [RejectReason; 16] = [
        Self::Malformed,
        Self::BadCoordinates,
        Self::BadField,
        Self::BadDeviceId,
        Self::FutureTimestamp,
        Self::StaleTimestamp,
        Self::Oversize,
        Self::UnknownTopic,
        Self::BatchTooLarge,
        Self::Duplicate,
        Self::PoorAccuracy,
        Self::Teleport,
        Self::StationaryJitter,
        Self::TooLate,
        Self::NotAuthorized,
        Self::RateLimited,
    ];

    /// The stable reason code, e.g. `bad_coordinates`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadCoordinates => "bad_coordinates",
            Self::BadField => "bad_field",
            Self::BadDeviceId => "bad_device_id",
            Self::FutureTimestamp => "future_timestamp",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Oversize => "oversize",
            Self::UnknownTopic => "unknown_topic",
            Self::BatchTooLarge => "batch_too_large",
            Self::Duplicate => "duplicate",
            Self::PoorAccuracy => "poor_accuracy",
            Self::Teleport => "teleport",
            Self::StationaryJitter => "stationary_jitter",
            Self::TooLate => "too_late",
            Self::NotAuthorized => "not_authorized",
            Self::RateLimited => "rate_limited",
        }
    }

    /// Parses a code as written by [`RejectReason::code`].
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the processor's data-quality filters raise this reason
    /// (counted in `fleetd_filtered_total`) rather than ingest validation
    /// (`fleetd_rejected_total`).
    pub fn is_filter(self) -> bool {
        matches!(
            self,
            Self::Duplicate
                | Self::PoorAccuracy
                | Self::Teleport
                | Self::StationaryJitter
                | Self::TooLate
        )
    }

    /// The counter this reason is counted in.
    pub fn metric(self) -> &'static str {
        if self.is_filter() {
            "fleetd_filtered_total"
        } else {
            "fleetd_rejected_total"
        }
    }
}

/// One rejected input, as sampled for `GET /v1/rejections`.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Server time of the rejection, Unix epoch milliseconds.
    pub at_ms: i64,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// Where it came from: the MQTT topic, or `http` for HTTP ingest.
    pub source: String,
    /// The device id, when it could be told.
    pub device_id: Option<String>,
    /// A human-readable explanation.
    pub detail: String,
    /// Payload size in bytes.
    pub payload_len: usize,
    /// The start of the payload, escaped for display.
    pub payload_head: String,
}

/// Counts rejections by reason (`fleetd_rejected_total{reason}`, and
/// `fleetd_filtered_total{reason}` for the processor's filters) and keeps
/// the most recent ones for `GET /v1/rejections`.
///
/// Shared by ingest and the processor (writers) and the API (reader). Memory is bounded by
/// `capacity` samples of bounded size; the lock is never held across `.await`.
#[derive(Debug)]
pub struct RejectionLog {
    capacity: usize,
    recent: Mutex<VecDeque<Rejection>>,
}

/// How many payload bytes a sample keeps.
const PAYLOAD_HEAD_BYTES: usize = 64;

impl RejectionLog {
    /// A log keeping the last `capacity` rejections.
    pub fn new(capacity: usize) -> Self {
        for reason in RejectReason::ALL {
            metrics::counter!(reason.metric(), "reason" => reason.code()).absolute(0);
        }
        Self {
            capacity,
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    /// Counts one rejection and keeps it as a recent sample.
    pub fn record(
        &self,
        reason: RejectReason,
        source: &str,
        device_id: Option<&str>,
        detail: String,
        payload: &[u8],
        at_ms: i64,
    ) {
        metrics::counter!(reason.metric(), "reason" => reason.code()).increment(1);
        if self.capacity == 0 {
            return;
        }
        let head = &payload[..payload.len().min(PAYLOAD_HEAD_BYTES)];
        self.keep([Rejection {
            at_ms,
            reason,
            source: truncate(source, 256),
            device_id: device_id.map(|d| truncate(d, 256)),
            detail,
            payload_len: payload.len(),
            payload_head: head.escape_ascii().to_string(),
        }]);
    }

    /// Keeps samples without counting them: for callers that count in bulk
    /// (the processor counts every filtered fix but samples a few per batch,
    /// so one lock is taken per batch, not per fix).
    pub fn keep(&self, samples: impl IntoIterator<Item = Rejection>) {
        if self.capacity == 0 {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for rejection in samples {
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            recent.push_back(rejection);
        }
    }

    /// The most recent rejections, newest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Rejection> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_newest_within_capacity() {
        let log = RejectionLog::new(3);
        for i in 0..5 {
            log.record(RejectReason::Malformed, "t", None, format!("{i}"), b"x", i);
        }
        let recent = log.recent(10);
        let details: Vec<_> = recent.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(details, ["4", "3", "2"]);
        assert_eq!(log.recent(1).len(), 1);
    }

    #[test]
    fn payload_head_is_escaped_and_bounded() {
        let log = RejectionLog::new(1);
        log.record(
            RejectReason::Oversize,
            "t",
            None,
            String::new(),
            &[0xff; 1000],
            0,
        );
        let r = &log.recent(1)[0];
        assert_eq!(r.payload_len, 1000);
        assert_eq!(r.payload_head, "\\xff".repeat(64));
    }
}
