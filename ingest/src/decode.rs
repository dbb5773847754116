//! Payload decoders: protobuf and JSON `fleet.v1` positions, OwnTracks JSON.
//!
//! Decoding and validation never fail loudly: every problem becomes a
//! [`Reject`] with a reason code, and the caller counts it. MQTT messages are
//! decoded by topic ([`Decoder::decode`]); payloads that come without a topic
//! (HTTP ingest) with the request's [`HttpIdentity`] ([`Decoder::decode_http`]), through
//! the same formats, limits and reasons.

use fleetd_schemas::proto;
use fleetd_schemas::{DeviceId, PositionReport, RejectReason};
use prost::Message;
use serde::Deserialize;

use crate::topic::TopicRoute;
use crate::validate::{Limits, RawPosition};

/// One rejected input with its reason and a human-readable explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The reason code.
    pub reason: RejectReason,
    /// What exactly was wrong, for `GET /v1/rejections`.
    pub detail: String,
    /// The device, when the payload itself named it (fleetd JSON positions
    /// carry their `device_id`); otherwise the caller knows it from the
    /// topic or the request.
    pub device: Option<DeviceId>,
    /// The rejected position's place (from 0) in a payload that is an array
    /// of positions; `None` when the whole payload was rejected.
    pub index: Option<usize>,
}

impl Reject {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            device: None,
            index: None,
        }
    }
}

/// What an HTTP request says about who sent its body, as the transport read
/// it; [`Decoder::decode_http`] decides from it and the body what the body
/// is, so the transport never parses device payloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpIdentity {
    /// OwnTracks' user: `X-Limit-U`, or `?u=` as the OwnTracks Recorder takes it.
    pub owntracks_user: Option<String>,
    /// OwnTracks' device: `X-Limit-D`, or `?d=`.
    pub owntracks_device: Option<String>,
    /// The user name the request logged in with (HTTP basic), which an
    /// OwnTracks app sends as its user.
    pub login: Option<String>,
}

impl HttpIdentity {
    /// Whether the request names an OwnTracks user or device, which makes
    /// its body an OwnTracks message whatever it holds.
    fn names_owntracks(&self) -> bool {
        self.owntracks_user.is_some() || self.owntracks_device.is_some()
    }
}

/// Which format an HTTP body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFormat {
    /// An OwnTracks message (a JSON object with `_type`, or any body sent
    /// with OwnTracks' identity).
    OwnTracks,
    /// fleetd JSON: one position object or an array of them, each naming
    /// its device in `device_id` (required, since there is no topic).
    FleetJson,
}

/// What [`Decoder::decode_http`] found besides positions and rejections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpDecoded {
    /// The body's format, which decides the shape of the answer.
    pub format: HttpFormat,
    /// The OwnTracks device `user/device`, when there was one.
    pub device: Option<DeviceId>,
    /// Decoded, or not input at all.
    pub outcome: Outcome,
}

/// Why an OwnTracks message could not be given a device id.
const NO_OWNTRACKS_ID: &str = "OwnTracks HTTP mode needs a user and a device: set Username and \
     Device ID in the app (it sends them as X-Limit-U and X-Limit-D), or add ?u=USER&d=DEVICE \
     to the URL";

/// What decoding one message produced besides accepted positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Positions (possibly none, if all were rejected) were decoded.
    Decoded,
    /// The message is not input (e.g. an OwnTracks `_type` other than
    /// `location`); the label says which kind, for `fleetd_ignored_total`.
    Ignored(&'static str),
}

/// Turns MQTT messages into validated [`PositionReport`]s.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one message on a routed topic. Accepted positions are appended
    /// to `accepted`, rejections to `rejects`; both are caller-owned buffers
    /// so the hot path does not allocate per message.
    pub fn decode(
        &self,
        route: &TopicRoute,
        payload: &[u8],
        received_ms: i64,
        accepted: &mut Vec<PositionReport>,
        rejects: &mut Vec<Reject>,
    ) -> Outcome {
        if let Err(reject) = self.check_size(payload.len()) {
            rejects.push(reject);
            return Outcome::Decoded;
        }
        let mut push = |device: &DeviceId, raw: Result<RawPosition, Reject>| match raw
            .and_then(|raw| self.limits.validate(device, raw, received_ms))
        {
            Ok(report) => accepted.push(report),
            Err(reject) => rejects.push(reject),
        };
        match route {
            TopicRoute::Position(device) => push(device, decode_position(payload)),
            TopicRoute::PositionBatch(device) => match decode_batch(payload) {
                Ok(batch) if batch.len() > self.limits.max_batch_positions => {
                    rejects.push(Reject::new(
                        RejectReason::BatchTooLarge,
                        format!(
                            "batch holds {} positions, the limit is {}",
                            batch.len(),
                            self.limits.max_batch_positions
                        ),
                    ));
                }
                Ok(batch) => {
                    for raw in batch {
                        push(device, Ok(raw));
                    }
                }
                Err(reject) => rejects.push(reject),
            },
            TopicRoute::OwnTracks(device) => {
                return self.owntracks(device, payload, received_ms, accepted, rejects);
            }
            TopicRoute::Ignored => return Outcome::Ignored("output_topic"),
            TopicRoute::BadDeviceId(e) => {
                rejects.push(Reject::new(RejectReason::BadDeviceId, e.to_string()));
            }
            TopicRoute::Unknown => {
                rejects.push(Reject::new(
                    RejectReason::UnknownTopic,
                    "expected fleet/{device_id}/pos, fleet/{device_id}/pos/batch or owntracks/{user}/{device}",
                ));
            }
        }
        Outcome::Decoded
    }

    /// Decodes one HTTP body, which came without a topic, with the same
    /// formats, limits and reasons as [`Decoder::decode`], parsing it once.
    /// A JSON object with `_type`, or any body sent with an OwnTracks user
    /// or device, is an OwnTracks message of `user/device` (user from the
    /// identity, else the login; device from the identity, else the
    /// message's `tid`); anything else is fleetd JSON. Buffers as there.
    pub fn decode_http(
        &self,
        identity: &HttpIdentity,
        payload: &[u8],
        received_ms: i64,
        accepted: &mut Vec<PositionReport>,
        rejects: &mut Vec<Reject>,
    ) -> HttpDecoded {
        let mut decoded = HttpDecoded {
            format: if identity.names_owntracks() {
                HttpFormat::OwnTracks
            } else {
                HttpFormat::FleetJson
            },
            device: None,
            outcome: Outcome::Decoded,
        };
        if let Err(reject) = self.check_size(payload.len()) {
            rejects.push(reject);
            return decoded;
        }
        let first = payload.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            let object = match serde_json::from_slice::<HttpObject>(payload) {
                Ok(object) => object,
                Err(e) => {
                    let what = match decoded.format {
                        HttpFormat::OwnTracks => "OwnTracks JSON",
                        HttpFormat::FleetJson => "JSON position",
                    };
                    rejects.push(Reject::new(
                        RejectReason::Malformed,
                        format!("invalid {what}: {e}"),
                    ));
                    return decoded;
                }
            };
            if object.kind.is_some() || identity.names_owntracks() {
                decoded.format = HttpFormat::OwnTracks;
                let Some(device) = owntracks_device(identity, object.tid.as_deref(), rejects)
                else {
                    return decoded;
                };
                decoded.outcome = self.owntracks_message(
                    &device,
                    object.owntracks(),
                    received_ms,
                    accepted,
                    rejects,
                );
                decoded.device = Some(device);
            } else {
                self.json_positions(
                    vec![object.device_position()],
                    false,
                    received_ms,
                    accepted,
                    rejects,
                );
            }
            return decoded;
        }
        match decoded.format {
            HttpFormat::OwnTracks => {
                let Some(device) = owntracks_device(identity, None, rejects) else {
                    return decoded;
                };
                decoded.outcome = self.owntracks(&device, payload, received_ms, accepted, rejects);
                decoded.device = Some(device);
            }
            HttpFormat::FleetJson => match decode_device_positions(payload) {
                Ok((positions, is_array)) => {
                    self.json_positions(positions, is_array, received_ms, accepted, rejects)
                }
                Err(reject) => rejects.push(reject),
            },
        }
        decoded
    }

    /// `oversize` when a payload of `len` bytes is over the limit.
    pub fn check_size(&self, len: usize) -> Result<(), Reject> {
        if len > self.limits.max_payload_bytes {
            return Err(Reject::new(
                RejectReason::Oversize,
                format!(
                    "payload is {len} bytes, the limit is {}",
                    self.limits.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }

    fn owntracks(
        &self,
        device: &DeviceId,
        payload: &[u8],
        received_ms: i64,
        accepted: &mut Vec<PositionReport>,
        rejects: &mut Vec<Reject>,
    ) -> Outcome {
        // A zero-length message clears a retained one in MQTT mode, and the
        // apps POST it as such in HTTP mode (a deleted friend): not input.
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Outcome::Ignored("owntracks_empty");
        }
        match serde_json::from_slice::<OwnTracksMessage>(payload) {
            Ok(msg) => self.owntracks_message(device, msg, received_ms, accepted, rejects),
            Err(e) => {
                rejects.push(Reject::new(
                    RejectReason::Malformed,
                    format!("invalid OwnTracks JSON: {e}"),
                ));
                Outcome::Decoded
            }
        }
    }

    fn owntracks_message(
        &self,
        device: &DeviceId,
        msg: OwnTracksMessage,
        received_ms: i64,
        accepted: &mut Vec<PositionReport>,
        rejects: &mut Vec<Reject>,
    ) -> Outcome {
        match owntracks_position(msg) {
            Ok(Some(raw)) => match self.limits.validate(device, raw, received_ms) {
                Ok(report) => accepted.push(report),
                Err(reject) => rejects.push(reject),
            },
            Ok(None) => return Outcome::Ignored("owntracks_non_location"),
            Err(reject) => rejects.push(reject),
        }
        Outcome::Decoded
    }

    /// fleetd JSON positions that name their device: one object or the
    /// elements of an array (`is_array`: rejections then carry the index).
    fn json_positions(
        &self,
        positions: Vec<DevicePosition>,
        is_array: bool,
        received_ms: i64,
        accepted: &mut Vec<PositionReport>,
        rejects: &mut Vec<Reject>,
    ) {
        if positions.len() > self.limits.max_batch_positions {
            rejects.push(Reject::new(
                RejectReason::BatchTooLarge,
                format!(
                    "batch holds {} positions, the limit is {}",
                    positions.len(),
                    self.limits.max_batch_positions
                ),
            ));
            return;
        }
        for (i, position) in positions.into_iter().enumerate() {
            let index = is_array.then_some(i);
            let device = match position.device_id.as_deref().map(DeviceId::parse) {
                Some(Ok(device)) => device,
                Some(Err(e)) => {
                    rejects.push(Reject {
                        index,
                        ..Reject::new(RejectReason::BadDeviceId, format!("device_id: {e}"))
                    });
                    continue;
                }
                None => {
                    rejects.push(Reject {
                        index,
                        ..Reject::new(
                            RejectReason::BadDeviceId,
                            "missing device_id (required when the payload has no topic)",
                        )
                    });
                    continue;
                }
            };
            match self
                .limits
                .validate(&device, position.position.into(), received_ms)
            {
                Ok(report) => accepted.push(report),
                Err(reject) => rejects.push(Reject {
                    device: Some(device),
                    index,
                    ..reject
                }),
            }
        }
    }
}

/// A payload whose first non-blank byte is `{` or `[` is JSON; anything else
/// is protobuf.
fn is_json(payload: &[u8]) -> bool {
    matches!(
        payload.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

fn decode_position(payload: &[u8]) -> Result<RawPosition, Reject> {
    if is_json(payload) {
        serde_json::from_slice::<JsonPosition>(payload)
            .map(RawPosition::from)
            .map_err(|e| {
                Reject::new(
                    RejectReason::Malformed,
                    format!("invalid JSON position: {e}"),
                )
            })
    } else {
        proto::Position::decode(payload)
            .map(RawPosition::from)
            .map_err(|e| {
                Reject::new(
                    RejectReason::Malformed,
                    format!("invalid protobuf Position: {e}"),
                )
            })
    }
}

fn decode_batch(payload: &[u8]) -> Result<Vec<RawPosition>, Reject> {
    if is_json(payload) {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum JsonBatch {
            Array(Vec<JsonPosition>),
            Object { positions: Vec<JsonPosition> },
        }
        let batch = serde_json::from_slice::<JsonBatch>(payload).map_err(|e| {
            Reject::new(
                RejectReason::Malformed,
                format!("invalid JSON batch (expected an array of positions or {{\"positions\": [...]}}): {e}"),
            )
        })?;
        let positions = match batch {
            JsonBatch::Array(p) | JsonBatch::Object { positions: p } => p,
        };
        Ok(positions.into_iter().map(RawPosition::from).collect())
    } else {
        proto::PositionBatch::decode(payload)
            .map(|b| b.positions.into_iter().map(RawPosition::from).collect())
            .map_err(|e| {
                Reject::new(
                    RejectReason::Malformed,
                    format!("invalid protobuf PositionBatch: {e}"),
                )
            })
    }
}

/// Decodes fleetd JSON positions with their `device_id`: one object, or an
/// array (the flag says which, so rejections of an array's elements carry
/// their index).
fn decode_device_positions(payload: &[u8]) -> Result<(Vec<DevicePosition>, bool), Reject> {
    let malformed = |e: serde_json::Error| {
        Reject::new(
            RejectReason::Malformed,
            format!("invalid JSON position: {e}"),
        )
    };
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice::<Vec<DevicePosition>>(payload)
            .map(|p| (p, true))
            .map_err(malformed),
        Some(b'{') => serde_json::from_slice::<DevicePosition>(payload)
            .map(|p| (vec![p], false))
            .map_err(malformed),
        Some(_) => Err(Reject::new(
            RejectReason::Malformed,
            "expected a JSON position object or an array of them",
        )),
        None => Err(Reject::new(RejectReason::Malformed, "payload is empty")),
    }
}

/// The device `user/device` of an OwnTracks message posted over HTTP, or a
/// `bad_device_id` rejection saying what is missing.
fn owntracks_device(
    identity: &HttpIdentity,
    tid: Option<&str>,
    rejects: &mut Vec<Reject>,
) -> Option<DeviceId> {
    fn non_empty(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let user = non_empty(&identity.owntracks_user).or(non_empty(&identity.login));
    let device = non_empty(&identity.owntracks_device).or(tid.filter(|t| !t.is_empty()));
    let (Some(user), Some(device)) = (user, device) else {
        rejects.push(Reject::new(RejectReason::BadDeviceId, NO_OWNTRACKS_ID));
        return None;
    };
    let id = format!("{user}/{device}");
    match DeviceId::parse(&id) {
        Ok(id) => Some(id),
        Err(e) => {
            rejects.push(Reject::new(
                RejectReason::BadDeviceId,
                format!("OwnTracks device id {id:?} (user/device): {e}"),
            ));
            None
        }
    }
}

/// An OwnTracks message's position: `Ok(None)` for `_type`s other than
/// `location` (they are not errors).
fn owntracks_position(msg: OwnTracksMessage) -> Result<Option<RawPosition>, Reject> {
    match msg.kind.as_deref() {
        Some("location") => Ok(Some(RawPosition {
            ts_ms: msg.tst.map(|s| s.saturating_mul(1000)),
            lat: msg.lat,
            lon: msg.lon,
            accuracy_m: msg.acc,
            altitude_m: msg.alt,
            // OwnTracks reports velocity in km/h.
            speed_mps: msg.vel.map(|kmh| kmh / 3.6),
            heading_deg: msg.cog,
            battery_pct: msg.batt,
            seq: None,
        })),
        Some(_) => Ok(None),
        None => Err(Reject::new(
            RejectReason::Malformed,
            "OwnTracks message without \"_type\"",
        )),
    }
}

/// JSON form of `fleet.v1.Position` (same field names as the protobuf).
#[derive(Debug, Deserialize)]
struct JsonPosition {
    ts_ms: Option<i64>,
    lat: Option<f64>,
    lon: Option<f64>,
    accuracy_m: Option<f64>,
    altitude_m: Option<f64>,
    speed_mps: Option<f64>,
    heading_deg: Option<f64>,
    battery_pct: Option<f64>,
    seq: Option<u64>,
}

/// A [`JsonPosition`] that names its device, for payloads without a topic.
#[derive(Debug, Deserialize)]
struct DevicePosition {
    device_id: Option<String>,
    #[serde(flatten)]
    position: JsonPosition,
}

impl From<JsonPosition> for RawPosition {
    fn from(p: JsonPosition) -> Self {
        Self {
            ts_ms: p.ts_ms,
            lat: p.lat,
            lon: p.lon,
            accuracy_m: p.accuracy_m,
            altitude_m: p.altitude_m,
            speed_mps: p.speed_mps,
            heading_deg: p.heading_deg,
            battery_pct: p.battery_pct,
            seq: p.seq,
        }
    }
}

impl From<proto::Position> for RawPosition {
    fn from(p: proto::Position) -> Self {
        // proto3 cannot tell an absent scalar from zero: ts_ms 0 and the
        // (0, 0) "no fix" position are treated as missing by validation.
        Self {
            ts_ms: Some(p.ts_ms),
            lat: Some(p.lat),
            lon: Some(p.lon),
            accuracy_m: p.accuracy_m.map(f64::from),
            altitude_m: p.altitude_m.map(f64::from),
            speed_mps: p.speed_mps.map(f64::from),
            heading_deg: p.heading_deg.map(f64::from),
            battery_pct: p.battery_pct.map(f64::from),
            seq: p.seq,
        }
    }
}

/// A JSON object posted over HTTP: the fields of both formats it may be,
/// read in one pass; [`Decoder::decode_http`] then takes one view of it.
#[derive(Debug, Deserialize)]
struct HttpObject {
    #[serde(rename = "_type")]
    kind: Option<String>,
    /// The OwnTracks app's two-character tracker id: the device of last resort.
    tid: Option<String>,
    device_id: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    // fleetd JSON
    ts_ms: Option<i64>,
    accuracy_m: Option<f64>,
    altitude_m: Option<f64>,
    speed_mps: Option<f64>,
    heading_deg: Option<f64>,
    battery_pct: Option<f64>,
    seq: Option<u64>,
    // OwnTracks
    tst: Option<i64>,
    acc: Option<f64>,
    alt: Option<f64>,
    vel: Option<f64>,
    cog: Option<f64>,
    batt: Option<f64>,
}

impl HttpObject {
    fn owntracks(self) -> OwnTracksMessage {
        OwnTracksMessage {
            kind: self.kind,
            tst: self.tst,
            lat: self.lat,
            lon: self.lon,
            acc: self.acc,
            alt: self.alt,
            vel: self.vel,
            cog: self.cog,
            batt: self.batt,
        }
    }

    fn device_position(self) -> DevicePosition {
        DevicePosition {
            device_id: self.device_id,
            position: JsonPosition {
                ts_ms: self.ts_ms,
                lat: self.lat,
                lon: self.lon,
                accuracy_m: self.accuracy_m,
                altitude_m: self.altitude_m,
                speed_mps: self.speed_mps,
                heading_deg: self.heading_deg,
                battery_pct: self.battery_pct,
                seq: self.seq,
            },
        }
    }
}

/// The OwnTracks fields fleetd uses; others are ignored.
#[derive(Debug, Deserialize)]
struct OwnTracksMessage {
    #[serde(rename = "_type")]
    kind: Option<String>,
    tst: Option<i64>,
    lat: Option<f64>,
    lon: Option<f64>,
    acc: Option<f64>,
    alt: Option<f64>,
    vel: Option<f64>,
    cog: Option<f64>,
    batt: Option<f64>,
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
