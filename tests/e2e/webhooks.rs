//! Webhooks end to end, against a real receiver on 127.0.0.1 that checks
//! every signature with `standardwebhooks` (the Standard Webhooks reference
//! library) and fails on purpose (tests/e2e/webhook_receiver.py): every
//! alert delivered at least once and in order per device, retries after
//! failures, filters, a slow receiver that does not hold up storage, a
//! dead receiver's alerts kept as dead letters, the queue surviving
//! `kill -9`, and nothing delivered to a hook after it is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Fleetd, free_port, now_ms};

const LAT: f64 = 52.5;
const LON: f64 = 13.4;
/// The signing secret every hook here shares (24 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Python with standardwebhooks that scripts/test makes.
fn python() -> String {
    std::env::var("FLEETD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FLEETD_TEST_PYTHON is not set: run scripts/test, which installs standardwebhooks for this test"
        )
    })
}

/// The receiver process; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    down_flag: PathBuf,
}

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    id: String,
    verified: bool,
    status: u16,
    device: String,
    kind: String,
    ts_ms: i64,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let log = dir.join("received.jsonl");
        let down_flag = dir.join("down");
        std::fs::write(&down_flag, b"down").expect("flag");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/webhook_receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(SECRET)
            .arg(&log)
            .arg(&down_flag)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver port");
        let port = line.trim().parse().expect("a port number");
        Receiver {
            child,
            port,
            log,
            down_flag,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Seen {
                path: v["path"].as_str().unwrap_or_default().to_owned(),
                id: v["id"].as_str().unwrap_or_default().to_owned(),
                verified: v["verified"].as_bool().unwrap_or(false),
                status: v["status"].as_u64().unwrap_or(0) as u16,
                device: v["device"].as_str().unwrap_or_default().to_owned(),
                kind: v["kind"].as_str().unwrap_or_default().to_owned(),
                ts_ms: v["ts_ms"].as_i64().unwrap_or(0),
            })
            .collect()
    }

    /// Alert ids answered 200 on `path`, in first-delivery order.
    fn delivered(&self, path: &str) -> Vec<Seen> {
        let mut ids = BTreeSet::new();
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && s.status == 200 && ids.insert(s.id.clone()))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `passes` drives of `device` through the depot, alternating west→east
/// and east→west at ~20 m/s, one fix a second from `t0`: an enter and an
/// exit per pass. Returns the time after the last fix.
async fn drive(server: &Fleetd, device: &str, t0: i64, passes: usize) -> i64 {
    let client = server.mqtt_client(&format!("e2e-webhooks-{device}")).await;
    let mut t = t0;
    for pass in 0..passes {
        let fixes: Vec<Value> = (0..100)
            .map(|i| {
                let step = if pass % 2 == 0 { i } else { 99 - i } as f64;
                let lon = LON - 0.015 + step * 0.0003;
                json!({"ts_ms": t + i * 1000, "lat": LAT, "lon": lon, "accuracy_m": 5.0})
            })
            .collect();
        t += 100 * 1000;
        client
            .publish(
                format!("fleet/{device}/pos/batch"),
                rumqttc::QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&fixes).expect("json"),
            )
            .await
            .expect("publish");
    }
    t
}

/// The stored alerts, `(id, device, ts_ms)` by device then time.
async fn stored_alerts(server: &Fleetd) -> Vec<(String, String, i64)> {
    let (status, body) = server.get("/v1/alerts?limit=1000").await;
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, String, i64)> = body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_owned(),
                a["device_id"].as_str().unwrap_or_default().to_owned(),
                a["ts_ms"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.1, a.2).cmp(&(&b.1, b.2)));
    out
}

/// Waits until `path` has had every id of `wanted` delivered; panics with
/// what it got.
async fn wait_delivered(receiver: &Receiver, path: &str, wanted: &BTreeSet<String>, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: BTreeSet<String> = receiver.delivered(path).into_iter().map(|s| s.id).collect();
        if wanted.is_subset(&got) {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = wanted.difference(&got).collect();
            panic!(
                "{path}: {} of {} never delivered: {missing:?}",
                missing.len(),
                wanted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every device's alerts arrived in their order (first deliveries).
fn assert_in_order_per_device(seen: &[Seen], path: &str) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for s in seen {
        let prev = last.insert(&s.device, s.ts_ms).unwrap_or(i64::MIN);
        assert!(
            s.ts_ms >= prev,
            "{path}: {} alert at {} delivered after one at {prev}",
            s.device,
            s.ts_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_webhooks_signed_in_order_through_failures_and_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let receiver = Receiver::start(dir.path());
    // Until the restart, hooks retry (nearly) for ever; after it, three
    // attempts and an alert is a dead letter.
    let config = |name: &str, attempts: u32| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[geofences]\nmin_outside_s = 3.0\n\n[webhooks]\nmax_attempts = {attempts}\n\
                 backoff_initial_ms = 100\nbackoff_max_ms = 400\ntimeout_ms = 5000\n"
            ),
        )
        .expect("config");
        path.to_str().expect("utf-8").to_owned()
    };
    let (patient, impatient) = (
        config("patient.toml", 1_000_000),
        config("impatient.toml", 3),
    );
    let args = |config: &str| {
        [
            "--window-ms".to_owned(),
            "200".to_owned(),
            "--config".to_owned(),
            config.to_owned(),
        ]
    };
    let patient_args = args(&patient);
    let patient_args: Vec<&str> = patient_args.iter().map(String::as_str).collect();
    let impatient_args = args(&impatient);
    let impatient_args: Vec<&str> = impatient_args.iter().map(String::as_str).collect();
    let mut server = Fleetd::start(&data, &patient_args).await;

    let fence = json!({"center": [LON, LAT], "radius_m": 300.0, "properties": {"name": "Depot"}});
    assert_eq!(server.put("/v1/geofences/depot", &fence).await.0, 201);

    // Bad hooks are 400s naming the problem.
    for (body, needle) in [
        (json!({"url": "ftp://example.com/"}), "http"),
        (json!({"url": "not a url"}), "http"),
        (json!({"url": "http://x/", "secret": "nope"}), "whsec_"),
        (
            json!({"url": "http://x/", "filter": {"kinds": ["teleport"]}}),
            "teleport",
        ),
        (json!({"url": "http://x/", "colour": "red"}), "colour"),
    ] {
        let (status, reply) = server.put("/v1/webhooks/bad", &body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(
        server
            .put("/v1/webhooks/bad%20id", &json!({"url": "http://x/"}))
            .await
            .0,
        400
    );

    // A read token may not manage hooks: they send alerts anywhere.
    let (status, token) = server
        .client
        .post(format!("{}/v1/tokens", server.http))
        .json(&json!({"name": "dashboard", "scopes": ["read"]}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .expect("token");
    assert_eq!(status, 201);
    let token: Value = token.json().await.expect("token json");
    let reader = crate::util::authorized_client(token["token"].as_str().expect("token"));
    let refused = reader
        .put(format!("{}/v1/webhooks/x", server.http))
        .json(&json!({"url": "http://127.0.0.1:9/"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(refused.status(), 403);

    let hooks = [
        ("flaky", receiver.url("/flaky"), json!({})),
        ("slow", receiver.url("/slow"), json!({})),
        ("down", receiver.url("/down"), json!({})),
        (
            "car-2-exits",
            receiver.url("/ok"),
            json!({"devices": ["car-2"], "kinds": ["exit"]}),
        ),
    ];
    for (id, url, filter) in &hooks {
        let (status, saved) = server
            .put(
                &format!("/v1/webhooks/{id}"),
                &json!({"url": url, "filter": filter, "secret": SECRET}),
            )
            .await;
        assert_eq!(status, 201, "{saved}");
        assert_eq!(saved["secret"], SECRET);
    }
    let (_, one) = server.get("/v1/webhooks/flaky").await;
    assert!(one.get("secret").is_none(), "GET shows no secret: {one}");

    // Two cars, four passes each: 8 alerts each. The slow hook takes 2 s an
    // alert; storage does not wait for it.
    let t0 = now_ms() - 900_000;
    let published = Instant::now();
    let end1 = drive(&server, "car-1", t0, 4).await;
    drive(&server, "car-2", t0, 4).await;
    let visible = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, v) = server.get("/v1/vehicles/car-1").await;
            (v["ts_ms"].as_i64() == Some(end1 - 1000)).then_some(())
        })
        .await;
    assert!(visible.is_some(), "car-1's last fix was not stored");
    let stored_after = published.elapsed();
    let alerts = server
        .wait_for(Duration::from_secs(15), || async {
            let a = stored_alerts(&server).await;
            (a.len() >= 16).then_some(a)
        })
        .await
        .unwrap_or_else(|| panic!("16 alerts not raised; log:\n{}", server.log()));
    assert_eq!(alerts.len(), 16, "{alerts:?}");
    let all: BTreeSet<String> = alerts.iter().map(|a| a.0.clone()).collect();
    assert!(
        stored_after < Duration::from_secs(3),
        "storing took {stored_after:?} with a slow webhook"
    );

    // Every alert reaches the flaky receiver (each after a failed first
    // attempt), in order per device, every signature good.
    wait_delivered(&receiver, "/flaky", &all, 30).await;
    let flaky = receiver.delivered("/flaky");
    assert_in_order_per_device(&flaky, "/flaky");
    for id in &all {
        let attempts = receiver
            .seen()
            .iter()
            .filter(|s| s.path == "/flaky" && &s.id == id)
            .count();
        assert!(attempts >= 2, "{id}: {attempts} attempts, the first fails");
    }
    assert_eq!(flaky.iter().filter(|s| s.device == "car-2").count(), 8);
    server
        .wait_for(Duration::from_secs(10), || async {
            (receiver.delivered("/ok").len() >= 4).then_some(())
        })
        .await
        .expect("car-2's exits");
    // Anything the filter should have kept out would have come by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = receiver.delivered("/ok");
    assert_eq!(ok.len(), 4, "only car-2's 4 exits pass that filter: {ok:?}");
    assert!(
        ok.iter().all(|s| s.device == "car-2" && s.kind == "exit"),
        "{ok:?}"
    );
    assert!(
        receiver.seen().iter().all(|s| s.verified),
        "a signature did not verify: {:?}",
        receiver.seen().iter().find(|s| !s.verified)
    );

    let metrics = server.get_text("/metrics").await;
    let metric = |series: &str| crate::util::parse_metric(&metrics, series);
    assert!(metric(r#"fleetd_webhook_deliveries_total{hook="flaky",result="delivered"}"#) >= 16.0);
    assert!(metric(r#"fleetd_webhook_deliveries_total{hook="flaky",result="failed"}"#) >= 16.0);
    assert!(metrics.contains("fleetd_webhook_delivery_seconds_count{hook=\"flaky\"}"));

    // The down receiver has everything pending; kill -9 and restart: the
    // queue is still there, and is delivered once the receiver is back.
    let (_, down) = server.get("/v1/webhooks/down").await;
    assert_eq!(down["pending"], 16, "{down}");
    assert!(receiver.delivered("/down").is_empty());
    server.crash();
    std::fs::remove_file(&receiver.down_flag).expect("receiver up");
    let server = Fleetd::start(&data, &impatient_args).await;
    wait_delivered(&receiver, "/down", &all, 30).await;
    assert_in_order_per_device(&receiver.delivered("/down"), "/down");

    // A receiver nobody runs: its alerts become dead letters.
    let dead_port = free_port();
    let (status, _) = server
        .put(
            "/v1/webhooks/dead",
            &json!({"url": format!("http://127.0.0.1:{dead_port}/"), "secret": SECRET}),
        )
        .await;
    assert_eq!(status, 201);

    // Deleted hooks get nothing more: one more pass of car-2 reaches the
    // hooks still there, not these.
    assert_eq!(server.delete("/v1/webhooks/flaky").await, 204);
    assert_eq!(server.delete("/v1/webhooks/car-2-exits").await, 204);
    assert_eq!(server.delete("/v1/webhooks/flaky").await, 404);
    assert_eq!(server.get("/v1/webhooks/flaky").await.0, 404);
    let before_flaky = receiver
        .seen()
        .iter()
        .filter(|s| s.path != "/down" && s.path != "/slow")
        .count();
    drive(&server, "car-2", t0 + 400_000, 1).await;
    let newer: BTreeSet<String> = server
        .wait_for(Duration::from_secs(15), || async {
            let ids: BTreeSet<String> = stored_alerts(&server)
                .await
                .into_iter()
                .map(|a| a.0)
                .filter(|id| !all.contains(id))
                .collect();
            (ids.len() >= 2).then_some(ids)
        })
        .await
        .expect("the last pass raised its alerts");
    wait_delivered(&receiver, "/down", &newer, 20).await;
    let after = receiver.seen();
    assert!(
        after
            .iter()
            .all(|s| !(newer.contains(&s.id) && (s.path == "/flaky" || s.path == "/ok"))),
        "a deleted hook got an alert"
    );
    assert_eq!(
        after
            .iter()
            .filter(|s| s.path != "/down" && s.path != "/slow")
            .count(),
        before_flaky,
        "nothing more reached /flaky or /ok"
    );
    // The dead receiver's alerts become dead letters after 3 attempts each (the last pass's two).
    let dead = server
        .wait_for(Duration::from_secs(40), || async {
            let (_, page) = server.get("/v1/webhooks/dead/dead-letters?limit=100").await;
            (page["count"].as_u64() == Some(2)).then_some(page)
        })
        .await;
    let Some(dead) = dead else {
        panic!("dead letters: {:?}", server.get("/v1/webhooks/dead").await);
    };
    for letter in dead["dead_letters"].as_array().expect("letters") {
        assert_eq!(letter["reason"], "failed", "{letter}");
        assert_eq!(letter["attempts"], 3, "{letter}");
        assert_eq!(letter["last_error"], "connection failed", "{letter}");
    }
    let (_, dead_hook) = server.get("/v1/webhooks/dead").await;
    assert_eq!(
        (
            dead_hook["pending"].clone(),
            dead_hook["dead_letters"].clone()
        ),
        (json!(0), json!(2))
    );
    let metrics = server.get_text("/metrics").await;
    assert_eq!(
        crate::util::parse_metric(
            &metrics,
            r#"fleetd_webhook_dead_letters_total{hook="dead",reason="failed"}"#
        ),
        2.0
    );
    let (_, list) = server.get("/v1/webhooks").await;
    let ids: Vec<&str> = list["webhooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter_map(|h| h["id"].as_str())
        .collect();
    assert_eq!(ids, ["dead", "down", "slow"]);
    drop(server);
}
