//! Vehicle state over the wire: the device registry joined into overspeed
//! alerts (a lowered limit applies from the next window, one alert per
//! episode), and the processor's data-quality filters counted by reason and
//! sampled in `GET /v1/rejections`.

use std::time::Duration;

use fleetd_schemas::proto;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use serde_json::{Value, json};

use crate::util::{Fleetd, now_ms};

/// Publishes positions of `device` as protobuf, QoS 1, in order.
async fn publish(client: &AsyncClient, device: &str, fixes: &[proto::Position]) {
    for p in fixes {
        client
            .publish(
                format!("fleet/{device}/pos"),
                QoS::AtLeastOnce,
                false,
                p.encode_to_vec(),
            )
            .await
            .expect("publish");
    }
}

/// Waits until the vehicle state of `device` has applied the fix at `ts_ms`.
async fn state_at(server: &Fleetd, device: &str, ts_ms: i64) -> Value {
    server
        .wait_for(Duration::from_secs(20), || async {
            let (_, v) = server.get(&format!("/v1/vehicles/{device}")).await;
            (v["state_ts_ms"] == ts_ms).then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("{device} never reached ts {ts_ms}; log:\n{}", server.log()))
}

async fn put_device(server: &Fleetd, device: &str, body: Value) -> (u16, Value) {
    let r = server
        .client
        .put(format!("{}/v1/devices/{device}", server.http))
        .json(&body)
        .send()
        .await
        .expect("PUT");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_speed_limit_applies_within_a_window_and_alerts_once_per_episode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[vehicle]\noverspeed_grace_s = 10.0\noverspeed_clear_s = 10.0\n\
         [vehicle.class_speed_limits_kmh]\ntruck = 60.0\n",
    )
    .expect("config");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
    )
    .await;
    let (status, body) = put_device(
        &server,
        "van-7",
        json!({"name": "Van 7", "speed_limit_kmh": 100.0}),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Due north, one fix a second, reporting its speed: 20 m/s (72 km/h),
    // except 10 m/s (36 km/h) over seconds 80..100.
    let t0 = now_ms() - 600_000;
    let speed = |i: i64| if (80..100).contains(&i) { 10.0 } else { 20.0 };
    let mut north_m = 0.0;
    let fixes: Vec<proto::Position> = (0..140)
        .map(|i| {
            north_m += speed(i);
            proto::Position {
                ts_ms: t0 + i * 1000,
                lat: 60.0 + north_m / 111_195.0,
                lon: 25.0,
                speed_mps: Some(speed(i) as f32),
                ..Default::default()
            }
        })
        .collect();
    let client = server.mqtt_client("e2e-van").await;
    let alerts = || async {
        let (status, body) = server
            .get("/v1/alerts?device=van-7&kind=overspeed&limit=100")
            .await;
        assert_eq!(status, 200, "{body}");
        body["alerts"].as_array().cloned().expect("alerts")
    };

    // Under the 100 km/h limit: 40 s at 72 km/h, no alert.
    publish(&client, "van-7", &fixes[..40]).await;
    let state = state_at(&server, "van-7", t0 + 39_000).await;
    assert_eq!(state["motion"], "moving", "{state}");
    assert_eq!(state["name"], "Van 7", "{state}");
    assert_eq!(state["speed_limit_kmh"], 100.0, "{state}");
    assert!(alerts().await.is_empty());

    // Lowered to 50 km/h. The fixes published after the change are judged
    // against it from the first one: the episode starts at second 40 and
    // fires after the 10 s grace, at second 50. Slowing down for 20 s ends
    // it (10 s clear); the next excess is a second episode, firing at 110.
    let (status, body) = put_device(
        &server,
        "van-7",
        json!({"name": "Van 7", "speed_limit_kmh": 50.0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    publish(&client, "van-7", &fixes[40..]).await;
    let state = state_at(&server, "van-7", t0 + 139_000).await;
    assert_eq!(state["speed_limit_kmh"], 50.0, "{state}");
    let mut fired = alerts().await;
    fired.sort_by_key(|a| a["ts_ms"].as_i64());
    let times: Vec<_> = fired.iter().map(|a| a["ts_ms"].as_i64()).collect();
    assert_eq!(
        times,
        [Some(t0 + 50_000), Some(t0 + 110_000)],
        "one alert per episode, 90 fixes over the limit: {fired:#?}"
    );
    for alert in &fired {
        assert_eq!(alert["kind"], "overspeed", "{alert}");
        assert_eq!(alert["device_id"], "van-7", "{alert}");
        assert_eq!(alert["detail"]["limit_kmh"], 50.0, "{alert}");
        assert_eq!(alert["detail"]["speed_kmh"], 72.0, "{alert}");
        assert_eq!(alert["detail"]["over_s"], 10.0, "{alert}");
        assert_eq!(alert["detail"]["device_name"], "Van 7", "{alert}");
    }

    // Without a limit of its own, the device's class limit applies.
    let (status, _) =
        put_device(&server, "van-7", json!({"name": "Van 7", "class": "truck"})).await;
    assert_eq!(status, 200);
    let (_, state) = server.get("/v1/vehicles/van-7").await;
    assert_eq!(state["class"], "truck", "{state}");
    assert_eq!(state["speed_limit_kmh"], 60.0, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_fixes_are_counted_by_reason_sampled_and_kept_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "200"]).await;
    let client = server.mqtt_client("e2e-filters").await;
    let t0 = now_ms() - 600_000;
    let at = |s: i64, north_m: f64| proto::Position {
        ts_ms: t0 + s * 1000,
        lat: 48.0 + north_m / 111_195.0,
        lon: 11.0,
        ..Default::default()
    };
    let mut fixes: Vec<proto::Position> = (0..10).map(|s| at(s, s as f64 * 10.0)).collect();
    // A duplicate of second 3, a teleport (50 km off in half a second) and
    // a fix with a 500 m accuracy radius.
    fixes.push(at(3, 30.0));
    let mut teleport = at(5, 50_000.0);
    teleport.ts_ms += 500;
    fixes.push(teleport.clone());
    let mut poor = at(7, 70.0);
    poor.ts_ms += 500;
    poor.accuracy_m = Some(500.0);
    fixes.push(poor.clone());
    publish(&client, "filt-1", &fixes).await;
    let state = state_at(&server, "filt-1", t0 + 9_000).await;
    assert_eq!(state["ts_ms"], t0 + 9_000, "latest is the newest real fix");

    for (reason, n) in [
        ("duplicate", 1.0),
        ("teleport", 1.0),
        ("poor_accuracy", 1.0),
    ] {
        let series = format!("fleetd_filtered_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&series).await, n, "{series}");
    }
    let (_, body) = server.get("/v1/rejections?limit=100").await;
    let samples = body["rejections"].as_array().expect("rejections");
    for reason in ["duplicate", "teleport", "poor_accuracy"] {
        let sample = samples
            .iter()
            .find(|s| s["reason"] == reason && s["device_id"] == "filt-1")
            .unwrap_or_else(|| panic!("no {reason} sample in {body}"));
        assert_eq!(sample["source"], "processor", "{sample}");
        assert!(
            sample["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{sample}"
        );
    }
    // Teleports and poor fixes are stored flagged (duplicates are dropped);
    // `filtered=false` leaves them out of the track.
    let (_, track) = server.get("/v1/vehicles/filt-1/track?limit=100").await;
    let items = track["items"].as_array().expect("items");
    assert_eq!(items.len(), 12, "{track}");
    let flag_of = |ts: i64| {
        items
            .iter()
            .find(|p| p["ts_ms"] == ts)
            .map(|p| p["filtered"].clone())
    };
    assert_eq!(flag_of(teleport.ts_ms), Some(json!("teleport")), "{track}");
    assert_eq!(flag_of(poor.ts_ms), Some(json!("poor_accuracy")), "{track}");
    let (_, clean) = server
        .get("/v1/vehicles/filt-1/track?limit=100&filtered=false")
        .await;
    assert_eq!(clean["items"].as_array().map(Vec::len), Some(10), "{clean}");
}
