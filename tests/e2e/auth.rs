//! Identity and access on MQTT, through the real binary: credentials issued
//! by `fleetd credentials issue` on the stopped data directory; anonymous
//! and wrong logins refused (rumqttc and mosquitto_pub); the topic ACL drops
//! a device's publish as another device, counted and sampled; denied
//! subscriptions; the per-device rate limit.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::util::{Fleetd, issue, mqtt_client_as, now_ms, run_mosquitto_pub};

/// Connects once and returns the broker's answer to CONNECT.
async fn connect_result(port: u16, id: &str, login: Option<(&str, &str)>) -> Result<(), String> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    if let Some((u, p)) = login {
        options.set_credentials(u, p);
    }
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let poll = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("{code:?}")),
                Err(e) => return Err(format!("error: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

fn position(device: &str, ts_ms: i64, lat: f64) -> Vec<u8> {
    json!({"device_id": device, "ts_ms": ts_ms, "lat": lat, "lon": 13.405})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_logins_need_a_valid_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let logins = issue(&data, &["truck-a"], false);
    let (user, secret) = &logins[0];
    assert_eq!(user, "truck-a");
    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let port = server.mqtt_port;

    let not_authorized = Err(format!("{:?}", ConnectReturnCode::NotAuthorized));
    assert_eq!(connect_result(port, "anon", None).await, not_authorized);
    assert_eq!(
        connect_result(port, "truck-a", Some(("truck-a", "wrong-secret"))).await,
        not_authorized
    );
    assert_eq!(
        connect_result(port, "truck-a", Some(("truck-b", secret))).await,
        not_authorized,
        "a secret works only with its own user name"
    );
    assert_eq!(
        connect_result(port, "truck-a", Some(("truck-a", secret))).await,
        Ok(())
    );

    // The third-party client: refused without credentials, stored with them.
    let t0 = now_ms() - 2_000;
    let out = run_mosquitto_pub(
        port,
        None,
        "fleet/truck-a/pos",
        &position("truck-a", t0, 52.5),
    );
    assert!(!out.status.success(), "anonymous mosquitto_pub must fail");
    let login = (user.clone(), secret.clone());
    let out = run_mosquitto_pub(
        port,
        Some(&login),
        "fleet/truck-a/pos",
        &position("truck-a", t0 + 1, 52.51),
    );
    assert!(
        out.status.success(),
        "mosquitto_pub -u -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get("/v1/vehicles/truck-a").await;
            (status == 200).then_some(body)
        })
        .await
        .expect("truck-a's position stored");
    assert_eq!(stored["ts_ms"], t0 + 1);
    assert!(
        server
            .metric("fleetd_mqtt_connects_total{result=\"wrong_credentials\"}")
            .await
            >= 2.0
    );
    assert!(
        !server.log().contains(secret.as_str()),
        "a secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_may_publish_only_as_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let devices = issue(&data, &["truck-a", "truck-b"], false);
    let alice = issue(&data, &["alice"], true);
    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let port = server.mqtt_port;
    let t0 = now_ms() - 5_000;

    // B has a position of its own before A tries to overwrite it.
    let b = mqtt_client_as(port, "truck-b", Some(&devices[1])).await;
    b.publish(
        "fleet/truck-b/pos",
        QoS::AtLeastOnce,
        false,
        position("truck-b", t0, 48.0),
    )
    .await
    .expect("publish");
    server
        .wait_for(Duration::from_secs(10), || async {
            (server.get("/v1/vehicles/truck-b").await.0 == 200).then_some(())
        })
        .await
        .expect("B stored");

    // A publishes as B (QoS 0 and 1) and as itself; alice as bob.
    let a = mqtt_client_as(port, "truck-a", Some(&devices[0])).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        a.publish(
            "fleet/truck-b/pos",
            qos,
            false,
            position("truck-b", t0 + 1_000, 1.0),
        )
        .await
        .expect("publish");
    }
    let phone = mqtt_client_as(port, "alice-phone", Some(&alice[0])).await;
    let owntracks = json!({"_type": "location", "tst": t0 / 1000 + 2, "lat": 1.0, "lon": 2.0});
    phone
        .publish(
            "owntracks/bob/phone",
            QoS::AtMostOnce,
            false,
            owntracks.to_string(),
        )
        .await
        .expect("publish");
    phone
        .publish(
            "owntracks/alice/phone",
            QoS::AtMostOnce,
            false,
            owntracks.to_string(),
        )
        .await
        .expect("publish");
    a.publish(
        "fleet/truck-a/pos",
        QoS::AtLeastOnce,
        false,
        position("truck-a", t0 + 3_000, 52.0),
    )
    .await
    .expect("publish");

    // Their own positions land; nothing of the forged ones does.
    for id in ["truck-a", "alice%2Fphone"] {
        server
            .wait_for(Duration::from_secs(10), || async {
                (server.get(&format!("/v1/vehicles/{id}")).await.0 == 200).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{id}'s own position stored"));
    }
    let (_, latest_b) = server.get("/v1/vehicles/truck-b").await;
    assert_eq!(latest_b["ts_ms"], t0, "B's latest is unchanged");
    let track_b = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, track) = server.get("/v1/vehicles/truck-b/track").await;
            (!track["items"].as_array()?.is_empty()).then_some(track)
        })
        .await
        .expect("B's track");
    assert_eq!(
        track_b["items"].as_array().map(Vec::len),
        Some(1),
        "{track_b}"
    );
    assert_eq!(track_b["items"][0]["ts_ms"], t0, "{track_b}");
    assert_eq!(server.get("/v1/vehicles/bob%2Fphone").await.0, 404);

    assert_eq!(
        server
            .metric("fleetd_rejected_total{reason=\"not_authorized\"}")
            .await,
        3.0
    );
    let (_, rejections) = server.get("/v1/rejections").await;
    let refused: Vec<&Value> = rejections["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .filter(|r| r["reason"] == "not_authorized")
        .collect();
    assert_eq!(refused.len(), 3, "{rejections}");
    assert!(
        refused.iter().any(|r| r["source"] == "fleet/truck-b/pos"
            && r["device_id"] == "truck-b"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("device truck-a"))),
        "{rejections}"
    );
    assert!(
        refused.iter().any(|r| r["source"] == "owntracks/bob/phone"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("user alice"))),
        "{rejections}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_may_not_subscribe_to_another_devices_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let devices = issue(&data, &["truck-a"], false);
    let server = Fleetd::start(&data, &[]).await;

    let mut options = MqttOptions::new("truck-a", "127.0.0.1", server.mqtt_port);
    options.set_credentials(devices[0].0.clone(), devices[0].1.clone());
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("fleet/truck-b/alerts".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("fleet/+/alerts".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("fleet/truck-a/alerts".into(), QoS::AtLeastOnce),
        ])
        .await
        .expect("subscribe");
    let codes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(ack))) = eventloop.poll().await {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("SUBACK");
    use rumqttc::SubscribeReasonCode::{Failure, Success};
    assert_eq!(codes, [Failure, Failure, Success(QoS::AtLeastOnce)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_limit_loses_only_the_excess() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[ingest]\ndevice_rate_per_s = 0.5\ndevice_burst = 5\n",
    )
    .expect("config");
    let devices = issue(&data, &["fast", "calm"], false);
    let config = config.to_str().expect("utf-8");
    let server = Fleetd::start(&data, &["--window-ms", "200", "--config", config]).await;
    let t0 = now_ms() - 60_000;

    let fast = mqtt_client_as(server.mqtt_port, "fast", Some(&devices[0])).await;
    let calm = mqtt_client_as(server.mqtt_port, "calm", Some(&devices[1])).await;
    for i in 0..20 {
        fast.publish(
            "fleet/fast/pos",
            QoS::AtMostOnce,
            false,
            position("fast", t0 + i * 1_000, 52.0 + i as f64 * 1e-4),
        )
        .await
        .expect("publish");
    }
    for i in 0..3 {
        calm.publish(
            "fleet/calm/pos",
            QoS::AtLeastOnce,
            false,
            position("calm", t0 + i * 1_000, 48.0 + i as f64 * 1e-4),
        )
        .await
        .expect("publish");
    }
    let count = |id: &'static str| {
        let server = &server;
        async move {
            let (_, track) = server.get(&format!("/v1/vehicles/{id}/track")).await;
            track["items"].as_array().map_or(0, Vec::len)
        }
    };
    // Every message is either stored or counted as over the limit.
    let (fast_stored, limited) = server
        .wait_for(Duration::from_secs(10), || async {
            let limited = server
                .metric("fleetd_rejected_total{reason=\"rate_limited\"}")
                .await;
            let stored = count("fast").await;
            (stored as f64 + limited == 20.0).then_some((stored, limited))
        })
        .await
        .expect("20 messages: stored + rate_limited");
    // Burst 5, plus a token or two refilled (0.5/s) while they went out
    // on a slow machine.
    assert!(
        (5..=7).contains(&fast_stored),
        "{fast_stored} stored, {limited} limited"
    );
    let calm_stored = server
        .wait_for(Duration::from_secs(10), || async {
            (count("calm").await == 3).then_some(())
        })
        .await;
    assert!(calm_stored.is_some(), "the calm device lost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_secret_closes_its_session_and_refuses_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let old = issue(&data, &["truck-a"], false).remove(0);
    let server = Fleetd::start(&data, &[]).await;
    let port = server.mqtt_port;

    // A session open with the old secret, watched until it ends.
    let mut options = MqttOptions::new("truck-a", "127.0.0.1", port);
    options.set_credentials(old.0.clone(), old.1.clone());
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let session = tokio::spawn(async move {
        let mut up_tx = Some(up_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = up_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => return (up_tx.is_none(), e.to_string()),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), up_rx)
        .await
        .expect("the session comes up")
        .expect("CONNACK before the session ended");

    let r = server
        .client
        .post(format!("{}/v1/devices/truck-a/credentials", server.http))
        .send()
        .await
        .expect("rotate");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let fresh: Value = r.json().await.expect("json");
    let new_secret = fresh["password"].as_str().expect("password");
    assert_ne!(new_secret, old.1);

    let (connected, ended) = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the old session is closed at once")
        .expect("session task");
    assert!(connected, "the old session had been up: {ended}");
    let not_authorized = Err(format!("{:?}", ConnectReturnCode::NotAuthorized));
    assert_eq!(
        connect_result(port, "truck-a", Some(("truck-a", &old.1))).await,
        not_authorized
    );
    assert_eq!(
        connect_result(port, "truck-a", Some(("truck-a", new_secret))).await,
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_a_token_with_the_scope_and_cors_grants_only_listed_origins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(&config, "[api]\ncors_origins = [\"http://dash.example\"]\n").expect("config");
    let config = config.to_str().expect("utf-8");
    let server = Fleetd::start(&dir.path().join("data"), &["--config", config]).await;
    let plain = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.http);

    // No token: 401 with the challenge, in the JSON error shape.
    let r = plain.get(url("/v1/vehicles/x")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .is_ok_and(|v| v.starts_with("Bearer"))
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    // Open routes stay open.
    for path in ["/healthz", "/readyz", "/openapi.json", "/"] {
        let status = plain.get(url(path)).send().await.expect("get").status();
        assert_eq!(status, 200, "{path}");
    }
    // A read token reads, and may not write or administer.
    let r = server
        .client
        .post(url("/v1/tokens"))
        .json(&json!({"name": "dashboard", "scopes": ["read"], "expires_in_s": 3600}))
        .send()
        .await
        .expect("create token");
    assert_eq!(r.status(), 201);
    let read = r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let reader = crate::util::authorized_client(&read);
    assert_eq!(
        reader
            .get(url("/v1/vehicles/x"))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    assert_eq!(
        reader
            .get(url("/metrics"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let fence = json!({"center": [13.4, 52.5], "radius_m": 50});
    let r = reader
        .put(url("/v1/geofences/g"))
        .json(&fence)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 403);
    let r = reader.get(url("/v1/tokens")).send().await.expect("get");
    assert_eq!(r.status(), 403);
    // The token list shows no secrets.
    let listed = server
        .client
        .get(url("/v1/tokens"))
        .send()
        .await
        .expect("list");
    let listed = listed.text().await.expect("body");
    assert!(
        listed.contains("dashboard") && !listed.contains(&read),
        "{listed}"
    );

    // CORS: a listed origin is granted, another is not.
    let preflight = |origin: &'static str| {
        plain
            .request(reqwest::Method::OPTIONS, url("/v1/vehicles/x"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let granted = preflight("http://dash.example").await.expect("preflight");
    assert_eq!(
        granted
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().ok()),
        Some(Some("http://dash.example"))
    );
    let refused = preflight("http://evil.example").await.expect("preflight");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let r = reader
        .get(url("/v1/vehicles/x"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .expect("get");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A foreign page's stream is refused even with a token.
    let r = reader
        .get(url("/v1/stream"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 403);
}

/// Every operation of the served OpenAPI document, called on the real
/// binary with no token and with read, write and admin tokens: each answer
/// is the one its `security` and `x-fleetd-scope` say (401 without a token,
/// 403 below the scope, neither at or above it; open routes never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_401_and_403_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    let (status, spec) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    let mut tokens = vec![(0u8, None)];
    for (rank, scope) in [(1u8, "read"), (2, "write")] {
        let r = server
            .client
            .post(format!("{}/v1/tokens", server.http))
            .json(&json!({"name": format!("matrix {scope}"), "scopes": [scope]}))
            .send()
            .await
            .expect("create token");
        assert_eq!(r.status(), 201);
        let token = r.json::<Value>().await.expect("json")["token"]
            .as_str()
            .expect("token")
            .to_owned();
        tokens.push((rank, Some(token)));
    }
    tokens.push((3, server.admin_token.clone()));
    let plain = reqwest::Client::new();
    let mut checked = 0;
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            let open = op["security"].as_array().is_some_and(Vec::is_empty);
            let needed = match op["x-fleetd-scope"].as_str() {
                Some("read") => 1,
                Some("write") => 2,
                Some("admin") => 3,
                _ => 0,
            };
            assert!(
                open == (needed == 0),
                "{method} {path}: security and scope disagree"
            );
            let url = format!(
                "{}{}",
                server.http,
                path.replace("{id}", "matrix-x")
                    .replace("{trip}", "1")
                    .replace("{user}", "matrix-u")
                    .replace("{name}", "map.js")
            );
            for (rank, token) in &tokens {
                let mut request = plain
                    .request(method.clone(), &url)
                    .timeout(Duration::from_secs(10));
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                if method == reqwest::Method::POST || method == reqwest::Method::PUT {
                    request = request.json(&json!({}));
                }
                let status = request.send().await.expect("request").status().as_u16();
                let expected = match (needed, rank) {
                    (0, _) => None,
                    (_, 0) => Some(401),
                    (n, r) if r < &n => Some(403),
                    _ => None,
                };
                match expected {
                    Some(code) => assert_eq!(status, code, "{method} {path} with rank {rank}"),
                    None => assert!(
                        status != 401 && status != 403,
                        "{method} {path} with rank {rank}: {status}"
                    ),
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4 * 30,
        "only {checked} calls: is the document complete?"
    );
}
