//! Geofences end to end: CRUD with validation errors, enter / dwell / exit
//! alerts over REST, MQTT (`mosquitto_sub` on `fleet/+/alerts`) and as
//! OwnTracks transitions, "who is inside now" both ways, fences created
//! around a vehicle and deleted under it, and memberships across a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Fleetd, now_ms};

const LAT: f64 = 52.5;
const LON: f64 = 13.4;

/// A square fence of `half` degrees around (LAT, LON).
fn square(name: &str, half: f64, dwell_s: Option<f64>) -> Value {
    let (w, e, s, n) = (LON - half, LON + half, LAT - half, LAT + half);
    let mut properties = json!({"name": name, "owner": "depot-team"});
    if let Some(d) = dwell_s {
        properties["dwell_s"] = json!(d);
    }
    json!({
        "type": "Feature",
        "properties": properties,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]
        }
    })
}

/// `mosquitto_sub` printing `topic payload` lines, collected by a thread;
/// killed on drop.
struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `topics` on `server`, logged in with its admin token
    /// (a dashboard's read token would do: `fleet/+/alerts` spans devices).
    fn start(server: &Fleetd, topics: &[&str]) -> Subscriber {
        let mut cmd = Command::new("mosquitto_sub");
        let port = server.mqtt_port.to_string();
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-v", "-q", "1"]);
        if let Some((username, password)) = server.mqtt_login() {
            cmd.args(["-u", &username, "-P", &password]);
        }
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "mosquitto_sub is not installed: run scripts/test, which installs mosquitto-clients",
            );
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Subscriber { child, lines }
    }

    /// Messages received so far on `topic`, payloads parsed as JSON.
    fn on(&self, topic: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| l.strip_prefix(topic)?.strip_prefix(' '))
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alerts matching the query, oldest first, as `(kind, device, fence)`.
async fn alerts(server: &Fleetd, query: &str) -> Vec<(String, String, String)> {
    let (status, body) = server.get(&format!("/v1/alerts?limit=1000&{query}")).await;
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, String, String)> = body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["device_id"].as_str().unwrap_or_default().to_owned(),
                a["geofence_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Waits until the alert query returns `n` alerts.
async fn wait_alerts(server: &Fleetd, query: &str, n: usize) -> Vec<(String, String, String)> {
    let found = server
        .wait_for(Duration::from_secs(15), || async {
            let a = alerts(server, query).await;
            (a.len() >= n).then_some(a)
        })
        .await;
    match found {
        Some(a) => a,
        None => panic!(
            "expected {n} alerts for {query}, got {:?}; log:\n{}",
            alerts(server, query).await,
            server.log()
        ),
    }
}

/// An OwnTracks location of alice's phone at `east_m` metres east of the
/// fences' centre.
fn owntracks(ts_s: i64, east_m: f64) -> Vec<u8> {
    let lon = LON + east_m / (111_320.0 * LAT.to_radians().cos());
    json!({"_type": "location", "tst": ts_s, "lat": LAT, "lon": lon, "acc": 5, "tid": "ap"})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geofence_alerts_over_rest_mqtt_and_owntracks_and_membership_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(&config, "[geofences]\nmin_outside_s = 3.0\n").expect("config");
    let args = [
        "--window-ms",
        "200",
        "--config",
        config.to_str().expect("utf-8"),
    ];
    let mut server = Fleetd::start(&data, &args).await;

    // Invalid fences are 400 with a precise message; nothing is stored.
    let bowtie =
        json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]});
    let (status, body) = server.put("/v1/geofences/bad", &bowtie).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("intersects itself"), "{message}");
    let open_ring = json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]});
    let (status, body) = server.put("/v1/geofences/bad", &open_ring).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server
        .put("/v1/geofences/bad%20id", &square("x", 0.01, None))
        .await;
    assert_eq!(status, 400);
    assert_eq!(server.get("/v1/geofences/bad").await.0, 404);

    // A 1.1 km x 0.7 km depot with a 5 s dwell threshold.
    let (status, body) = server
        .put("/v1/geofences/depot", &square("Depot", 0.005, Some(5.0)))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["properties"]["owner"], "depot-team");
    let (status, _) = server
        .put("/v1/geofences/depot", &square("Depot", 0.005, Some(5.0)))
        .await;
    assert_eq!(status, 200, "a second PUT replaces");
    let (status, list) = server.get("/v1/geofences").await;
    assert_eq!((status, list["count"].clone()), (200, json!(1)), "{list}");

    let sub = Subscriber::start(&server, &["fleet/+/alerts", "owntracks/+/+/event"]);
    // mosquitto_sub needs a moment to connect and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // truck-1 drives west to east through the depot at ~20 m/s, one fix a
    // second, as one offline batch: enter, dwell after 5 s, exit 3 s after
    // it is certainly out.
    let t0 = now_ms() - 120_000;
    let fixes: Vec<Value> = (0..100)
        .map(|i| {
            let lon = LON - 0.015 + i as f64 * 0.0003;
            json!({"ts_ms": t0 + i * 1000, "lat": LAT, "lon": lon, "accuracy_m": 5.0})
        })
        .collect();
    let client = server.mqtt_client("e2e-geofence-truck").await;
    client
        .publish(
            "fleet/truck-1/pos/batch",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&fixes).expect("json"),
        )
        .await
        .expect("publish");
    let truck = wait_alerts(&server, "device=truck-1", 3).await;
    let kinds: Vec<&str> = truck.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["enter", "dwell", "exit"],
        "one of each per crossing"
    );
    assert!(truck.iter().all(|a| a.2 == "depot"));

    // alice's OwnTracks phone, one fix every 10 s, walks into the depot
    // (its east and west edges are 339 m from the centre) and stays.
    let ts = now_ms() / 1000 - 1000;
    for i in 0..20 {
        server.mosquitto_pub(
            "owntracks/alice/phone",
            &owntracks(ts + i * 10, -1500.0 + i as f64 * 80.0),
        );
    }
    wait_alerts(&server, "device=alice/phone", 1).await;
    let (status, inside) = server.get("/v1/geofences/depot/vehicles").await;
    assert_eq!(status, 200, "{inside}");
    let members: Vec<&str> = inside["vehicles"]
        .as_array()
        .expect("vehicles")
        .iter()
        .filter_map(|v| v["device_id"].as_str())
        .collect();
    assert_eq!(members, ["alice/phone"], "truck-1 left, alice is inside");
    let (status, fences) = server.get("/v1/vehicles/alice%2Fphone/geofences").await;
    assert_eq!(status, 200, "{fences}");
    assert_eq!(fences["geofences"][0]["geofence_id"], "depot");
    assert_eq!(fences["geofences"][0]["name"], "Depot");
    assert_eq!(server.get("/v1/vehicles/nobody/geofences").await.0, 404);
    assert_eq!(server.get("/v1/geofences/nowhere/vehicles").await.0, 404);

    // MQTT: the alert JSON for every alert, and a transition for alice.
    let published = server
        .wait_for(Duration::from_secs(10), || async {
            let fleet = sub.on("fleet/truck-1/alerts");
            let own = sub.on("owntracks/alice/phone/event");
            (fleet.len() >= 3 && !own.is_empty()).then_some((fleet, own))
        })
        .await;
    let (fleet, own) = published.unwrap_or_else(|| {
        panic!(
            "mosquitto_sub got {:?}",
            sub.lines.lock().expect("lines").clone()
        )
    });
    let kinds: Vec<&str> = fleet.iter().filter_map(|a| a["kind"].as_str()).collect();
    assert_eq!(kinds, ["enter", "dwell", "exit"]);
    assert_eq!(fleet[0]["device_id"], "truck-1");
    assert_eq!(fleet[0]["geofence_id"], "depot");
    assert_eq!(fleet[0]["detail"]["geofence_name"], "Depot");
    assert!(fleet[0]["id"].is_string() && fleet[0]["ts_ms"].is_i64());
    assert_eq!(own[0]["_type"], "transition");
    assert_eq!(own[0]["event"], "enter");
    assert_eq!(own[0]["desc"], "Depot");
    assert_eq!(own[0]["acc"], 5);

    // A fence created around alice: she enters it on her next fix. Deleted:
    // its membership ends without an exit, even when she walks away.
    let (status, _) = server.put("/v1/geofences/kiosk",
        &json!({"center": [LON + 0.0005, LAT], "radius_m": 60.0, "properties": {"name": "Kiosk"}}),
    )
    .await;
    assert_eq!(status, 201);
    server.mosquitto_pub("owntracks/alice/phone", &owntracks(ts + 200, 30.0));
    let kiosk = wait_alerts(&server, "geofence=kiosk", 1).await;
    assert_eq!(
        kiosk,
        [("enter".into(), "alice/phone".into(), "kiosk".into())]
    );
    assert_eq!(server.delete("/v1/geofences/kiosk").await, 204);
    assert_eq!(server.delete("/v1/geofences/kiosk").await, 404);
    assert_eq!(server.get("/v1/geofences/kiosk/vehicles").await.0, 404);
    for i in 21..30 {
        server.mosquitto_pub(
            "owntracks/alice/phone",
            &owntracks(ts + i * 10, 30.0 + (i - 20) as f64 * 20.0),
        );
    }
    // Let those fixes through the reorder allowance and a few windows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        alerts(&server, "geofence=kiosk").await.len(),
        1,
        "no phantom exit"
    );
    let (_, fences) = server.get("/v1/vehicles/alice%2Fphone/geofences").await;
    assert_eq!(fences["count"], 1, "{fences}");

    // Restart: the membership is kept, so leaving fires an exit (and
    // coming back would be a new enter, not a duplicate one).
    assert!(server.interrupt().success());
    drop(server);
    let server = Fleetd::start(&data, &args).await;
    let (_, inside) = server.get("/v1/geofences/depot/vehicles").await;
    assert_eq!(inside["count"], 1, "{inside}");
    let sub = Subscriber::start(&server, &["owntracks/alice/phone/event"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // East at 15 m/s from 210 m: out of the depot after ~9 fixes.
    for i in 30..45 {
        server.mosquitto_pub(
            "owntracks/alice/phone",
            &owntracks(ts + i * 10, 210.0 + (i - 29) as f64 * 150.0),
        );
    }
    // Her dwell fired once before the restart and is not repeated after it.
    let depot = wait_alerts(&server, "device=alice/phone&geofence=depot", 3).await;
    let kinds: Vec<&str> = depot.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(kinds, ["enter", "dwell", "exit"], "{depot:?}");
    let left = server
        .wait_for(Duration::from_secs(10), || async {
            let own = sub.on("owntracks/alice/phone/event");
            (!own.is_empty()).then_some(own)
        })
        .await
        .expect("leave transition after restart");
    assert_eq!(left[0]["event"], "leave");
    let (_, inside) = server.get("/v1/geofences/depot/vehicles").await;
    assert_eq!(inside["count"], 0, "{inside}");
    assert!(
        server
            .metric("fleetd_alerts_published_total{result=\"published\"}")
            .await
            >= 1.0
    );
}
