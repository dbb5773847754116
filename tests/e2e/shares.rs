//! Share links end to end: a link to one device of two shows exactly that
//! device (latest, the last `history_s` of its track, its live positions)
//! and nothing else over HTTP, SSE or MQTT; revocation and expiry end it,
//! open streams included; and the map page opened on it in headless
//! Chromium shows that device alone, live, with its track.

use std::time::Duration;

use serde_json::{Value, json};

use crate::live::SseClient;
use crate::map::{Browser, Cdp, MARKERS};
use crate::util::{Fleetd, authorized_client, now_ms};

const LAT: f64 = 52.5;
const LON: f64 = 13.4;

/// Two hours of `device`'s fixes, one a minute, ending a minute ago,
/// driving north at ~15 m/s.
fn past_track(device_offset: f64) -> Vec<Value> {
    let end = now_ms() - 60_000;
    (0..120)
        .map(|i| {
            let ts = end - (119 - i) * 60_000;
            json!({"ts_ms": ts, "lat": LAT + i as f64 * 0.008, "lon": LON + device_offset, "accuracy_m": 5.0})
        })
        .collect()
}

/// A fix `i` seconds after `t0`, carrying on from [`past_track`]'s end at
/// the same speed.
fn live_fix(device_offset: f64, t0: i64, i: i64) -> Value {
    let lat = LAT + 119.0 * 0.008 + 0.008 + i as f64 * 0.000_133;
    json!({"ts_ms": t0 + i * 1000, "lat": lat, "lon": LON + device_offset, "accuracy_m": 5.0})
}

async fn publish(client: &rumqttc::AsyncClient, device: &str, fixes: &[Value]) {
    client
        .publish(
            format!("fleet/{device}/pos/batch"),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(fixes).expect("json"),
        )
        .await
        .expect("publish");
}

async fn create_share(server: &Fleetd, body: Value) -> Value {
    let r = server
        .client
        .post(format!("{}/v1/shares", server.http))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/shares");
    assert_eq!(r.status(), 201);
    r.json().await.expect("share json")
}

async fn status(client: &reqwest::Client, method: reqwest::Method, url: &str) -> u16 {
    client
        .request(method, url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_link_shows_one_device_read_only_until_revoked_or_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "200"]).await;
    let mqtt = server.mqtt_client("e2e-shares").await;
    publish(&mqtt, "car-1", &past_track(0.0)).await;
    publish(&mqtt, "car-2", &past_track(0.01)).await;
    let stored = server
        .wait_for(Duration::from_secs(10), || async {
            let a = server.get("/v1/vehicles/car-1").await.0 == 200;
            let b = server.get("/v1/vehicles/car-2").await.0 == 200;
            (a && b).then_some(())
        })
        .await;
    assert!(stored.is_some(), "log:\n{}", server.log());

    // Refused: no devices, no expiry, too long, a bad id.
    for body in [
        json!({"devices": [], "expires_in_s": 60}),
        json!({"devices": ["car-1"]}),
        json!({"devices": ["car-1"], "expires_in_s": 90 * 86_400}),
        json!({"devices": ["bad id"], "expires_in_s": 60}),
        json!({"devices": ["car-1"], "expires_in_s": 60, "history_s": 30 * 86_400}),
    ] {
        let r = server
            .client
            .post(format!("{}/v1/shares", server.http))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), 400, "{body}");
    }

    let share = create_share(
        &server,
        json!({"devices": ["car-1"], "expires_in_s": 600, "name": "Parcel 1234", "history_s": 1800}),
    )
    .await;
    let token = share["token"].as_str().expect("token").to_owned();
    assert_eq!(share["path"], format!("/#share={token}"));
    let viewer = authorized_client(&token);
    let url = |path: &str| format!("{}{path}", server.http);

    let info: Value = viewer
        .get(url("/v1/share"))
        .send()
        .await
        .expect("share")
        .json()
        .await
        .expect("json");
    assert_eq!(info["devices"], json!(["car-1"]));
    assert_eq!(info["name"], "Parcel 1234");
    assert_eq!(
        server.get("/v1/share").await.0,
        404,
        "an admin token is no share link"
    );

    // What it shows.
    let latest = viewer
        .get(url("/v1/vehicles/car-1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(latest.status(), 200);
    let track: Value = viewer
        .get(url("/v1/vehicles/car-1/track?from=0&limit=1000"))
        .send()
        .await
        .expect("track")
        .json()
        .await
        .expect("json");
    let items = track["items"].as_array().expect("items");
    let earliest = now_ms() - 1_800_000 - 5_000;
    assert!(
        (25..=31).contains(&items.len()),
        "the last 30 minutes of one fix a minute: {}",
        items.len()
    );
    assert!(
        items
            .iter()
            .all(|p| p["ts_ms"].as_i64().unwrap_or(0) >= earliest)
    );
    let (_, full) = server
        .get("/v1/vehicles/car-1/track?from=0&limit=1000")
        .await;
    let all = full["items"].as_array().map_or(0, Vec::len);
    assert!(all >= 110, "an admin reads the two hours: {all}");

    // What it does not: other devices are unknown, everything else refused.
    use reqwest::Method;
    for (method, path, want) in [
        (Method::GET, "/v1/vehicles/car-2", 404),
        (Method::GET, "/v1/vehicles/car-2/track", 404),
        (Method::GET, "/v1/vehicles?bbox=-180,-90,180,90", 403),
        (Method::GET, "/v1/vehicles/car-1/trips", 403),
        (Method::GET, "/v1/alerts", 403),
        (Method::GET, "/v1/devices/car-1", 403),
        (Method::GET, "/v1/geofences", 403),
        (Method::GET, "/v1/cells?res=7&bbox=13,52,14,53", 403),
        (Method::GET, "/v1/tokens", 403),
        (Method::GET, "/v1/shares", 403),
        (Method::POST, "/v1/positions", 403),
        (Method::PUT, "/v1/devices/car-1", 403),
        (Method::GET, "/v1/stream?devices=car-2", 404),
    ] {
        assert_eq!(
            status(&viewer, method.clone(), &url(path)).await,
            want,
            "{method} {path}"
        );
    }
    // Nor is it an MQTT login.
    let refused = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt_port.to_string()])
        .args([
            "-u",
            "viewer",
            "-P",
            &token,
            "-t",
            "fleet/car-1/pos",
            "-C",
            "1",
            "-W",
            "3",
        ])
        .output()
        .expect(
            "mosquitto_sub is not installed: run scripts/test, which installs mosquitto-clients",
        );
    assert!(
        !refused.status.success(),
        "a share token logged in over MQTT"
    );

    // Live: car-1's positions, never car-2's, never an alert.
    let mut stream = SseClient::connect_as(&viewer, &url("/v1/stream"), None).await;
    let t = now_ms();
    for i in 0..5 {
        publish(&mqtt, "car-2", &[live_fix(0.01, t, i)]).await;
        publish(&mqtt, "car-1", &[live_fix(0.0, t, i)]).await;
    }
    let mut seen = Vec::new();
    while let Some(event) = stream.next(Duration::from_secs(3)).await {
        seen.push(event);
        if seen.len() >= 3 {
            break;
        }
    }
    assert!(!seen.is_empty(), "no live position for car-1");
    for event in &seen {
        assert_eq!(event.event, "position");
        assert_eq!(event.json()["device_id"], "car-1", "{}", event.data);
    }

    // Revoked: the open stream ends, and the token is refused.
    let id = share["id"].as_str().expect("id");
    let r = server
        .client
        .delete(url(&format!("/v1/shares/{id}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 204);
    assert!(
        stream.ends_within(Duration::from_secs(5)).await,
        "the stream outlived the revocation"
    );
    assert_eq!(
        status(&viewer, Method::GET, &url("/v1/vehicles/car-1")).await,
        401
    );

    // Expired: the same, by itself.
    let short = create_share(&server, json!({"devices": ["car-1"], "expires_in_s": 2})).await;
    let viewer = authorized_client(short["token"].as_str().expect("token"));
    let mut stream = SseClient::connect_as(&viewer, &url("/v1/stream"), None).await;
    assert!(
        stream.ends_within(Duration::from_secs(6)).await,
        "the stream outlived the link"
    );
    assert_eq!(
        status(&viewer, Method::GET, &url("/v1/vehicles/car-1")).await,
        401
    );
    let (_, listed) = server.get("/v1/shares").await;
    assert_eq!(
        listed["count"], 1,
        "the expired link is still listed: {listed}"
    );
    let (_, tokens) = server.get("/v1/tokens").await;
    assert!(
        tokens["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .all(|t| t["id"] != short["id"]),
        "share links are not API tokens: {tokens}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_page_on_a_share_link_shows_just_that_vehicle_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "200"]).await;
    let mqtt = server.mqtt_client("e2e-shares-map").await;
    publish(&mqtt, "car-1", &past_track(0.0)).await;
    publish(&mqtt, "car-2", &past_track(0.01)).await;
    server
        .wait_for(Duration::from_secs(10), || async {
            (server.get("/v1/vehicles/car-2").await.0 == 200).then_some(())
        })
        .await
        .expect("stored");
    let share = create_share(
        &server,
        json!({"devices": ["car-1"], "expires_in_s": 600, "name": "Parcel 1234", "history_s": 1800}),
    )
    .await;

    let browser = Browser::launch_with(&[]);
    let mut cdp = Cdp::new_page(&browser).await;
    let link = format!("{}{}", server.http, share["path"].as_str().expect("path"));
    cdp.call("Page.navigate", json!({"url": link})).await;

    // One marker, car-1's, with its inspect panel and its track.
    cdp.wait_for(
        "document.querySelector('.fleetd-vehicle') ? document.querySelector('.fleetd-vehicle').dataset.device : ''",
        Duration::from_secs(20),
        |v| v == "car-1",
    )
    .await;
    cdp.wait_for(
        "document.querySelectorAll('.fleetd-track').length === 1 && !document.getElementById('inspect').hidden",
        Duration::from_secs(10),
        |v| v.as_bool() == Some(true),
    )
    .await;
    assert_eq!(cdp.eval(MARKERS).await.as_u64(), Some(1));
    let title = cdp
        .eval("document.getElementById('share-title').textContent")
        .await;
    assert_eq!(title, "Parcel 1234");
    // The fleet tools and alerts are not there; the token left the address bar.
    let hidden = cdp
        .eval(
            "['fleet-tools', 'alerts-section'].every(id => document.getElementById(id).offsetParent === null)",
        )
        .await;
    assert_eq!(hidden.as_bool(), Some(true));
    let address = cdp.eval("window.location.href").await;
    assert!(
        !address.as_str().unwrap_or_default().contains("fltd_"),
        "{address}"
    );
    // The track is the last 30 minutes: about 30 fixes, not 120.
    let points = cdp
        .eval("fleetd.map._layers ? Object.values(fleetd.map._layers).filter(l => l.getLatLngs && l.options.className === 'fleetd-track').map(l => l.getLatLngs().length)[0] : 0")
        .await;
    let points = points.as_u64().unwrap_or(0);
    assert!((25..=31).contains(&points), "{points} track points");

    // Live: car-1 moves on the page, car-2 never appears.
    let before = cdp
        .eval("document.querySelector('.fleetd-vehicle').dataset.ts")
        .await;
    let t = now_ms();
    for i in 0..3 {
        publish(&mqtt, "car-2", &[live_fix(0.01, t, i)]).await;
        publish(&mqtt, "car-1", &[live_fix(0.0, t, i)]).await;
    }
    cdp.wait_for(
        &format!("document.querySelector('.fleetd-vehicle').dataset.ts !== {before}"),
        Duration::from_secs(10),
        |v| v.as_bool() == Some(true),
    )
    .await;
    assert_eq!(cdp.eval(MARKERS).await.as_u64(), Some(1));

    // Revoked: the page says the link ended.
    let id = share["id"].as_str().expect("id");
    let r = server
        .client
        .delete(format!("{}/v1/shares/{id}", server.http))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 204);
    cdp.wait_for(
        "!document.getElementById('share-ended').hidden",
        Duration::from_secs(15),
        |v| v.as_bool() == Some(true),
    )
    .await;

    // Expired: the same page works until the link's time is up, then says so.
    let short = create_share(&server, json!({"devices": ["car-1"], "expires_in_s": 4})).await;
    let link = format!("{}{}", server.http, short["path"].as_str().expect("path"));
    cdp.call("Page.navigate", json!({"url": link})).await;
    cdp.wait_for(
        "document.querySelectorAll('.fleetd-vehicle').length === 1 && document.getElementById('share-ended').hidden && document.getElementById('status').textContent.startsWith('live')",
        Duration::from_secs(10),
        |v| v.as_bool() == Some(true),
    )
    .await;
    let ended = cdp
        .wait_for(
            "document.getElementById('share-ended').hidden ? '' : document.getElementById('share-ended').innerText",
            Duration::from_secs(15),
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    assert!(
        ended.as_str().unwrap_or_default().contains("expired"),
        "{ended}"
    );
}
