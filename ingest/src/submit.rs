//! Ingest for request/response transports (the HTTP API's
//! `POST /v1/positions`): one payload in, an answer out, through the same
//! decoder, limits and rejection log as MQTT, into the same bounded queue.

use std::sync::{Arc, Mutex};

use fleetd_schemas::{DeviceId, PositionReport, RejectReason, RejectionLog, now_ms};
use tokio::sync::mpsc;

use crate::decode::{Decoder, HttpFormat, HttpIdentity, Outcome, Reject};
use crate::pipeline::{MAX_CHUNK, count_outcome, count_received, record_reject};
use crate::validate::Limits;

/// Decodes payloads that arrive without a topic and queues their positions
/// for the processor. Cheap to clone; every clone shares one queue sender.
///
/// Backpressure policy: a caller is answered at once, never parked. When
/// the queue has no room for all of a payload's positions, none is queued
/// and [`SubmitError::QueueFull`] tells the caller to come back later (the
/// HTTP API answers 503 with `Retry-After`), because a request handler that
/// waited would hold its connection and memory for as long as the processor
/// is behind. MQTT ingest, which can leave unread publishes in the broker,
/// waits instead.
#[derive(Clone)]
pub struct Submitter {
    decoder: Decoder,
    rejections: Arc<RejectionLog>,
    /// The processor queue. Taken out by [`Submitter::close`]: the processor
    /// flushes and stops only once every sender is gone, so shutdown must be
    /// able to drop this one while the API still answers.
    queue: Arc<Mutex<Option<mpsc::Sender<Vec<PositionReport>>>>>,
}

/// What became of one payload whose positions (if any) were queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// What the payload was, which decides the shape of the answer.
    pub format: HttpFormat,
    /// Positions queued for the processor.
    pub accepted: usize,
    /// Rejections, in payload order; already counted and sampled.
    pub rejects: Vec<Reject>,
    /// Set when the payload was not input (e.g. an OwnTracks `_type` other
    /// than `location`), with the `fleetd_ignored_total` kind.
    pub ignored: Option<&'static str>,
}

/// Who submits a payload, as the transport verified it: whose positions
/// it may submit, and the name rejections are sampled under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Which devices' positions it may submit.
    pub owns: Owns,
    /// How it is named in a `not_authorized` rejection's detail (e.g.
    /// `device truck-1`, `user alice`). Never a secret.
    pub label: String,
}

impl Caller {
    /// A caller that may submit any device's positions (a trusted gateway,
    /// or no authentication at all).
    pub fn anyone(label: impl Into<String>) -> Self {
        Self {
            owns: Owns::Any,
            label: label.into(),
        }
    }
}

/// Which devices a [`Caller`] owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owns {
    /// Every device.
    Any,
    /// Exactly this device (its own credential).
    Device(DeviceId),
    /// Every OwnTracks device `{user}/…` of this user (the user's
    /// credential, like Mosquitto's `%u` pattern).
    User(String),
}

impl Owns {
    /// Whether positions of `device` are the caller's own.
    pub fn owns(&self, device: &DeviceId) -> bool {
        match self {
            Self::Any => true,
            Self::Device(id) => id == device,
            Self::User(user) => device
                .as_str()
                .strip_prefix(user.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

/// Why a payload's accepted positions were not queued. Nothing of the
/// payload was queued; its rejections were still counted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The processor queue has no room: the processor is behind. Retry later.
    #[error("the processor queue is full")]
    QueueFull,
    /// The queue was closed: fleetd is shutting down.
    #[error("ingest is closed")]
    Closed,
    /// The payload names a device the caller does not own; this one
    /// `not_authorized` rejection (the first foreign device) was counted
    /// and sampled instead of the payload's other rejections.
    #[error("{}", .0.detail)]
    NotAuthorized(Reject),
}

impl Submitter {
    /// A submitter decoding with `decoder`, recording rejections in
    /// `rejections` and queueing into `queue` (the processor's input).
    pub fn new(
        decoder: Decoder,
        rejections: Arc<RejectionLog>,
        queue: mpsc::Sender<Vec<PositionReport>>,
    ) -> Self {
        Self {
            decoder,
            rejections,
            queue: Arc::new(Mutex::new(Some(queue))),
        }
    }

    /// The limits payloads are held to (the body limit is `max_payload_bytes`).
    pub fn limits(&self) -> &Limits {
        self.decoder.limits()
    }

    /// Decodes and validates `payload` (see [`Decoder::decode_http`] for
    /// how `identity` and the body decide its format), counts and samples
    /// its rejections under `source` (as `GET /v1/rejections` shows it), and
    /// queues the accepted positions: all of them or, with an error, none.
    ///
    /// Anyone may submit any device's positions here; see
    /// [`Submitter::submit_as`] for a verified caller.
    pub fn submit(
        &self,
        identity: &HttpIdentity,
        source: &str,
        payload: &[u8],
    ) -> Result<Submitted, SubmitError> {
        self.submit_as(identity, &Caller::anyone("anonymous"), source, payload)
    }

    /// Like [`Submitter::submit`], for `caller`: when the payload names any
    /// device `caller` does not own (a decoded or rejected position's
    /// device, or the OwnTracks `user/device` of the request), nothing of
    /// it is queued and [`SubmitError::NotAuthorized`] says which device.
    /// The check runs on the decoded payload, so the body is parsed once.
    pub fn submit_as(
        &self,
        identity: &HttpIdentity,
        caller: &Caller,
        source: &str,
        payload: &[u8],
    ) -> Result<Submitted, SubmitError> {
        let queue = self.sender()?;
        // Refuse before decoding when there is clearly no room, so that a
        // client retrying against a busy server is not counted twice.
        if queue.capacity() == 0 {
            return Err(SubmitError::QueueFull);
        }
        let received_ms = now_ms();
        let mut positions = Vec::new();
        let mut rejects = Vec::new();
        let decoded =
            self.decoder
                .decode_http(identity, payload, received_ms, &mut positions, &mut rejects);
        if let Some(foreign) = foreign_device(caller, decoded.device.as_ref(), &positions, &rejects)
        {
            let reject = Reject {
                reason: RejectReason::NotAuthorized,
                detail: format!(
                    "{} may not submit positions of device {foreign}",
                    caller.label
                ),
                device: Some(foreign),
                index: None,
            };
            // The payload itself was not looked at further: only this is
            // counted, so a refused sender cannot fill the log with
            // another device's name in many rejections.
            record_reject(
                &self.rejections,
                source,
                None,
                reject.clone(),
                payload,
                received_ms,
            );
            return Err(SubmitError::NotAuthorized(reject));
        }
        count_outcome(decoded.outcome);
        let device = decoded.device.as_ref().map(|d| d.as_str());
        for reject in &rejects {
            record_reject(
                &self.rejections,
                source,
                device,
                reject.clone(),
                payload,
                received_ms,
            );
        }
        let accepted = positions.len();
        if accepted > 0 {
            enqueue(&queue, positions)?;
            count_received(accepted);
        }
        Ok(Submitted {
            format: decoded.format,
            accepted,
            rejects,
            ignored: match decoded.outcome {
                Outcome::Ignored(kind) => Some(kind),
                Outcome::Decoded => None,
            },
        })
    }

    /// Counts and samples a payload refused before it was read whole
    /// because it is over the size limit (`oversize`, as over MQTT), and
    /// returns the rejection. `len` is its declared length, when known.
    pub fn reject_oversize(&self, source: &str, len: Option<u64>) -> Reject {
        let limit = self.limits().max_payload_bytes;
        let reject = match len
            .and_then(|len| usize::try_from(len).ok())
            .map(|len| self.decoder.check_size(len))
        {
            Some(Err(reject)) => reject,
            _ => Reject::new(
                RejectReason::Oversize,
                format!("payload is larger than the limit of {limit} bytes"),
            ),
        };
        record_reject(
            &self.rejections,
            source,
            None,
            reject.clone(),
            &[],
            now_ms(),
        );
        reject
    }

    /// Stops queueing: drops the shared sender, so that the processor sees
    /// its input close once the other ingest has stopped too. Later submits
    /// fail with [`SubmitError::Closed`].
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn sender(&self) -> Result<mpsc::Sender<Vec<PositionReport>>, SubmitError> {
        // A clone, so the lock is never held while queueing.
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SubmitError::Closed)
    }
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter")
            .field("limits", self.limits())
            .finish_non_exhaustive()
    }
}

/// The first device of a decoded payload that `caller` does not own: the
/// request's OwnTracks device, then accepted and rejected positions' own.
fn foreign_device(
    caller: &Caller,
    owntracks: Option<&DeviceId>,
    positions: &[PositionReport],
    rejects: &[Reject],
) -> Option<DeviceId> {
    if caller.owns == Owns::Any {
        return None;
    }
    owntracks
        .into_iter()
        .chain(positions.iter().map(|p| &p.device_id))
        .chain(rejects.iter().filter_map(|r| r.device.as_ref()))
        .find(|device| !caller.owns.owns(device))
        .cloned()
}

/// Queues `positions` in chunks of at most [`MAX_CHUNK`] (the queue's
/// memory bound assumes that size), reserving room for all chunks first.
fn enqueue(
    queue: &mpsc::Sender<Vec<PositionReport>>,
    mut positions: Vec<PositionReport>,
) -> Result<(), SubmitError> {
    let mut chunk_len = MAX_CHUNK;
    let mut n_chunks = positions.len().div_ceil(chunk_len);
    // A queue configured smaller than one payload's chunks could never take
    // it; one larger chunk then beats refusing it forever.
    if n_chunks > queue.max_capacity() {
        (chunk_len, n_chunks) = (positions.len(), 1);
    }
    let permits = queue.try_reserve_many(n_chunks).map_err(|e| match e {
        mpsc::error::TrySendError::Full(()) => SubmitError::QueueFull,
        mpsc::error::TrySendError::Closed(()) => SubmitError::Closed,
    })?;
    for permit in permits {
        let rest = positions.split_off(positions.len().min(chunk_len));
        permit.send(std::mem::replace(&mut positions, rest));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submitter(capacity: usize) -> (Submitter, mpsc::Receiver<Vec<PositionReport>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let log = Arc::new(RejectionLog::new(16));
        (Submitter::new(Decoder::new(Limits::default()), log, tx), rx)
    }

    fn positions_json(device: &str, n: usize) -> String {
        let now = now_ms();
        let items: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"device_id": "{device}", "ts_ms": {}, "lat": 52.5, "lon": 13.4}}"#,
                    now - 10_000 + i as i64
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    #[tokio::test]
    async fn queues_accepted_positions_in_bounded_chunks() {
        let (submitter, mut rx) = submitter(4);
        let payload = positions_json("van-1", MAX_CHUNK + 3);
        let submitted = submitter
            .submit(&HttpIdentity::default(), "http", payload.as_bytes())
            .expect("queued");
        assert_eq!(submitted.accepted, MAX_CHUNK + 3);
        assert!(submitted.rejects.is_empty());
        let first = rx.recv().await.expect("chunk");
        let second = rx.recv().await.expect("chunk");
        assert_eq!((first.len(), second.len()), (MAX_CHUNK, 3));
        assert_eq!(first[0].device_id.as_str(), "van-1");
        assert!(first[0].ts_ms < second[0].ts_ms, "order is kept");
    }

    #[tokio::test]
    async fn full_queue_takes_nothing_and_closed_queue_says_so() {
        let (submitter, mut rx) = submitter(2);
        let one = positions_json("van-1", 1);
        let route = HttpIdentity::default();
        for _ in 0..2 {
            submitter
                .submit(&route, "http", one.as_bytes())
                .expect("fits");
        }
        assert_eq!(
            submitter.submit(&route, "http", one.as_bytes()),
            Err(SubmitError::QueueFull)
        );
        // Two chunks where one slot is free: all or nothing.
        assert_eq!(rx.recv().await.map(|c| c.len()), Some(1));
        let two_chunks = positions_json("van-1", MAX_CHUNK + 1);
        assert_eq!(
            submitter.submit(&route, "http", two_chunks.as_bytes()),
            Err(SubmitError::QueueFull)
        );
        assert_eq!(rx.recv().await.map(|c| c.len()), Some(1));
        assert!(rx.try_recv().is_err(), "nothing of it was queued");

        submitter.clone().close();
        assert_eq!(
            submitter.submit(&route, "http", one.as_bytes()),
            Err(SubmitError::Closed)
        );
        assert!(rx.recv().await.is_none(), "the processor sees the end");
    }

    #[tokio::test]
    async fn a_queue_smaller_than_the_chunks_takes_one_chunk() {
        let (submitter, mut rx) = submitter(1);
        let payload = positions_json("van-1", MAX_CHUNK + 1);
        submitter
            .submit(&HttpIdentity::default(), "http", payload.as_bytes())
            .expect("queued");
        assert_eq!(rx.recv().await.map(|c| c.len()), Some(MAX_CHUNK + 1));
    }

    #[tokio::test]
    async fn callers_submit_only_their_own_devices() {
        let (tx, mut rx) = mpsc::channel(4);
        let log = Arc::new(RejectionLog::new(16));
        let submitter = Submitter::new(Decoder::new(Limits::default()), Arc::clone(&log), tx);
        let van = DeviceId::parse("van-1").expect("id");
        let device = Caller {
            owns: Owns::Device(van.clone()),
            label: "device van-1".into(),
        };
        let own = positions_json("van-1", 2);
        let got = submitter
            .submit_as(&HttpIdentity::default(), &device, "http", own.as_bytes())
            .expect("own positions");
        assert_eq!(got.accepted, 2);
        assert_eq!(rx.recv().await.map(|c| c.len()), Some(2));

        let mixed = format!(
            "[{},{}]",
            positions_json("van-1", 1).trim_matches(['[', ']']),
            positions_json("van-2", 1).trim_matches(['[', ']'])
        );
        let err = submitter
            .submit_as(&HttpIdentity::default(), &device, "http", mixed.as_bytes())
            .expect_err("foreign device");
        let SubmitError::NotAuthorized(reject) = err else {
            panic!("{err:?}");
        };
        assert_eq!(reject.device.as_ref().map(DeviceId::as_str), Some("van-2"));
        assert!(reject.detail.contains("device van-1"), "{}", reject.detail);
        assert!(rx.try_recv().is_err(), "nothing of it was queued");
        let sample = &log.recent(1)[0];
        assert_eq!(sample.reason, RejectReason::NotAuthorized);
        assert_eq!(sample.device_id.as_deref(), Some("van-2"));

        let alice = Caller {
            owns: Owns::User("alice".into()),
            label: "user alice".into(),
        };
        let location = format!(
            r#"{{"_type": "location", "lat": 1, "lon": 2, "tst": {}}}"#,
            now_ms() / 1000
        );
        let as_user = |user: &str| HttpIdentity {
            owntracks_user: Some(user.into()),
            owntracks_device: Some("phone".into()),
            login: Some("alice".into()),
        };
        let got = submitter
            .submit_as(&as_user("alice"), &alice, "http", location.as_bytes())
            .expect("own device");
        assert_eq!(got.accepted, 1);
        assert!(matches!(
            submitter.submit_as(&as_user("alicex"), &alice, "http", location.as_bytes()),
            Err(SubmitError::NotAuthorized(_))
        ));
        assert!(Owns::User("alice".into()).owns(&DeviceId::parse("alice/x").expect("id")));
        assert!(!Owns::User("alice".into()).owns(&DeviceId::parse("alice").expect("id")));
    }

    #[tokio::test]
    async fn rejections_are_recorded_with_source_and_device() {
        let (tx, _rx) = mpsc::channel(4);
        let log = Arc::new(RejectionLog::new(16));
        let submitter = Submitter::new(Decoder::new(Limits::default()), Arc::clone(&log), tx);
        let now = now_ms();
        let payload = format!(
            r#"[{{"device_id": "van-1", "ts_ms": {now}, "lat": 95, "lon": 1}},
                {{"ts_ms": {now}, "lat": 1, "lon": 1}},
                {{"device_id": "van-2", "ts_ms": {now}, "lat": 1, "lon": 1}}]"#
        );
        let submitted = submitter
            .submit(&HttpIdentity::default(), "http", payload.as_bytes())
            .expect("queued");
        assert_eq!(submitted.accepted, 1);
        let got: Vec<_> = submitted
            .rejects
            .iter()
            .map(|r| (r.index, r.reason.code()))
            .collect();
        assert_eq!(
            got,
            [(Some(0), "bad_coordinates"), (Some(1), "bad_device_id")]
        );
        let recent = log.recent(10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].reason, RejectReason::BadDeviceId);
        assert_eq!(recent[1].source, "http");
        assert_eq!(recent[1].device_id.as_deref(), Some("van-1"));

        let alice = HttpIdentity {
            owntracks_user: Some("alice".into()),
            owntracks_device: Some("phone".into()),
            login: None,
        };
        let submitted = submitter
            .submit(
                &alice,
                "http",
                br#"{"_type": "location", "lat": 1, "lon": 2}"#,
            )
            .expect("decoded");
        assert_eq!(submitted.accepted, 0);
        assert_eq!(submitted.format, HttpFormat::OwnTracks);
        assert_eq!(log.recent(1)[0].device_id.as_deref(), Some("alice/phone"));

        let oversize = submitter.reject_oversize("http", Some(1 << 30));
        assert_eq!(oversize.reason, RejectReason::Oversize);
        assert!(
            oversize.detail.contains("1073741824"),
            "{}",
            oversize.detail
        );
        assert_eq!(log.recent(1)[0].reason, RejectReason::Oversize);
    }
}
