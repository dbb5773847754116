//! Live streams end to end: a real SSE client (reqwest, parsing the event
//! stream) and a real WebSocket client (tokio-tungstenite) against the real
//! server: filters, resume by sequence number, gaps, heartbeats, bad
//! parameters, the heatmap, a client that never reads, and shutdown with
//! streams open.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Fleetd, now_ms, parse_metric};

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A minimal SSE client over a streaming reqwest response.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pub comments: usize,
}

impl SseClient {
    pub async fn connect(server: &Fleetd, path: &str, last_event_id: Option<&str>) -> SseClient {
        Self::connect_as(
            &server.client,
            &format!("{}{}", server.http, path),
            last_event_id,
        )
        .await
    }

    /// [`SseClient::connect`] with `client` (its own token) to `url`.
    pub async fn connect_as(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let path = url;
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        SseClient {
            body: Box::pin(response.bytes_stream()),
            buf: String::new(),
            comments: 0,
        }
    }

    /// Whether the server ends the stream within `timeout` (events on the
    /// way are read and dropped).
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next event (comments skipped), or None on timeout or end.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_owned()),
                        "event" => event.event = value.to_owned(),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            any = true;
                        }
                        _ => {}
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

async fn publish(client: &rumqttc::AsyncClient, device: &str, ts_ms: i64, lat: f64, lon: f64) {
    let payload = json!({"ts_ms": ts_ms, "lat": lat, "lon": lon, "speed_mps": 5.0}).to_string();
    client
        .publish(
            format!("fleet/{device}/pos"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("publish");
}

/// Publishes and waits until the position is the device's latest, so that
/// each call is its own batch (and its own live event).
async fn publish_stored(
    server: &Fleetd,
    client: &rumqttc::AsyncClient,
    device: &str,
    ts_ms: i64,
    lat: f64,
    lon: f64,
) {
    publish(client, device, ts_ms, lat, lon).await;
    let stored = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, body) = server.get(&format!("/v1/vehicles/{device}")).await;
            (body["ts_ms"].as_i64() == Some(ts_ms)).then_some(())
        })
        .await;
    assert!(stored.is_some(), "{device} {ts_ms} never stored");
}

const BERLIN: (f64, f64) = (52.52, 13.405);
const PARIS: (f64, f64) = (48.857, 2.352);
const BERLIN_BBOX: &str = "13.0,52.0,14.0,53.0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_bbox_filter_and_resume_with_last_event_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "100"]).await;
    let mqtt = server.mqtt_client("live-sse-pub").await;
    // Registry fields travel in the stream, as in GET /v1/vehicles/{id}.
    let r = server
        .client
        .put(format!("{}/v1/devices/berlin-1", server.http))
        .json(&json!({"name": "Truck 7", "class": "truck", "tags": {"depot": "north"}}))
        .send()
        .await
        .expect("PUT device");
    assert!(r.status().is_success(), "{}", r.status());
    let path = format!("/v1/stream?bbox={BERLIN_BBOX}&kinds=positions");
    let mut sse = SseClient::connect(&server, &path, None).await;
    let t0 = now_ms() - 60_000;
    for k in 0..2 {
        publish(
            &mqtt,
            "berlin-1",
            t0 + k * 1000,
            BERLIN.0,
            BERLIN.1 + k as f64 * 1e-4,
        )
        .await;
        publish(&mqtt, "paris-1", t0 + k * 1000, PARIS.0, PARIS.1).await;
    }
    let mut last_id = None;
    let mut seen = Vec::new();
    while let Some(e) = sse.next(Duration::from_secs(10)).await {
        assert_eq!(e.event, "position", "{e:?}");
        let v = e.json();
        assert_eq!(v["device_id"], "berlin-1", "bbox filter let through {v}");
        assert!(v["published_ms"].as_i64() > Some(0), "{v}");
        assert!(v["h3"]["7"].is_string(), "{v}");
        // The vehicle JSON, registry fields included (its state comes once
        // the first fixes are past the reorder allowance, below).
        assert_eq!(
            (&v["name"], &v["class"]),
            (&json!("Truck 7"), &json!("truck")),
            "{v}"
        );
        assert_eq!(v["tags"]["depot"], "north", "{v}");
        seen.push(v["ts_ms"].as_i64().expect("ts"));
        last_id = e.id.clone();
        if v["ts_ms"].as_i64() == Some(t0 + 1000) {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&(t0 + 1000)), "saw {seen:?}");
    let last_id = last_id.expect("events carry ids");
    drop(sse);

    // Disconnected: three more positions, each its own batch.
    for k in 2..5 {
        publish_stored(
            &server,
            &mqtt,
            "berlin-1",
            t0 + k * 1000,
            BERLIN.0,
            BERLIN.1,
        )
        .await;
        publish(&mqtt, "paris-1", t0 + k * 1000, PARIS.0, PARIS.1).await;
    }
    let mut sse = SseClient::connect(&server, &path, Some(&last_id)).await;
    let mut resumed = Vec::new();
    let mut ids = Vec::new();
    while let Some(e) = sse.next(Duration::from_millis(1500)).await {
        assert_eq!(e.event, "position", "{e:?}");
        let v = e.json();
        assert_eq!(v["device_id"], "berlin-1");
        resumed.push(v["ts_ms"].as_i64().expect("ts"));
        ids.push(e.id.expect("id").parse::<u64>().expect("numeric id"));
    }
    assert_eq!(
        resumed,
        [t0 + 2000, t0 + 3000, t0 + 4000],
        "each missed position exactly once, in order"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids[0] > last_id.parse::<u64>().expect("numeric"));

    // Past the reorder allowance (2 s) the state has moved on: the next
    // event carries it as GET /v1/vehicles/{id} has it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut sse = SseClient::connect(&server, &path, None).await;
    publish(&mqtt, "berlin-1", t0 + 5000, BERLIN.0, BERLIN.1 + 5e-5).await;
    let v = sse
        .next(Duration::from_secs(10))
        .await
        .expect("an event for the next fix")
        .json();
    assert_eq!(v["ts_ms"], t0 + 5000, "{v}");
    assert!(v["motion"].is_string(), "motion: {v}");
    let odometer = v["odometer_m"].as_f64().expect("odometer_m");
    assert!(
        v["state_ts_ms"].as_i64() >= Some(t0 + 4000),
        "state after the waited fixes: {v}"
    );
    let (_, detail) = server.get("/v1/vehicles/berlin-1").await;
    assert_eq!(
        detail["odometer_m"].as_f64(),
        Some(odometer),
        "{detail} vs {v}"
    );
    assert_eq!(detail["motion"], v["motion"], "{detail} vs {v}");
    drop(sse);

    // A stream that is open does not hold up shutdown.
    let status = server.interrupt();
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_before_the_start_reports_a_gap_and_heartbeats_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(&config, "[live]\nheartbeat_s = 1\n").expect("config");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &[
            "--window-ms",
            "100",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
    .await;
    let mut sse = SseClient::connect(&server, "/v1/stream?since=1", None).await;
    let gaps: Vec<Value> = [
        sse.next(Duration::from_secs(5)).await,
        sse.next(Duration::from_secs(5)).await,
    ]
    .into_iter()
    .map(|e| {
        let e = e.expect("gap event");
        assert_eq!(e.event, "gap", "{e:?}");
        assert!(e.id.is_none(), "gaps carry no id: {e:?}");
        e.json()
    })
    .collect();
    let kinds: Vec<&str> = gaps.iter().filter_map(|g| g["kind"].as_str()).collect();
    assert_eq!(kinds, ["positions", "alerts"]);
    for g in &gaps {
        assert_eq!(g["reason"], "before_start", "{g}");
        assert_eq!(g["from_seq"], 2, "{g}");
        assert!(
            g["message"].as_str().is_some_and(|m| m.contains("missed")),
            "{g}"
        );
    }
    // Idle: heartbeat comments arrive every second.
    let before = sse.comments;
    assert!(sse.next(Duration::from_millis(2500)).await.is_none());
    assert!(
        sse.comments >= before + 2,
        "{} heartbeats",
        sse.comments - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_devices_filter_since_and_pings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(&config, "[live]\nheartbeat_s = 1\n").expect("config");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &[
            "--window-ms",
            "100",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
    .await;
    let ws_base = server.http.replace("http://", "ws://");
    let mqtt = server.mqtt_client("live-ws-pub").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &server,
        format!("{ws_base}/v1/ws?devices=car-1"),
    ))
    .await
    .expect("websocket connects");
    let t0 = now_ms() - 60_000;
    publish_stored(&server, &mqtt, "car-2", t0, PARIS.0, PARIS.1).await;
    publish_stored(&server, &mqtt, "car-1", t0, PARIS.0, PARIS.1).await;
    let mut pinged = false;
    let first = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("valid");
        match message {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).expect("json"),
            Message::Ping(_) => pinged = true,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(first["type"], "position", "{first}");
    assert_eq!(
        first["data"]["device_id"], "car-1",
        "devices filter: {first}"
    );
    let since = first["seq"].as_u64().expect("seq");
    ws.close(None).await.expect("close");

    publish_stored(&server, &mqtt, "car-1", t0 + 1000, PARIS.0, PARIS.1).await;
    publish_stored(&server, &mqtt, "car-2", t0 + 1000, PARIS.0, PARIS.1).await;
    publish_stored(&server, &mqtt, "car-1", t0 + 2000, PARIS.0, PARIS.1).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &server,
        format!("{ws_base}/v1/ws?devices=car-1&since={since}"),
    ))
    .await
    .expect("websocket reconnects");
    let mut resumed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            continue;
        };
        match message {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(v["type"], "position", "{v}");
                assert!(v["seq"].as_u64() > Some(since));
                resumed.push(v["data"]["ts_ms"].as_i64().expect("ts"));
            }
            Message::Ping(_) => pinged = true,
            _ => {}
        }
    }
    assert_eq!(resumed, [t0 + 1000, t0 + 2000]);
    assert!(pinged, "the server pings idle WebSocket clients");
    ws.send(Message::Close(None)).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_and_cells_parameters_are_400_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    for (path, expected) in [
        ("/v1/stream?bbox=1,2,3", "bbox must be four"),
        ("/v1/stream?kinds=positions,trips", "kinds must be"),
        ("/v1/stream?devices=a%20b", "devices"),
        ("/v1/stream?geofence=a/b", "geofence"),
        ("/v1/stream?since=-4", "since must be a sequence number"),
        ("/v1/ws?bbox=0,91,1,92", "bbox minLat must be in [-90, 90]"),
        ("/v1/ws", "websocket upgrade"),
        ("/v1/cells?res=4", "res must be an integer in [5, 9]"),
        ("/v1/cells?res=7&bbox=x", "bbox"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_lowercase();
        assert!(
            message.contains(&expected.to_lowercase()),
            "{path}: {message}"
        );
    }
    let r = server
        .client
        .get(format!("{}/v1/stream", server.http))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    // The server is still fine.
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_count_live_vehicles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "100"]).await;
    let mqtt = server.mqtt_client("live-cells-pub").await;
    let t0 = now_ms() - 60_000;
    publish_stored(&server, &mqtt, "c-1", t0, BERLIN.0, BERLIN.1).await;
    // Four hours before its move to Paris, so the move is a plausible
    // drive (880 km at 61 m/s) and not a teleport the filter would hold back.
    let c2_t0 = t0 - 4 * 3_600_000;
    publish_stored(&server, &mqtt, "c-2", c2_t0, BERLIN.0, BERLIN.1).await;
    publish_stored(&server, &mqtt, "c-3", t0, PARIS.0, PARIS.1).await;
    let (status, body) = server
        .get(&format!("/v1/cells?res=9&bbox={BERLIN_BBOX}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["res"], 9);
    assert_eq!(body["vehicles"], 2, "{body}");
    let cells = body["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 1, "{body}");
    // The same cell the vehicle JSON names.
    let (_, vehicle) = server.get("/v1/vehicles/c-1").await;
    assert_eq!(cells[0]["cell"], vehicle["h3"]["9"], "{body} {vehicle}");
    // Moving c-2 to Paris moves its count.
    publish_stored(&server, &mqtt, "c-2", t0 + 1000, PARIS.0, PARIS.1).await;
    let (_, body) = server.get("/v1/cells?res=5&format=geojson").await;
    assert_eq!(body["type"], "FeatureCollection");
    let counts: Vec<i64> = body["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| {
            assert_eq!(f["geometry"]["type"], "Polygon");
            f["properties"]["count"].as_i64().expect("count")
        })
        .collect();
    assert_eq!(counts, [2, 1], "{body}");
}

/// Resident memory of the fleetd serving `http`, in KiB (found by its command line).
fn rss_kib(http: &str) -> u64 {
    let needle = http.trim_start_matches("http://");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("serve")
            && cmdline.contains(needle)
            && cmdline.contains("fleetd")
            && let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok())
        {
            return crate::util::rss_bytes(pid) / 1024;
        }
    }
    panic!("no fleetd process serving {http}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_while_others_keep_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[live]\nclient_buffer_bytes = 262144\n[demo]\nrate_hz = 5.0\n",
    )
    .expect("config");
    let vehicles = 300;
    let mut server = Fleetd::start(
        &dir.path().join("data"),
        &[
            "--window-ms",
            "200",
            "--demo",
            &vehicles.to_string(),
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
    .await;
    let mut good = SseClient::connect(&server, "/v1/stream?kinds=positions", None).await;
    // Wait until every demo vehicle is connected and publishing (each logs
    // in with its own credential first), then a moment more, so that the
    // baseline is taken after start-up and not during it.
    let mut heard = std::collections::HashSet::new();
    while heard.len() < vehicles {
        let Some(event) = good.next(Duration::from_secs(30)).await else {
            panic!("no demo events; log:\n{}", server.log());
        };
        if let Some(id) = event.json()["device_id"].as_str() {
            heard.insert(id.to_owned());
        }
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        good.next(Duration::from_millis(200)).await;
    }
    // A control window without the slow client: the store's memtables and
    // caches grow on their own while the fleet publishes; that growth is
    // not the slow client's.
    let rss_control = rss_kib(&server.http);
    let control = Instant::now();
    while control.elapsed() < Duration::from_secs(8) {
        good.next(Duration::from_millis(200)).await;
    }
    let rss_before = rss_kib(&server.http);
    let normal_kib_per_s =
        (rss_before as f64 - rss_control as f64).max(0.0) / control.elapsed().as_secs_f64();

    // The slow client: a tiny receive buffer and never a read.
    let addr: std::net::SocketAddr = server
        .http
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut slow = socket.connect(addr).await.expect("connect");
    let authorization = server
        .admin_token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: fleetd\r\nAccept: text/event-stream\r\n{authorization}\r\n"
    );
    slow.write_all(request.as_bytes()).await.expect("request");

    // Meanwhile the good client keeps receiving at full rate, second by second.
    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut dropped_at = None;
    while started.elapsed() < Duration::from_secs(60) {
        let second = Instant::now();
        let mut n = 0;
        while second.elapsed() < Duration::from_secs(1) {
            if good.next(Duration::from_millis(200)).await.is_some() {
                n += 1;
            }
        }
        per_second.push(n);
        let dropped = parse_metric(
            &server.get_text("/metrics").await,
            "fleetd_live_dropped_clients_total{transport=\"sse\",reason=\"slow\"}",
        );
        if dropped >= 1.0 {
            dropped_at = Some(started.elapsed());
            break;
        }
    }
    let dropped_at = dropped_at.unwrap_or_else(|| {
        panic!(
            "the slow client was never dropped; per second {per_second:?}; log:\n{}",
            server.log()
        )
    });
    let rss_after = rss_kib(&server.http);
    // After the drop the good client still gets everything.
    let mut after = 0;
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        if good.next(Duration::from_millis(200)).await.is_some() {
            after += 1;
        }
    }
    let log = server.log();
    assert!(
        log.contains("dropping slow live client") && log.contains("per-client limit"),
        "the drop is logged with its reason; log:\n{log}"
    );
    // The slow client's connection is closed: reading drains what the
    // kernel buffered, then ends.
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow connection still open");
    // Vehicles report every 200 ms at most (5 Hz, 200 ms window): ~1500
    // events/s; "full rate" allowing for a loaded test machine.
    let expected = vehicles as f64 * 5.0;
    let full = |n: usize| n as f64 >= expected * 0.5;
    let slow_seconds: Vec<_> = per_second.iter().filter(|n| !full(**n)).collect();
    assert!(
        slow_seconds.len() <= 1,
        "the good client kept up every second: {per_second:?} (dropped after {dropped_at:?})"
    );
    assert!(full(after / 2), "after the drop: {after} in 2 s");
    let growth_mib = (rss_after as f64 - rss_before as f64) / 1024.0;
    let normal_mib = normal_kib_per_s * dropped_at.as_secs_f64() / 1024.0;
    assert!(
        growth_mib - normal_mib < 64.0,
        "RSS grew {growth_mib:.1} MiB ({rss_before} -> {rss_after} KiB) while a client did not read, \
         {normal_mib:.1} MiB of it the growth without one ({rss_control} KiB 8 s before)"
    );
    eprintln!(
        "slow client dropped after {dropped_at:?}; good client per second {per_second:?}, {after} in the 2 s after; RSS {rss_before} -> {rss_after} KiB"
    );
    let status = server.interrupt();
    assert!(status.success(), "{status:?}");
}

/// A WebSocket handshake request for `url` that carries the test's admin
/// token (non-browser clients send it as a header).
fn ws_request(
    server: &Fleetd,
    url: String,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("websocket URL");
    if let Some(token) = &server.admin_token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    request
}
