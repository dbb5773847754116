//! Ingest for request/response transports (the HTTP API's
//! `POST /v1/positions`, the OsmAnd listener): one payload in, an answer out, through the same
//! decoder, limits and rejection log as MQTT, into the same journal.

use std::sync::Arc;

use fleetd_journal::{AppendError, Journal};
use fleetd_schemas::{DeviceId, PositionReport, RejectReason, RejectionLog, now_ms};

use crate::decode::{Decoder, HttpFormat, HttpIdentity, Outcome, Reject};
use crate::pipeline::{count_outcome, count_received, record_reject};
use crate::validate::{Limits, RawPosition};

/// Decodes payloads that arrive without a topic and appends their positions
/// to the journal; answers once they are durable. Cheap to clone.
///
/// Backpressure policy: a caller is never parked waiting for room. When
/// the journal's queue is full (the processor or the disk is behind) or
/// its last write failed, nothing is appended and [`SubmitError::QueueFull`]
/// or [`SubmitError::Unavailable`] tells the caller to come back later (the
/// HTTP API answers 503 with `Retry-After`), because a request handler that
/// waited would hold its connection and memory for as long as fleetd is
/// behind. Once appended, the caller waits for the journal's group commit
/// (milliseconds), so a success answer means durable. MQTT connections,
/// which TCP can push back on, wait for room instead.
#[derive(Clone)]
pub struct Submitter {
    decoder: Decoder,
    rejections: Arc<RejectionLog>,
    journal: Journal,
}

/// What became of one payload whose positions (if any) were queued.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// What the payload was, which decides the shape of the answer.
    pub format: HttpFormat,
    /// Positions made durable (journal) and queued for the processor.
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
    /// No device (a share link's holder reads, never writes).
    Nothing,
}

impl Owns {
    /// Whether positions of `device` are the caller's own.
    pub fn owns(&self, device: &DeviceId) -> bool {
        match self {
            Self::Any => true,
            Self::Nothing => false,
            Self::Device(id) => id == device,
            Self::User(user) => device
                .as_str()
                .strip_prefix(user.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

/// Why a payload's accepted positions were not taken. Nothing of the
/// payload was acknowledged; its rejections were still counted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The journal's queue has no room: the processor is behind. Retry later.
    #[error("the ingest journal is full")]
    QueueFull,
    /// The journal cannot write (disk full or failing). Retry later.
    #[error("the ingest journal cannot write")]
    Unavailable,
    /// The journal was closed: fleetd is shutting down. The positions may
    /// or may not have been written; a retry is deduplicated.
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
    /// `rejections` and appending to `journal`.
    pub fn new(decoder: Decoder, rejections: Arc<RejectionLog>, journal: Journal) -> Self {
        Self {
            decoder,
            rejections,
            journal,
        }
    }

    /// Whether the journal's last write succeeded (false while the disk is
    /// full or failing; `/readyz` then answers 503).
    pub fn journal_writable(&self) -> bool {
        self.journal.is_writable()
    }

    /// The limits payloads are held to (the body limit is `max_payload_bytes`).
    pub fn limits(&self) -> &Limits {
        self.decoder.limits()
    }

    /// Decodes and validates `payload` (see [`Decoder::decode_http`] for
    /// how `identity` and the body decide its format), counts and samples
    /// its rejections under `source` (as `GET /v1/rejections` shows it), and
    /// appends the accepted positions to the journal: all of them or, with
    /// an error, none. Returns once they are durable.
    ///
    /// Anyone may submit any device's positions here; see
    /// [`Submitter::submit_as`] for a verified caller.
    pub async fn submit(
        &self,
        identity: &HttpIdentity,
        source: &str,
        payload: &[u8],
    ) -> Result<Submitted, SubmitError> {
        self.submit_as(identity, &Caller::anyone("anonymous"), source, payload)
            .await
    }

    /// Like [`Submitter::submit`], for `caller`: when the payload names any
    /// device `caller` does not own (a decoded or rejected position's
    /// device, or the OwnTracks `user/device` of the request), nothing of
    /// it is queued and [`SubmitError::NotAuthorized`] says which device.
    /// The check runs on the decoded payload, so the body is parsed once.
    pub async fn submit_as(
        &self,
        identity: &HttpIdentity,
        caller: &Caller,
        source: &str,
        payload: &[u8],
    ) -> Result<Submitted, SubmitError> {
        self.check_room()?;
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
            self.append_durable(positions).await?;
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

    /// Validates one fix of a protocol that names its device per request
    /// (OsmAnd), for `caller`, counts a rejection under `source` (with
    /// `payload` as its sample), and appends the position to the journal.
    /// `Ok(Err(reject))`: the fix was refused, counted and sampled.
    pub async fn submit_fix(
        &self,
        caller: &Caller,
        source: &str,
        device: &str,
        raw: RawPosition,
        payload: &[u8],
    ) -> Result<Result<(), Reject>, SubmitError> {
        self.check_room()?;
        let received_ms = now_ms();
        let checked = DeviceId::parse(device)
            .map_err(|e| Reject::new(RejectReason::BadDeviceId, format!("id: {e}")))
            .and_then(|id| {
                if caller.owns.owns(&id) {
                    Ok(id)
                } else {
                    Err(Reject {
                        device: Some(id.clone()),
                        ..Reject::new(
                            RejectReason::NotAuthorized,
                            format!("{} may not submit positions of device {id}", caller.label),
                        )
                    })
                }
            })
            .and_then(|id| {
                self.limits()
                    .validate(&id, raw, received_ms)
                    .map_err(|r| Reject {
                        device: Some(id),
                        ..r
                    })
            });
        let report = match checked {
            Ok(report) => report,
            Err(reject) => {
                self.reject(source, reject.clone(), payload);
                return Ok(Err(reject));
            }
        };
        self.append_durable(vec![report]).await?;
        Ok(Ok(()))
    }

    /// Counts and samples `reject` of a payload under `source` (as
    /// `GET /v1/rejections` shows it), as every input's rejections are.
    pub fn reject(&self, source: &str, reject: Reject, payload: &[u8]) {
        record_reject(&self.rejections, source, None, reject, payload, now_ms());
    }

    /// Refuses, before any decoding, when the journal clearly cannot take
    /// more (so that a client retrying against a busy server is not
    /// counted twice).
    fn check_room(&self) -> Result<(), SubmitError> {
        if !self.journal.is_writable() {
            return Err(SubmitError::Unavailable);
        }
        if !self.journal.has_room() {
            return Err(SubmitError::QueueFull);
        }
        Ok(())
    }

    /// Appends `positions` to the journal and waits until they are durable.
    async fn append_durable(&self, positions: Vec<PositionReport>) -> Result<(), SubmitError> {
        let n = positions.len();
        let pending = self.journal.try_append(positions).map_err(|e| match e {
            AppendError::Full => SubmitError::QueueFull,
            _ => SubmitError::Closed,
        })?;
        count_received(n);
        pending.durable().await.map_err(|_| SubmitError::Closed)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fleetd_journal::test_support;
    use fleetd_schemas::Ingested;
    use tokio::sync::mpsc;

    use super::*;

    /// A submitter over a real journal in a temporary directory.
    struct Fixture {
        submitter: Submitter,
        rx: mpsc::Receiver<Ingested>,
        log: Arc<RejectionLog>,
        cancel: tokio_util::sync::CancellationToken,
        _dir: tempfile::TempDir,
    }

    async fn fixture(queue_appends: usize, output: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _tasks, rx, cancel) =
            test_support::start(dir.path(), queue_appends, output).await;
        let log = Arc::new(RejectionLog::new(16));
        Fixture {
            submitter: Submitter::new(Decoder::new(Limits::default()), Arc::clone(&log), journal),
            rx,
            log,
            cancel,
            _dir: dir,
        }
    }

    /// The next positions the processor would get.
    async fn received(rx: &mut mpsc::Receiver<Ingested>) -> Vec<PositionReport> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Ingested::Positions(p))) => return p,
                Ok(Some(_)) => continue,
                other => panic!("no positions: {other:?}"),
            }
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_once_durable_and_queues_in_order() {
        let mut f = fixture(4, 4).await;
        let payload = positions_json("van-1", 515);
        let submitted = f
            .submitter
            .submit(&HttpIdentity::default(), "http", payload.as_bytes())
            .await
            .expect("durable");
        assert_eq!(submitted.accepted, 515);
        assert!(submitted.rejects.is_empty());
        let got = received(&mut f.rx).await;
        assert_eq!(got.len(), 515);
        assert_eq!(got[0].device_id.as_str(), "van-1");
        assert!(
            got.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms),
            "order is kept"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_journal_takes_nothing_and_a_closed_one_says_so() {
        // Nobody reads the processor queue: the writer stalls forwarding
        // and the journal's queue of 2 appends fills behind it.
        let f = fixture(2, 1).await;
        let one = positions_json("van-1", 1);
        let route = HttpIdentity::default();
        let mut waiting = Vec::new();
        let mut refused = None;
        for _ in 0..10 {
            let (submitter, one, route) = (f.submitter.clone(), one.clone(), route.clone());
            let task =
                tokio::spawn(async move { submitter.submit(&route, "http", one.as_bytes()).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            if task.is_finished() {
                match task.await.expect("task") {
                    Ok(_) => continue,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            waiting.push(task);
        }
        assert_eq!(refused, Some(SubmitError::QueueFull));
        f.cancel.cancel();
        // The processor goes on reading during shutdown, as fleetd's drain
        // has it: the writer then forwards what it wrote and answers the rest.
        let mut rx = f.rx;
        let reader = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        for task in waiting {
            // Written and acknowledged, or refused as closed: never hung.
            let done = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("answered after shutdown");
            assert!(matches!(
                done.expect("task"),
                Ok(_) | Err(SubmitError::Closed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            f.submitter.submit(&route, "http", one.as_bytes()).await,
            Err(SubmitError::Closed)
        );
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the writer closed the processor queue")
            .expect("reader");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_submit_only_their_own_devices() {
        // The directory stays: without it the journal cannot write, and
        // nothing would be acknowledged.
        let Fixture {
            submitter,
            mut rx,
            log,
            _dir,
            ..
        } = fixture(4, 4).await;
        let van = DeviceId::parse("van-1").expect("id");
        let device = Caller {
            owns: Owns::Device(van.clone()),
            label: "device van-1".into(),
        };
        let own = positions_json("van-1", 2);
        let got = submitter
            .submit_as(&HttpIdentity::default(), &device, "http", own.as_bytes())
            .await
            .expect("own positions");
        assert_eq!(got.accepted, 2);
        assert_eq!(received(&mut rx).await.len(), 2);

        let mixed = format!(
            "[{},{}]",
            positions_json("van-1", 1).trim_matches(['[', ']']),
            positions_json("van-2", 1).trim_matches(['[', ']'])
        );
        let err = submitter
            .submit_as(&HttpIdentity::default(), &device, "http", mixed.as_bytes())
            .await
            .expect_err("foreign device");
        let SubmitError::NotAuthorized(reject) = err else {
            panic!("{err:?}");
        };
        assert_eq!(reject.device.as_ref().map(DeviceId::as_str), Some("van-2"));
        assert!(reject.detail.contains("device van-1"), "{}", reject.detail);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !matches!(rx.try_recv(), Ok(Ingested::Positions(_))),
            "nothing of it was queued"
        );
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
            .await
            .expect("own device");
        assert_eq!(got.accepted, 1);
        assert!(matches!(
            submitter
                .submit_as(&as_user("alicex"), &alice, "http", location.as_bytes())
                .await,
            Err(SubmitError::NotAuthorized(_))
        ));
        assert!(Owns::User("alice".into()).owns(&DeviceId::parse("alice/x").expect("id")));
        assert!(!Owns::User("alice".into()).owns(&DeviceId::parse("alice").expect("id")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejections_are_recorded_with_source_and_device() {
        let Fixture {
            submitter,
            log,
            rx: _rx,
            _dir,
            ..
        } = fixture(4, 4).await;
        let now = now_ms();
        let payload = format!(
            r#"[{{"device_id": "van-1", "ts_ms": {now}, "lat": 95, "lon": 1}},
                {{"ts_ms": {now}, "lat": 1, "lon": 1}},
                {{"device_id": "van-2", "ts_ms": {now}, "lat": 1, "lon": 1}}]"#
        );
        let submitted = submitter
            .submit(&HttpIdentity::default(), "http", payload.as_bytes())
            .await
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
            .await
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
