//! One position in each input format comes back from the API, with H3 cells
//! equal to the reference implementation's (tests/data/h3_expected.json).

use std::time::{Duration, Instant};

use fleetd_schemas::proto;
use prost::Message;
use serde_json::Value;

use crate::util::{Fleetd, now_ms};

struct RefPoint {
    lat: f64,
    lon: f64,
    cells: Value,
}

fn reference(name: &str) -> RefPoint {
    let text = include_str!("../data/h3_expected.json");
    let all: Value = serde_json::from_str(text).expect("h3_expected.json");
    let p = all["points"]
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["name"] == name)
        .expect("point in h3_expected.json");
    RefPoint {
        lat: p["lat"].as_f64().expect("lat"),
        lon: p["lon"].as_f64().expect("lon"),
        cells: p["cells"].clone(),
    }
}

/// Polls the vehicle until it reports `ts_ms`; returns the body and how long
/// it took from `published`.
async fn wait_vehicle(
    server: &Fleetd,
    id: &str,
    ts_ms: i64,
    published: Instant,
) -> (Value, Duration) {
    // OwnTracks ids contain a '/', which a path segment carries as %2F.
    let path = format!("/v1/vehicles/{}", id.replace('/', "%2F"));
    let body = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get(&path).await;
            (status == 200 && body["ts_ms"] == ts_ms).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("{id} never became visible; log:\n{}", server.log()));
    (body, published.elapsed())
}

fn assert_cells(body: &Value, point: &RefPoint) {
    assert_eq!(body["lat"].as_f64(), Some(point.lat));
    assert_eq!(body["lon"].as_f64(), Some(point.lon));
    assert_eq!(body["h3"]["7"], point.cells["7"], "res 7 cell: {body}");
    assert_eq!(body["h3"]["9"], point.cells["9"], "res 9 cell: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_input_format_is_queryable_within_window_plus_one_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default window (1 s) is the one the contract promises.
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    let window = Duration::from_millis(1000);

    // 1. rumqttc, protobuf, QoS 1.
    let berlin = reference("berlin_alexanderplatz");
    let ts_pb = now_ms() - 1000;
    let position = proto::Position {
        ts_ms: ts_pb,
        lat: berlin.lat,
        lon: berlin.lon,
        accuracy_m: Some(4.0),
        speed_mps: Some(8.5),
        heading_deg: Some(91.0),
        battery_pct: Some(77.0),
        seq: Some(1),
        ..Default::default()
    };
    let client = server.mqtt_client("e2e-pb").await;
    let published = Instant::now();
    client
        .publish(
            "fleet/pb-1/pos",
            rumqttc::QoS::AtLeastOnce,
            false,
            position.encode_to_vec(),
        )
        .await
        .expect("publish");
    let (body, took) = wait_vehicle(&server, "pb-1", ts_pb, published).await;
    assert_cells(&body, &berlin);
    assert_eq!(body["device_id"], "pb-1");
    assert_eq!(body["speed_mps"].as_f64(), Some(8.5));
    assert_eq!(body["seq"], 1);
    assert!(
        took <= window + Duration::from_secs(1),
        "protobuf took {took:?}"
    );

    // 2. mosquitto_pub, JSON.
    let sf = reference("san_francisco_ferry_building");
    let ts_json = now_ms() - 500;
    let json = format!(
        r#"{{"ts_ms": {ts_json}, "lat": {}, "lon": {}, "accuracy_m": 6.5}}"#,
        sf.lat, sf.lon
    );
    let published = Instant::now();
    server.mosquitto_pub("fleet/json-1/pos", json.as_bytes());
    let (body, took) = wait_vehicle(&server, "json-1", ts_json, published).await;
    assert_cells(&body, &sf);
    assert_eq!(body["accuracy_m"].as_f64(), Some(6.5));
    assert!(
        took <= window + Duration::from_secs(1),
        "JSON took {took:?}"
    );

    // 3. OwnTracks JSON (tst in seconds, vel in km/h).
    let sydney = reference("sydney_opera_house");
    let tst = now_ms() / 1000 - 2;
    let owntracks = format!(
        r#"{{"_type":"location","tid":"ap","lat":{},"lon":{},"tst":{tst},"acc":10,"vel":72,"cog":180,"batt":55}}"#,
        sydney.lat, sydney.lon
    );
    let published = Instant::now();
    server.mosquitto_pub("owntracks/alice/phone", owntracks.as_bytes());
    let (body, took) = wait_vehicle(&server, "alice/phone", tst * 1000, published).await;
    assert_cells(&body, &sydney);
    assert_eq!(body["speed_mps"].as_f64(), Some(20.0), "72 km/h");
    assert_eq!(body["heading_deg"].as_f64(), Some(180.0));
    assert!(
        took <= window + Duration::from_secs(1),
        "OwnTracks took {took:?}"
    );

    // Non-location OwnTracks messages are ignored, not rejected.
    server.mosquitto_pub("owntracks/alice/phone", br#"{"_type":"lwt","tst":1}"#);
    let ignored = server
        .wait_for(Duration::from_secs(5), || async {
            let v = server
                .metric("fleetd_ignored_total{kind=\"owntracks_non_location\"}")
                .await;
            (v >= 1.0).then_some(v)
        })
        .await;
    assert_eq!(ignored, Some(1.0));
    assert_eq!(
        server
            .metric("fleetd_rejected_total{reason=\"malformed\"}")
            .await,
        0.0
    );

    // The area queries find them, in JSON and GeoJSON.
    let (status, body) = server
        .get(&format!(
            "/v1/vehicles?near={},{}&radius_m=500",
            berlin.lat, berlin.lon
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["vehicles"]
        .as_array()
        .expect("vehicles")
        .iter()
        .filter_map(|v| v["device_id"].as_str())
        .collect();
    assert_eq!(ids, ["pb-1"]);
    let cell = sf.cells["9"].as_str().expect("cell");
    let (status, body) = server
        .get(&format!("/v1/vehicles?cell={cell}&format=geojson"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "FeatureCollection");
    assert_eq!(body["features"][0]["properties"]["device_id"], "json-1");
    assert_eq!(
        body["features"][0]["geometry"]["coordinates"],
        serde_json::json!([sf.lon, sf.lat])
    );
}
