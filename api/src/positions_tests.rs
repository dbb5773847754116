//! `POST /v1/positions` through [`crate::router`] with `oneshot`: a real
//! store, ingest's real `Submitter` and a real bounded queue, read back on
//! the processor's side of the channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use fleetd_ingest::{Decoder, Limits, Submitter};
use fleetd_schemas::{Ingested, PositionReport, RejectionLog, now_ms};
use fleetd_store::FjallStore;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{ApiState, router};

/// A router whose HTTP ingest feeds `queue`; keeps the store's directory.
struct Harness {
    _dir: TempDir,
    state: ApiState,
    queue: mpsc::Receiver<Ingested>,
    journal_cancel: CancellationToken,
    journal_tasks: Option<fleetd_journal::JournalTasks>,
}

impl Harness {
    /// A journal with room for `queue_appends` appends, forwarding into a
    /// processor queue of 64.
    async fn new(queue_appends: usize) -> Self {
        Self::with_output(queue_appends, 64).await
    }

    async fn with_output(queue_appends: usize, output: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FjallStore::open(dir.path()).expect("open store"));
        let rejections = Arc::new(RejectionLog::new(64));
        let (journal, journal_tasks, queue, journal_cancel) =
            fleetd_journal::test_support::start(&dir.path().join("journal"), queue_appends, output)
                .await;
        let submitter = Submitter::new(
            Decoder::new(Limits::default()),
            Arc::clone(&rejections),
            journal,
        );
        let state = ApiState::new(
            store.clone(),
            crate::router_tests::open_access(store, true).await,
            rejections,
            PrometheusBuilder::new().build_recorder().handle(),
            Arc::new(AtomicBool::new(true)),
        )
        .with_ingest(submitter);
        Self {
            _dir: dir,
            state,
            queue,
            journal_cancel,
            journal_tasks: Some(journal_tasks),
        }
    }

    async fn post(&self, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Reply {
        send(&self.state, post_request(uri, headers, body)).await
    }

    async fn get(&self, uri: &str) -> Reply {
        let request = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        send(&self.state, request).await
    }

    /// Everything queued so far, in order.
    /// What the journal forwarded to the processor's queue so far.
    async fn queued(&mut self) -> Vec<PositionReport> {
        fleetd_journal::test_support::forwarded(&mut self.queue).await
    }

    /// Stops the journal, as fleetd's shutdown does; the queue is read
    /// meanwhile, as the processor does (the journal's last checkpoint
    /// waits there, and the pruner stops only once it is gone).
    async fn close_journal(&mut self) {
        self.journal_cancel.cancel();
        let Some(tasks) = self.journal_tasks.take() else {
            return;
        };
        let join = tasks.join();
        tokio::pin!(join);
        loop {
            tokio::select! {
                () = &mut join => return,
                item = self.queue.recv() => match item {
                    Some(Ingested::Checkpoint(c)) => c.done(),
                    Some(_) => {}
                    None => return join.await,
                },
            }
        }
    }
}

fn post_request(uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::builder().method(Method::POST).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).expect("request")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    /// Asserts the JSON error shape and code; returns the message.
    fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let error = self.body["error"].as_object().expect("error object");
        assert_eq!(error.len(), 2, "{}", self.body);
        assert_eq!(error["code"], code, "{}", self.body);
        error["message"].as_str().expect("message").to_owned()
    }
}

async fn send(state: &ApiState, request: Request<Body>) -> Reply {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// An OwnTracks location as the apps send it, `age_s` seconds old.
fn location(age_s: i64) -> String {
    json!({"_type": "location", "tid": "ph", "tst": now_ms() / 1000 - age_s,
           "lat": 48.8566, "lon": 2.3522, "acc": 12, "alt": 35, "vel": 36, "cog": 90,
           "batt": 80, "conn": "w", "t": "u"})
    .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[tokio::test]
async fn owntracks_http_mode_queues_user_slash_device() {
    let mut h = Harness::new(16).await;
    let reply = h
        .post(
            "/v1/positions",
            &[("x-limit-u", "alice"), ("x-limit-d", "phone")],
            location(5),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!([]), "the apps expect a JSON array");
    let queued = h.queued().await;
    assert_eq!(queued.len(), 1);
    let p = &queued[0];
    assert_eq!(p.device_id.as_str(), "alice/phone");
    assert_eq!(p.ts_ms % 1000, 0, "tst is in seconds");
    assert!((now_ms() - p.ts_ms - 5000).abs() < 2000, "{}", p.ts_ms);
    assert_eq!((p.lat, p.lon), (48.8566, 2.3522));
    assert_eq!(p.speed_mps, Some(10.0), "vel is km/h");
    assert_eq!(
        (p.accuracy_m, p.altitude_m, p.heading_deg, p.battery_pct),
        (Some(12.0), Some(35.0), Some(90.0), Some(80.0))
    );

    // The Recorder's query parameters; the headers win over them.
    h.post("/v1/positions?u=bob&d=tablet", &[], location(4))
        .await;
    h.post(
        "/v1/positions?u=bob&d=tablet",
        &[("x-limit-d", "watch")],
        location(3),
    )
    .await;
    // Basic auth names the user; the message's tid the device.
    let auth = basic("carol", "not-checked");
    let reply = h
        .post("/v1/positions", &[("authorization", &auth)], location(2))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let ids: Vec<String> = h
        .queued()
        .await
        .iter()
        .map(|p| p.device_id.to_string())
        .collect();
    assert_eq!(ids, ["bob/tablet", "bob/watch", "carol/ph"]);
}

#[tokio::test]
async fn owntracks_non_locations_and_empty_bodies_are_ignored() {
    let mut h = Harness::new(16).await;
    let identity = [("x-limit-u", "alice"), ("x-limit-d", "phone")];
    for body in [
        json!({"_type": "transition", "event": "enter", "tst": now_ms() / 1000}).to_string(),
        json!({"_type": "lwt", "tst": now_ms() / 1000}).to_string(),
        json!({"_type": "encrypted", "data": "abc"}).to_string(),
        String::new(),
    ] {
        let reply = h.post("/v1/positions", &identity, body.clone()).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::OK, &json!([])),
            "{body:?}"
        );
    }
    assert!(h.queued().await.is_empty());
    assert!(h.state.rejections.recent(10).is_empty());
}

#[tokio::test]
async fn owntracks_without_user_or_device_is_a_bad_device_id() {
    let mut h = Harness::new(16).await;
    // No user at all (the tid alone is not enough).
    let message = h
        .post("/v1/positions", &[], location(1))
        .await
        .error(StatusCode::BAD_REQUEST, "bad_device_id");
    assert!(message.contains("X-Limit-U"), "{message}");
    let message = h
        .post(
            "/v1/positions",
            &[("x-limit-u", "al ice"), ("x-limit-d", "phone")],
            location(1),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "bad_device_id");
    assert!(message.contains("al ice/phone"), "{message}");
    // A malformed OwnTracks message, told by its identity headers.
    h.post(
        "/v1/positions",
        &[("x-limit-u", "alice"), ("x-limit-d", "phone")],
        r#"{"lat": 1, "lon": 2}"#,
    )
    .await
    .error(StatusCode::BAD_REQUEST, "malformed");
    assert!(h.queued().await.is_empty());
    let samples = h.state.rejections.recent(10);
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|s| s.source == "http"));
    assert_eq!(samples[0].device_id.as_deref(), Some("alice/phone"));
}

#[tokio::test]
async fn json_positions_one_or_many_with_device_ids() {
    let mut h = Harness::new(16).await;
    let now = now_ms();
    let reply = h
        .post(
            "/v1/positions",
            &[("content-type", "application/json")],
            json!({"device_id": "truck-1", "ts_ms": now - 1000, "lat": 52.52, "lon": 13.405,
                   "speed_mps": 8.3, "seq": 7})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body, json!({"accepted": 1, "rejected": []}));

    let batch = json!([
        {"device_id": "truck-1", "ts_ms": now - 900, "lat": 52.521, "lon": 13.405},
        {"device_id": "truck-2", "ts_ms": now - 900, "lat": 95.0, "lon": 13.405},
        {"device_id": "alice/phone", "ts_ms": now - 800, "lat": 52.5, "lon": 13.4},
    ]);
    let reply = h.post("/v1/positions", &[], batch.to_string()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 2);
    assert_eq!(
        reply.body["rejected"],
        json!([{"index": 1, "device_id": "truck-2", "reason": "bad_coordinates",
                "detail": "lat 95 is not in [-90, 90]"}])
    );
    let queued = h.queued().await;
    let got: Vec<(&str, i64)> = queued
        .iter()
        .map(|p| (p.device_id.as_str(), p.ts_ms))
        .collect();
    assert_eq!(
        got,
        [
            ("truck-1", now - 1000),
            ("truck-1", now - 900),
            ("alice/phone", now - 800)
        ]
    );
    assert_eq!(queued[0].seq, Some(7));

    // An empty array is nothing to do, not an error.
    let reply = h.post("/v1/positions", &[], "[]").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body, json!({"accepted": 0, "rejected": []}));
}

#[tokio::test]
async fn bad_input_is_400_with_the_reason_counted_and_sampled() {
    let recorder = PrometheusBuilder::new().build_recorder();
    // The current-thread test runtime runs every handler on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut h = Harness::new(16).await;
    let now = now_ms();
    let cases = [
        (
            r#"{"device_id": "t", "lat": 1, "lon":"#.to_owned(),
            "malformed",
        ),
        ("12".to_owned(), "malformed"),
        (String::new(), "malformed"),
        (
            json!({"device_id": "t", "ts_ms": now, "lat": 95, "lon": 1}).to_string(),
            "bad_coordinates",
        ),
        (
            json!({"ts_ms": now, "lat": 1, "lon": 1}).to_string(),
            "bad_device_id",
        ),
        (
            json!({"device_id": "bad id", "ts_ms": now, "lat": 1, "lon": 1}).to_string(),
            "bad_device_id",
        ),
        (
            json!({"device_id": "t", "ts_ms": now + 86_400_000, "lat": 1, "lon": 1}).to_string(),
            "future_timestamp",
        ),
        (
            json!({"device_id": "t", "ts_ms": now, "lat": 1, "lon": 1, "battery_pct": 140})
                .to_string(),
            "bad_field",
        ),
    ];
    for (body, reason) in &cases {
        h.post("/v1/positions", &[], body.clone())
            .await
            .error(StatusCode::BAD_REQUEST, reason);
    }
    let two_bad = json!([
        {"device_id": "t", "ts_ms": now, "lat": 1, "lon": 1000},
        {"device_id": "t", "ts_ms": now},
    ]);
    let message = h
        .post("/v1/positions", &[], two_bad.to_string())
        .await
        .error(StatusCode::BAD_REQUEST, "bad_coordinates");
    assert_eq!(
        message,
        "position 0: lon 1000 is not in [-180, 180] (and 1 more rejected)"
    );
    assert!(h.queued().await.is_empty());

    let metrics = recorder.handle().render();
    for (reason, n) in [
        ("malformed", 3),
        ("bad_coordinates", 3),
        ("bad_device_id", 2),
        ("future_timestamp", 1),
        ("bad_field", 1),
    ] {
        let series = format!("fleetd_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    let reply = h.get("/v1/rejections?limit=3").await;
    let samples = reply.body["rejections"].as_array().expect("samples");
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0]["source"], "http");
    assert_eq!(samples[0]["reason"], "bad_coordinates");
    assert_eq!(samples[0]["device_id"], "t");
    assert!(
        samples[0]["payload_head"]
            .as_str()
            .is_some_and(|p| p.starts_with('['))
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_oversize() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mut h = Harness::new(16).await;
    let limit = Limits::default().max_payload_bytes;
    let big = format!("[{}]", " ".repeat(limit));
    // Told by Content-Length before reading, and found while reading.
    let message = h
        .post(
            "/v1/positions",
            &[(CONTENT_LENGTH.as_str(), &big.len().to_string())],
            big.clone(),
        )
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "oversize");
    assert!(message.contains(&big.len().to_string()), "{message}");
    let stream = Body::from_stream(futures::stream::iter(
        big.into_bytes()
            .chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    ));
    h.post("/v1/positions", &[], stream)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "oversize");
    assert!(h.queued().await.is_empty());
    let metrics = recorder.handle().render();
    assert!(
        metrics.contains("fleetd_rejected_total{reason=\"oversize\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after_and_takes_nothing() {
    // Nobody reads the processor queue (room for one chunk) at first: the
    // journal writer writes and acknowledges the second request, then
    // waits to forward it; the third waits in the journal's queue (room
    // for one), and the fourth finds it full.
    let mut h = Harness::with_output(1, 1).await;
    let body = |ts: i64| json!({"device_id": "t", "ts_ms": ts, "lat": 1, "lon": 1}).to_string();
    let now = now_ms();
    for ts in [now - 4, now - 3] {
        let reply = h.post("/v1/positions", &[], body(ts)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    }
    let third = send(&h.state, post_request("/v1/positions", &[], body(now - 2)));
    tokio::pin!(third);
    tokio::select! {
        reply = &mut third => panic!("answered before it was durable: {}", reply.status),
        () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
    }
    let reply = h.post("/v1/positions", &[], body(now - 1)).await;
    reply.error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(
        reply.headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let owntracks = h
        .post(
            "/v1/positions",
            &[("x-limit-u", "a"), ("x-limit-d", "b")],
            location(1),
        )
        .await;
    owntracks.error(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    // The processor reads again: the waiting request is written and
    // answered, and nothing of the refused ones was queued.
    let (reply, queued) =
        tokio::join!(third, fleetd_journal::test_support::forwarded(&mut h.queue));
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let ts: Vec<i64> = queued.iter().map(|p| p.ts_ms).collect();
    assert_eq!(ts, [now - 4, now - 3, now - 2]);
    // Room again: accepted again.
    let reply = h.post("/v1/positions", &[], body(now)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn not_ready_closed_or_unwired_ingest_is_503() {
    let mut h = Harness::new(4).await;
    let body = json!({"device_id": "t", "ts_ms": now_ms(), "lat": 1, "lon": 1}).to_string();
    h.state.ready.store(false, Ordering::SeqCst);
    let reply = h.post("/v1/positions", &[], body.clone()).await;
    reply.error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert!(reply.headers.contains_key(RETRY_AFTER));

    h.state.ready.store(true, Ordering::SeqCst);
    h.close_journal().await;
    let reply = h.post("/v1/positions", &[], body.clone()).await;
    let message = reply.error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert!(message.contains("shutting down"), "{message}");
    assert!(reply.headers.contains_key(RETRY_AFTER));
    assert!(h.queued().await.is_empty());

    h.state.ingest = None;
    h.post(
        "/v1/positions",
        &[(AUTHORIZATION.as_str(), "Basic x")],
        body,
    )
    .await
    .error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
}

#[tokio::test]
async fn only_post_is_served() {
    let h = Harness::new(4).await;
    let reply = h.get("/v1/positions").await;
    reply.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(
        reply.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
}
