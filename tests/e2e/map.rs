//! The map page in a real browser: Debian's headless Chromium, driven over
//! the DevTools protocol (a WebSocket) from this test. With the demo fleet
//! running, the page shows one marker per vehicle (counted in the DOM), the
//! markers move, the heatmap and click-to-inspect work, a screenshot is saved
//! under tests/artifacts/, and every request the page makes stays on
//! fleetd's loopback address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::util::Fleetd;

/// A headless Chromium with a fresh profile; killed on drop.
pub(crate) struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    pub(crate) ws_url: String,
}

impl Browser {
    fn launch() -> Browser {
        Browser::launch_with(&[])
    }

    /// Launches with more command-line switches.
    pub(crate) fn launch_with(extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("chromium is not installed: run scripts/test, which installs it");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium");
        let ws_url = devtools_url(profile.path(), Duration::from_secs(30))
            .expect("chromium did not open its DevTools port");
        Browser {
            child,
            _profile: profile,
            ws_url,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes its DevTools port and browser path to this file.
fn devtools_url(profile: &Path, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Some(format!("ws://127.0.0.1:{port}{path}"));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A DevTools protocol connection attached to one page (flat sessions).
pub(crate) struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub(crate) session: Option<String>,
    /// Events received so far (method, params).
    events: Vec<(String, Value)>,
}

impl Cdp {
    /// Connects to `browser`, opens a blank page and attaches to it with
    /// the Page and Runtime domains on.
    pub(crate) async fn new_page(browser: &Browser) -> Cdp {
        let mut cdp = Cdp::connect(&browser.ws_url).await;
        let target = cdp
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        cdp.session = attached["sessionId"].as_str().map(str::to_owned);
        cdp.call("Page.enable", json!({})).await;
        cdp.call("Runtime.enable", json!({})).await;
        cdp
    }

    pub(crate) async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("DevTools WebSocket");
        Cdp {
            ws,
            next_id: 1,
            session: None,
            events: Vec::new(),
        }
    }

    /// Sends a command (to the attached page, once there is one) and waits
    /// for its result, recording the events that arrive meanwhile.
    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send to DevTools");
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = next else { continue };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
            if let Some(event) = value["method"].as_str() {
                self.events
                    .push((event.to_owned(), value["params"].clone()));
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until `done` accepts its value.
    pub(crate) async fn wait_for(
        &mut self,
        expression: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{expression} stayed at {value} for {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("tests/artifacts");
    dir
}

pub(crate) const MARKERS: &str = "document.querySelectorAll('.fleetd-vehicle').length";
const POSITIONS: &str = "JSON.stringify(Array.from(document.querySelectorAll('.fleetd-vehicle'))\
    .map(e => [e.dataset.device, e.dataset.lat, e.dataset.lon]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_page_shows_the_demo_fleet_moving_in_headless_chromium() {
    let vehicles = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &["--demo", &vehicles.to_string(), "--window-ms", "250"],
    )
    .await;
    let browser = Browser::launch();
    let mut cdp = Cdp::new_page(&browser).await;
    cdp.call("Network.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    // Without a token the page asks to sign in instead of showing a blank map.
    cdp.call("Page.navigate", json!({"url": format!("{}/", server.http)}))
        .await;
    let signin = cdp
        .wait_for(
            "(() => { const b = document.getElementById('signin'); \
             return b && !b.hidden && b.offsetParent !== null ? b.innerText : ''; })()",
            Duration::from_secs(20),
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    let signin = signin.as_str().unwrap_or_default();
    assert!(
        signin.contains("Sign in") && signin.contains("fleetd serve"),
        "sign-in message: {signin:?}"
    );
    // Opened from the URL `fleetd serve` printed, it shows the fleet.
    let url = server.printed_map_url();
    assert!(
        url.starts_with(&format!("{}/#token=fltd_", server.http)),
        "{url}"
    );
    cdp.call("Page.navigate", json!({"url": url})).await;

    // One marker per demo vehicle.
    let count = cdp
        .wait_for(MARKERS, Duration::from_secs(45), |v| {
            v.as_u64() == Some(vehicles)
        })
        .await;
    assert_eq!(count.as_u64(), Some(vehicles));
    let status = cdp
        .wait_for(
            "document.getElementById('status').textContent",
            Duration::from_secs(10),
            |v| v.as_str().is_some_and(|s| s.starts_with("live")),
        )
        .await;
    assert!(status.as_str().is_some_and(|s| s.starts_with("live")));

    // They move between two snapshots.
    let first: Vec<(String, String, String)> =
        serde_json::from_str(cdp.eval(POSITIONS).await.as_str().expect("json")).expect("list");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second: Vec<(String, String, String)> =
        serde_json::from_str(cdp.eval(POSITIONS).await.as_str().expect("json")).expect("list");
    assert_eq!(second.len(), vehicles as usize);
    let moved = second
        .iter()
        .filter(|(id, lat, lon)| {
            first
                .iter()
                .find(|(i, _, _)| i == id)
                .is_some_and(|(_, lat0, lon0)| lat0 != lat || lon0 != lon)
        })
        .count();
    assert!(
        moved * 2 >= vehicles as usize,
        "only {moved} of {vehicles} markers moved in 4 s"
    );
    // The view fits the fleet: every marker is inside the visible map.
    let inside = cdp
        .eval(
            "(() => { const b = fleetd.map.getBounds(); let n = 0; \
             fleetd.vehicles.forEach(e => { if (b.contains(e.marker.getLatLng())) n++; }); return n; })()",
        )
        .await;
    assert_eq!(
        inside.as_u64(),
        Some(vehicles),
        "fits the fleet on first load"
    );

    // Heatmap toggle draws H3 cells from /v1/cells.
    cdp.eval("document.getElementById('heatmap-toggle').click()")
        .await;
    cdp.wait_for(
        "document.querySelectorAll('.fleetd-cell').length",
        Duration::from_secs(10),
        |v| v.as_u64() > Some(0),
    )
    .await;
    // Click a vehicle: its state and recent track.
    cdp.eval("document.querySelector('.fleetd-vehicle').click()")
        .await;
    cdp.wait_for(
        "!document.getElementById('inspect').hidden && document.querySelectorAll('#inspect-fields dt').length > 3 && document.querySelectorAll('.fleetd-track').length === 1",
        Duration::from_secs(10),
        |v| v.as_bool() == Some(true),
    )
    .await;

    // The panel shows the vehicle's state, and keeps it through the live
    // updates that follow (stream events carry the vehicle JSON).
    let state_rows = "(() => { const dts = Array.from(document.querySelectorAll('#inspect-fields dt')).map(d => d.textContent); \
         return dts.includes('motion') && dts.includes('odometer_m'); })()";
    cdp.wait_for(state_rows, Duration::from_secs(10), |v| {
        v.as_bool() == Some(true)
    })
    .await;
    let updated_at = cdp
        .eval("document.querySelector('.fleetd-vehicle.selected').dataset.ts")
        .await;
    cdp.wait_for(
        &format!("document.querySelector('.fleetd-vehicle.selected').dataset.ts !== {updated_at}"),
        Duration::from_secs(10),
        |v| v.as_bool() == Some(true),
    )
    .await;
    assert_eq!(
        cdp.eval(state_rows).await.as_bool(),
        Some(true),
        "motion and odometer stay in the panel after a live update"
    );

    // Alerts: a geofence over the whole city makes every vehicle enter it;
    // after a reload the list holds the stored ones (the vehicles stay
    // inside, so none comes live).
    let fence = json!({
        "type": "Feature",
        "properties": {"name": "city"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [13.0, 52.2], [13.8, 52.2], [13.8, 52.8], [13.0, 52.8], [13.0, 52.2]
        ]]}
    });
    let r = server
        .client
        .put(format!("{}/v1/geofences/city", server.http))
        .json(&fence)
        .send()
        .await
        .expect("PUT geofence");
    assert!(r.status().is_success(), "{}", r.status());
    let stored = server
        .wait_for(Duration::from_secs(20), || async {
            let (_, body) = server.get("/v1/alerts?limit=200").await;
            let n = body["alerts"].as_array().map_or(0, Vec::len);
            (n >= vehicles as usize).then_some(n)
        })
        .await
        .expect("every vehicle entered the fence");
    cdp.call("Page.reload", json!({})).await;
    let shown = cdp
        .wait_for(
            "document.querySelectorAll('#alerts li').length",
            Duration::from_secs(20),
            |v| v.as_u64() >= Some(stored as u64),
        )
        .await;
    let shown = shown.as_u64().unwrap_or(0);
    assert!(
        shown >= stored as u64,
        "{shown} of {stored} stored alerts after a reload"
    );
    let count = cdp
        .eval("document.getElementById('alert-count').textContent")
        .await;
    assert_eq!(count.as_str(), Some(shown.to_string().as_str()));

    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts_dir().join("map.png");
    std::fs::write(&path, &png).expect("write screenshot");

    // No request left fleetd's own origin.
    let origin = format!("{}/", server.http);
    let urls: Vec<String> = cdp
        .events
        .iter()
        .filter(|(method, _)| method == "Network.requestWillBeSent")
        .filter_map(|(_, p)| p["request"]["url"].as_str().map(str::to_owned))
        .collect();
    assert!(urls.iter().any(|u| u.ends_with("/v1/stream")), "{urls:?}");
    assert!(urls.iter().any(|u| u.contains("/v1/cells")), "{urls:?}");
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| !u.starts_with(&origin) && !u.starts_with("data:") && !u.starts_with("about:"))
        .collect();
    assert!(foreign.is_empty(), "requests left 127.0.0.1: {foreign:?}");
    let failed: Vec<&Value> = cdp
        .events
        .iter()
        .filter(|(method, _)| method == "Runtime.exceptionThrown")
        .map(|(_, p)| p)
        .collect();
    assert!(failed.is_empty(), "page errors: {failed:?}");
    eprintln!(
        "screenshot: {} ({} bytes), {} requests",
        path.display(),
        png.len(),
        urls.len()
    );
    drop(browser);
}
