//! Stream tests through [`crate::router`] without sockets: alerts and
//! positions published straight into the hub arrive as SSE events, filtered,
//! in order, resumable with `Last-Event-ID`, with gaps named.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fleetd_live::{LiveHub, LivePosition, LiveSettings};
use fleetd_schemas::{Alert, AlertDetail, AlertKind, DeviceId, GeofenceId, RejectionLog};
use fleetd_store::FjallStore;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tower::ServiceExt;

use crate::{ApiState, LiveApi, MapSettings, StreamSettings, router};

struct Harness {
    _dir: tempfile::TempDir,
    state: ApiState,
    hub: LiveHub,
}

async fn harness(settings: LiveSettings) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FjallStore::open(dir.path()).expect("store"));
    let hub = LiveHub::with_base_seq(settings, 1000);
    let state = ApiState::new(
        store.clone(),
        crate::router_tests::open_access(store, true).await,
        Arc::new(RejectionLog::new(4)),
        PrometheusBuilder::new().build_recorder().handle(),
        Arc::new(AtomicBool::new(true)),
    )
    .with_live(LiveApi::new(
        hub.clone(),
        StreamSettings {
            heartbeat: Duration::from_secs(3600),
            ..StreamSettings::default()
        },
        &MapSettings::default(),
    ));
    Harness {
        _dir: dir,
        state,
        hub,
    }
}

fn alert(device: &str, fence: Option<&str>, ts_ms: i64, lat: f64, lon: f64) -> Alert {
    Alert::new(
        if fence.is_some() {
            AlertKind::Enter
        } else {
            AlertKind::Overspeed
        },
        DeviceId::parse(device).expect("id"),
        fence.map(|f| GeofenceId::parse(f).expect("fence id")),
        ts_ms,
        (lat, lon),
        AlertDetail {
            speed_kmh: Some(93.0),
            limit_kmh: Some(50.0),
            ..AlertDetail::default()
        },
    )
}

/// Parsed SSE events of an open stream.
struct Stream {
    body: axum::body::BodyDataStream,
    buf: String,
}

/// A stream test's position: moving at 4 m/s.
fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> LivePosition {
    let mut p = fleetd_schemas::test_support::position(device, ts_ms, lat, lon);
    p.report.speed_mps = Some(4.0);
    p.into()
}

#[derive(Debug)]
struct Event {
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Stream {
    async fn open(h: &Harness, uri: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = Request::get(uri);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = router(h.state.clone())
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            body: response.into_body().into_data_stream(),
            buf: String::new(),
        }
    }

    /// Events until none arrives for `quiet`.
    async fn events(&mut self, quiet: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("json data"));
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    out.push(Event { id, event, data });
                }
            }
            match tokio::time::timeout(quiet, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                _ => return out,
            }
        }
    }
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn alerts_published_into_the_hub_stream_in_order_and_resume_exactly_once() {
    let h = harness(LiveSettings::default()).await;
    let mut stream = Stream::open(&h, "/v1/stream?kinds=alerts", None).await;
    // Let the pump subscribe before publishing.
    assert!(stream.events(QUIET).await.is_empty());
    h.hub.publish(
        vec![position("car-1", 1, 52.5, 13.4)],
        vec![alert("car-1", None, 1, 52.5, 13.4)],
    );
    h.hub
        .publish(vec![], vec![alert("car-2", None, 2, 52.5, 13.4)]);
    let events = stream.events(QUIET).await;
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, [1001, 1002], "positions filtered out: {events:?}");
    assert!(events.iter().all(|e| e.event == "alert"));
    // The alert JSON of the contract.
    let a = &events[0].data;
    assert_eq!(a["kind"], "overspeed");
    assert_eq!(a["device_id"], "car-1");
    assert_eq!(a["detail"]["speed_kmh"], 93.0);
    assert!(
        a["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("0000000000001-"))
    );
    assert!(a.get("geofence_id").is_none());
    drop(stream);

    // While disconnected: alerts interleaved with positions.
    let mut expected = Vec::new();
    for ts in 3..10 {
        let a = alert("car-1", None, ts, 52.5, 13.4);
        expected.push(a.id.clone());
        h.hub
            .publish(vec![position("car-1", ts, 52.5, 13.4)], vec![a.clone()]);
    }
    let mut stream = Stream::open(&h, "/v1/stream?kinds=alerts", Some(1002)).await;
    let events = stream.events(QUIET).await;
    let got: Vec<&str> = events
        .iter()
        .filter_map(|e| e.data["id"].as_str())
        .collect();
    assert_eq!(
        got, expected,
        "every alert in between exactly once, in order"
    );
    // And live ones follow without a duplicate.
    h.hub
        .publish(vec![], vec![alert("car-1", None, 10, 52.5, 13.4)]);
    let events = stream.events(QUIET).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].data["ts_ms"], 10);
}

#[tokio::test]
async fn filters_apply_to_alerts_and_positions() {
    let h = harness(LiveSettings::default()).await;
    let mut fenced = Stream::open(&h, "/v1/stream?geofence=depot", None).await;
    let mut boxed = Stream::open(&h, "/v1/stream?bbox=13,52,14,53&devices=car-1,car-2", None).await;
    fenced.events(QUIET).await;
    boxed.events(QUIET).await;
    h.hub.publish(
        vec![
            position("car-1", 1, 52.5, 13.4),
            position("car-2", 1, 48.8, 2.3),
            position("car-3", 1, 52.5, 13.4),
        ],
        vec![
            alert("car-1", Some("depot"), 1, 52.5, 13.4),
            alert("car-1", Some("yard"), 1, 52.5, 13.4),
            alert("car-2", None, 1, 48.8, 2.3),
        ],
    );
    let fenced = fenced.events(QUIET).await;
    assert_eq!(fenced.len(), 1, "only the depot alert: {fenced:?}");
    assert_eq!(fenced[0].data["geofence_id"], "depot");
    let boxed: Vec<(String, String)> = boxed
        .events(QUIET)
        .await
        .iter()
        .map(|e| {
            (
                e.event.clone(),
                e.data["device_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        boxed,
        [
            ("position".to_owned(), "car-1".to_owned()),
            ("alert".to_owned(), "car-1".to_owned()),
            ("alert".to_owned(), "car-1".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_resume_past_the_replay_buffer_gets_a_gap_first() {
    let h = harness(LiveSettings {
        replay_alerts: 2,
        ..LiveSettings::default()
    })
    .await;
    for ts in 0..5 {
        h.hub
            .publish(vec![], vec![alert("car-1", None, ts, 52.5, 13.4)]); // 1000..=1004
    }
    let mut stream = Stream::open(&h, "/v1/stream?kinds=alerts&since=1000", None).await;
    let events = stream.events(QUIET).await;
    assert_eq!(events[0].event, "gap", "{events:?}");
    assert_eq!(events[0].data["kind"], "alerts");
    assert_eq!(events[0].data["from_seq"], 1001);
    assert_eq!(events[0].data["to_seq"], 1002);
    assert_eq!(events[0].data["reason"], "expired");
    let replayed: Vec<u64> = events[1..].iter().filter_map(|e| e.id).collect();
    assert_eq!(replayed, [1003, 1004]);
}

#[tokio::test]
async fn streams_end_on_shutdown() {
    let h = harness(LiveSettings::default()).await;
    let mut stream = Stream::open(&h, "/v1/stream", None).await;
    stream.events(QUIET).await;
    h.state.live.shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.body.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the body ends when the API shuts down");
}

#[tokio::test]
async fn the_map_page_and_its_assets_are_served() {
    let h = harness(LiveSettings::default()).await;
    let get = |uri: &'static str| {
        let app = router(h.state.clone());
        async move {
            let response = app
                .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
                .await
                .expect("response");
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            (
                status,
                content_type,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    let (status, content_type, html) = get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(
        html.contains(r#"<script id="fleetd-config" type="application/json">{"tile_url":null"#),
        "{html}"
    );
    // Only same-origin, relative URLs: nothing from a CDN.
    assert!(!html.contains("http://") && !html.contains("https://"));
    for asset in [
        "/assets/leaflet.js",
        "/assets/leaflet.css",
        "/assets/map.js",
        "/assets/map.css",
    ] {
        let (status, _, body) = get(asset).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(body.len() > 1000, "{asset}");
    }
    let (status, _, body) = get("/assets/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("not_found"));
}

#[test]
fn tile_config_is_escaped_into_the_page() {
    let html = crate::routes::map::render_index(&MapSettings {
        tile_url: Some("https://t.example/{z}/{x}/{y}.png".into()),
        tile_attribution: Some("</script><b>x</b>".into()),
    });
    assert!(html.contains(r#""tile_url":"https://t.example/{z}/{x}/{y}.png""#));
    assert!(!html.contains("</script><b>"));
}
