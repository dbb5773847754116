//! The OsmAnd / Traccar Client listener through the real binary, with
//! authentication on: the requests those apps send (written from their
//! protocol, sent with curl and reqwest) are stored with the right fix;
//! a request without the device's secret, with another device's, or with
//! a bad fix is refused, counted and stores nothing; a 200 survives kill -9.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Fleetd, free_port, issue, now_ms};

/// Starts fleetd with its OsmAnd listener on a free port; (server, base URL).
async fn start(data: &std::path::Path, extra: &[&str]) -> (Fleetd, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--osmand", addr.as_str()];
    args.extend_from_slice(extra);
    let server = Fleetd::start(data, &args).await;
    (server, format!("http://{addr}"))
}

/// `curl` with `args`; (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (status.trim().parse().expect("status"), body.to_owned())
}

/// The stored track of `id` once it holds `n` fixes.
async fn track(server: &Fleetd, id: &str, n: usize) -> Vec<Value> {
    server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server
                .get(&format!("/v1/vehicles/{id}/track?limit=100"))
                .await;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            (status == 200 && items.len() >= n).then_some(items)
        })
        .await
        .unwrap_or_else(|| panic!("{id}: {n} fixes not stored; log:\n{}", server.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traccar_client_and_osmand_requests_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let logins = issue(&data, &["phone-1", "phone-2"], false);
    let (secret1, secret2) = (logins[0].1.clone(), logins[1].1.clone());
    let (server, base) = start(&data, &["--window-ms", "200"]).await;
    let now_s = now_ms() / 1000;

    // Traccar Client for Android: POST, the fix in the query, Unix seconds,
    // speed in knots; here with basic auth.
    let t1 = now_s - 50;
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-u",
        &format!("phone-1:{secret1}"),
        &format!(
            "{base}/?id=phone-1&timestamp={t1}&lat=52.5219&lon=13.4132&speed=10.0&bearing=90.0&altitude=34.0&accuracy=5.0&batt=80.0&charge=true"
        ),
    ]);
    assert_eq!((status, body.as_str()), (200, ""), "Traccar Client fix");
    // OsmAnd's online tracking: GET with its URL template, milliseconds,
    // hdop; the secret as a `key` parameter (the app cannot send basic auth).
    let t2 = (now_s - 40) * 1000 + 250;
    let (status, _) = curl(&[&format!(
        "{base}/?id=phone-1&lat=52.5229&lon=13.4142&timestamp={t2}&hdop=12.0&altitude=35.0&speed=0.0&bearing=0.0&key={secret1}"
    )]);
    assert_eq!(status, 200, "OsmAnd fix");
    // `location=lat,lon`, an ISO 8601 time, a form body.
    let t3 = now_s - 30;
    let iso = iso_utc(t3);
    let (status, _) = curl(&[
        "-u",
        &format!("phone-1:{secret1}"),
        "--data-urlencode",
        "id=phone-1",
        "--data-urlencode",
        "location=52.5239,13.4152",
        "--data-urlencode",
        &format!("timestamp={iso}"),
        &format!("{base}/"),
    ]);
    assert_eq!(status, 200, "form body with location and ISO time");
    // `yyyy-MM-dd HH:mm:ss` (UTC), as some hardware trackers send.
    let t4 = now_s - 20;
    let plain = iso_to_plain(&iso_utc(t4));
    let (status, _) = curl(&[
        "-G",
        "-u",
        &format!("phone-1:{secret1}"),
        "--data-urlencode",
        "deviceid=phone-1",
        "--data-urlencode",
        "lat=52.5249",
        "--data-urlencode",
        "lon=13.4162",
        "--data-urlencode",
        &format!("timestamp={plain}"),
        &format!("{base}/"),
    ]);
    assert_eq!(status, 200, "yyyy-MM-dd HH:mm:ss time");

    // Traccar Client 9 and later: a JSON body, speed in m/s, battery 0-1.
    let t5 = now_s - 10;
    let r = reqwest::Client::new()
        .post(format!("{base}/"))
        .basic_auth("phone-2", Some(&secret2))
        .json(&json!({
            "location": {
                "timestamp": iso_utc(t5),
                "coords": {"latitude": 48.8566, "longitude": 2.3522, "accuracy": 4.5,
                           "speed": 8.3, "heading": 270.0, "altitude": 41.0},
                "is_moving": true, "odometer": 0, "event": "motionchange",
                "battery": {"level": 0.62, "is_charging": false},
                "activity": {"type": "in_vehicle"}, "extras": {}
            },
            "device_id": "phone-2"
        }))
        .send()
        .await
        .expect("post JSON");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());

    let items = track(&server, "phone-1", 4).await;
    let by_ts = |ts: i64| {
        items
            .iter()
            .find(|i| i["ts_ms"] == ts)
            .unwrap_or_else(|| panic!("fix {ts} stored: {items:?}"))
    };
    let first = by_ts(t1 * 1000);
    assert_eq!(
        (first["lat"].as_f64(), first["lon"].as_f64()),
        (Some(52.5219), Some(13.4132))
    );
    let speed = first["speed_mps"].as_f64().expect("speed");
    assert!(
        (speed - 5.1444).abs() < 1e-3,
        "10 knots is 5.144 m/s, got {speed}"
    );
    assert_eq!(first["heading_deg"], 90.0);
    assert_eq!(first["battery_pct"], 80.0);
    assert_eq!(first["accuracy_m"], 5.0);
    let second = by_ts(t2);
    assert_eq!(second["accuracy_m"], 12.0, "hdop as accuracy: {second}");
    let third = by_ts(t3 * 1000);
    assert_eq!(third["lat"].as_f64(), Some(52.5239));
    by_ts(t4 * 1000);
    let json_fix = &track(&server, "phone-2", 1).await[0];
    assert_eq!(json_fix["ts_ms"], t5 * 1000);
    let speed = json_fix["speed_mps"].as_f64().expect("speed");
    assert!((speed - 8.3).abs() < 1e-3, "JSON speed is m/s: {json_fix}");
    assert!((json_fix["battery_pct"].as_f64().expect("battery") - 62.0).abs() < 1e-3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osmand_requests_without_their_device_secret_or_fix_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let logins = issue(&data, &["dev-a", "dev-b"], false);
    let secret_a = logins[0].1.clone();
    let (server, base) = start(&data, &[]).await;
    let ts = now_ms() / 1000 - 5;
    let fix = |id: &str| format!("{base}/?id={id}&timestamp={ts}&lat=52.5&lon=13.4");

    // Traccar's way, the id alone: refused, the app keeps the fix.
    let (status, body) = curl(&[&fix("dev-a")]);
    assert_eq!(status, 401, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was stored"))
    );
    // A wrong secret.
    let (status, _) = curl(&[&format!("{}&key=not-the-secret", fix("dev-a"))]);
    assert_eq!(status, 401);
    // Device A's key with device B's id is a wrong secret for B.
    let (status, _) = curl(&[&format!("{}&key={secret_a}", fix("dev-b"))]);
    assert_eq!(status, 401);
    // Logged in as device A, a fix of device B: 403 not_authorized, counted.
    let (status, body) = curl(&["-u", &format!("dev-a:{secret_a}"), &fix("dev-b")]);
    assert_eq!(status, 403, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(error["error"]["code"], "not_authorized");
    // A bad fix: 400 with its reason code, counted and sampled.
    let (status, body) = curl(&[&format!(
        "{base}/?id=dev-a&timestamp={ts}&lat=95&lon=13.4&key={secret_a}"
    )]);
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(error["error"]["code"], "bad_coordinates", "{body}");
    let (status, body) = curl(&[&format!(
        "{base}/?id=dev-a&timestamp=last-tuesday&lat=52.5&lon=13.4&key={secret_a}"
    )]);
    assert_eq!(status, 400);
    assert!(
        body.contains("bad_field") && body.contains("last-tuesday"),
        "{body}"
    );
    let (status, _) = curl(&[&format!(
        "{base}/?id=dev-a&timestamp={ts}&lat=52.5&lon=13.4&valid=false&key={secret_a}"
    )]);
    assert_eq!(status, 400, "valid=false");
    let (status, _) = curl(&["-X", "DELETE", &fix("dev-a")]);
    assert_eq!(status, 405);

    assert_eq!(
        server
            .metric("fleetd_rejected_total{reason=\"not_authorized\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("fleetd_rejected_total{reason=\"bad_coordinates\"}")
            .await,
        2.0,
        "lat 95 and valid=false"
    );
    let (_, rejections) = server.get("/v1/rejections").await;
    let from_osmand = rejections["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .filter(|r| r["source"] == "osmand")
        .count();
    assert_eq!(from_osmand, 4, "{rejections}");
    for id in ["dev-a", "dev-b"] {
        let (status, _) = server.get(&format!("/v1/vehicles/{id}")).await;
        assert_eq!(status, 404, "{id}: nothing stored");
    }
}

// A 200 is sent once the fix is in the journal: with a long window the fix
// is only there when fleetd is killed, and the restart stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osmand_200_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let secret = issue(&data, &["crash-phone"], false)[0].1.clone();
    let (mut server, base) = start(&data, &["--window-ms", "30000"]).await;
    let ts = now_ms() / 1000 - 5;
    let (status, _) = curl(&[&format!(
        "{base}/?id=crash-phone&timestamp={ts}&lat=52.5&lon=13.4&key={secret}"
    )]);
    assert_eq!(status, 200);
    assert_eq!(server.metric("fleetd_positions_stored_total").await, 0.0);
    server.crash();
    let (server, _) = start(&data, &[]).await;
    let items = track(&server, "crash-phone", 1).await;
    assert_eq!(items[0]["ts_ms"], ts * 1000);
}

/// `t` (Unix seconds) as RFC 3339 UTC, from `date` (no date crate in the
/// tests).
fn iso_utc(t: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `2024-01-02T03:04:05Z` as `2024-01-02 03:04:05`.
fn iso_to_plain(iso: &str) -> String {
    iso.trim_end_matches('Z').replacen('T', " ", 1)
}

// Traccar Client with an https:// server URL: the OsmAnd protocol over
// TLS (`--osmands`) with the server certificate of the other TLS
// listeners; a plain-HTTP client on that port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osmand_over_tls_stores_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    crate::tls::dev_certs(&certs, &[]);
    let data = dir.path().join("data");
    let secret = issue(&data, &["tls-phone"], false)[0].1.clone();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cert = certs.join("server.pem").display().to_string();
    let key = certs.join("server.key").display().to_string();
    let ca = certs.join("ca.pem").display().to_string();
    let server = Fleetd::start(
        &data,
        &[
            "--osmands",
            &listen,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--window-ms",
            "200",
        ],
    )
    .await;
    let ts = now_ms() / 1000 - 5;
    let query = format!("/?id=tls-phone&timestamp={ts}&lat=52.5&lon=13.4&speed=0&key={secret}");
    let (status, body) = curl(&[
        "--cacert",
        &ca,
        "-X",
        "POST",
        &format!("https://{listen}{query}"),
    ]);
    assert_eq!(status, 200, "{body}");
    let items = track(&server, "tls-phone", 1).await;
    assert_eq!(items[0]["ts_ms"], ts * 1000);
    let (status, _) = curl(&["--max-time", "5", &format!("http://{listen}{query}")]);
    assert_ne!(status, 200, "plain HTTP on the TLS port");
}
