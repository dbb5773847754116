//! HTTP ingest through the real binary: an OwnTracks app in HTTP mode and a
//! client posting fleetd JSON, read back from `GET /v1/vehicles/{id}`; bad
//! input is a 400 JSON error, counted and sampled; positions answered 202
//! just before a stop are stored by the drain.

use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Fleetd, issue, now_ms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owntracks_http_mode_and_json_positions_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let alice = issue(&data, &["alice"], true);
    let alice_secret = alice[0].1.clone();
    let mut server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let url = format!("{}/v1/positions", server.http);

    // What the OwnTracks app sends in HTTP mode: basic auth, the user and
    // device headers, the location JSON.
    let tst = now_ms() / 1000 - 5;
    let r = server
        .client
        .post(&url)
        .basic_auth("alice", Some(&alice_secret))
        .header("X-Limit-U", "alice")
        .header("X-Limit-D", "phone")
        .json(
            &json!({"_type": "location", "tid": "ph", "tst": tst, "lat": 48.8566,
                      "lon": 2.3522, "acc": 9, "vel": 18, "cog": 270, "batt": 64,
                      "conn": "m", "t": "u", "topic": "owntracks/alice/phone"}),
        )
        .send()
        .await
        .expect("post owntracks");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json"), json!([]));
    // Alice posting as bob: 403, counted, nothing of it stored.
    let as_bob = json!({"_type": "location", "tst": tst, "lat": 1.0, "lon": 2.0});
    let r = server
        .client
        .post(&url)
        .basic_auth("alice", Some(&alice_secret))
        .header("X-Limit-U", "bob")
        .header("X-Limit-D", "phone")
        .json(&as_bob)
        .send()
        .await
        .expect("post as bob");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"]["code"],
        "not_authorized"
    );
    assert_eq!(
        server
            .metric("fleetd_rejected_total{reason=\"not_authorized\"}")
            .await,
        1.0
    );
    // A wrong password is a 401 with the Basic challenge.
    let r = server
        .client
        .post(&url)
        .basic_auth("alice", Some("not-her-secret"))
        .header("X-Limit-U", "alice")
        .header("X-Limit-D", "phone")
        .json(&as_bob)
        .send()
        .await
        .expect("post wrong password");
    assert_eq!(r.status(), 401);
    // Its other messages are accepted and ignored.
    let r = server
        .client
        .post(&url)
        .header("X-Limit-U", "alice")
        .header("X-Limit-D", "phone")
        .json(&json!({"_type": "transition", "event": "enter", "tst": tst, "desc": "Home"}))
        .send()
        .await
        .expect("post transition");
    assert_eq!(r.status(), 200);

    // fleetd JSON: one position, then an array.
    let t0 = now_ms() - 3_000;
    let r = server
        .client
        .post(&url)
        .json(
            &json!({"device_id": "truck-1", "ts_ms": t0, "lat": 52.52, "lon": 13.405,
                      "speed_mps": 8.3}),
        )
        .send()
        .await
        .expect("post one");
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"accepted": 1, "rejected": []})
    );
    let r = server
        .client
        .post(&url)
        .json(&json!([
            {"device_id": "truck-1", "ts_ms": t0 + 1000, "lat": 52.5201, "lon": 13.4052},
            {"device_id": "truck-1", "ts_ms": t0 + 2000, "lat": 52.5202, "lon": 13.4054},
            {"device_id": "truck-2", "ts_ms": t0 + 2000, "lat": 52.40, "lon": 13.06},
        ]))
        .send()
        .await
        .expect("post many");
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.expect("json")["accepted"], 3);

    let alice = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get("/v1/vehicles/alice%2Fphone").await;
            (status == 200).then_some(body)
        })
        .await
        .expect("alice/phone stored");
    assert_eq!(alice["device_id"], "alice/phone");
    assert_eq!(alice["ts_ms"], tst * 1000);
    assert_eq!(
        (alice["lat"].as_f64(), alice["lon"].as_f64()),
        (Some(48.8566), Some(2.3522))
    );
    let speed = alice["speed_mps"].as_f64().expect("speed");
    assert!((speed - 5.0).abs() < 1e-3, "18 km/h is 5 m/s, got {speed}");
    assert_eq!(alice["battery_pct"], 64.0);

    let truck = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get("/v1/vehicles/truck-1").await;
            (status == 200 && body["ts_ms"] == t0 + 2000).then_some(body)
        })
        .await
        .expect("truck-1 stored");
    assert_eq!(truck["lat"], 52.5202);
    // History is written once the reorder allowance has passed the fixes.
    let ts = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, track) = server.get("/v1/vehicles/truck-1/track").await;
            let ts: Vec<i64> = track["items"]
                .as_array()?
                .iter()
                .filter_map(|p| p["ts_ms"].as_i64())
                .collect();
            (ts.len() == 3).then_some(ts)
        })
        .await
        .expect("truck-1's track");
    assert_eq!(ts, [t0, t0 + 1000, t0 + 2000]);
    let (status, _) = server.get("/v1/vehicles/truck-2").await;
    assert_eq!(status, 200);

    // Bad input: 400 with the reason, counted and sampled like MQTT input.
    let series = "fleetd_rejected_total{reason=\"bad_coordinates\"}";
    let before = server.metric(series).await;
    let r = server
        .client
        .post(&url)
        .json(&json!({"device_id": "truck-9", "ts_ms": now_ms(), "lat": 95.0, "lon": 13.4}))
        .send()
        .await
        .expect("post bad");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "bad_coordinates", "{body}");
    assert_eq!(body["error"]["message"], "lat 95 is not in [-90, 90]");
    assert_eq!(server.metric(series).await, before + 1.0);
    let r = server
        .client
        .post(&url)
        .body("{\"device_id\": \"truck-9\", \"lat\":")
        .send()
        .await
        .expect("post malformed");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "malformed", "{body}");
    let (_, rejections) = server.get("/v1/rejections?limit=2").await;
    let samples = rejections["rejections"].as_array().expect("samples");
    assert_eq!(samples[0]["reason"], "malformed");
    assert_eq!(samples[1]["reason"], "bad_coordinates");
    assert_eq!(samples[1]["source"], "http");
    assert_eq!(samples[1]["device_id"], "truck-9");
    let (status, _) = server.get("/v1/vehicles/truck-9").await;
    assert_eq!(status, 404);

    // The API describes itself, this route included.
    let (status, spec) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["paths"]["/v1/positions"]["post"].is_object());

    // Answered 202 just before SIGINT: the drain still stores it.
    let r = server
        .client
        .post(&url)
        .json(&json!({"device_id": "last-1", "ts_ms": now_ms(), "lat": 52.5, "lon": 13.4}))
        .send()
        .await
        .expect("post last");
    assert_eq!(r.status(), 202);
    let status = server.interrupt();
    assert!(status.success(), "{status:?}\n{}", server.log());
    let server = Fleetd::start(&data, &[]).await;
    let (status, last) = server.get("/v1/vehicles/last-1").await;
    assert_eq!(status, 200, "{last}");
}

// A tracker pointed at the API port with the OsmAnd / Traccar Client
// protocol (the requests those apps send: GET with the fix in the query,
// or POST with it in the query and no body) must not get a 200 and the
// map page, or it drops a fix it believes delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_protocol_request_on_the_api_port_is_refused_not_swallowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    let ts = now_ms() / 1000;
    let plain = reqwest::Client::new();
    let query = format!(
        "/?id=tracker-1&timestamp={ts}&lat=52.5&lon=13.4&speed=0&bearing=0&altitude=34&accuracy=5&batt=80"
    );
    let response = plain
        .get(format!("{}{query}", server.http))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stored nothing")),
        "{body}"
    );
    let post = plain
        .post(format!("{}{query}", server.http))
        .send()
        .await
        .expect("POST");
    assert_ne!(post.status(), 200, "POST / is not a success");
    assert!(
        !post
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html")),
        "POST / answered with HTML"
    );
    // The page itself, and its links, still open.
    let page = plain
        .get(format!("{}/?token=abc", server.http))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    let metrics = server.get_text("/metrics").await;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("fleetd_ingest_refused_total{")
                && l.contains("reason=\"tracker_protocol_on_api_port\"")
        })
        .collect();
    assert!(
        refused.len() == 1 && refused[0].ends_with(" 1"),
        "counted once: {refused:?}"
    );
    let (status, _) = server.get("/v1/vehicles/tracker-1").await;
    assert_eq!(status, 404, "nothing stored");
}
