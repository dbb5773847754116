//! Restart and graceful shutdown: SIGINT writes the batch in flight, and a
//! restarted server on the same directory serves the same data.

use std::time::Duration;

use fleetd_schemas::proto;
use prost::Message;

use crate::util::{Fleetd, now_ms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_writes_the_batch_in_flight_and_data_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A long window keeps the points in the processor's pending batch when
    // SIGINT arrives: only a graceful drain can store them.
    let mut server = Fleetd::start(&data, &["--window-ms", "30000"]).await;
    let client = server.mqtt_client("e2e-restart").await;
    let t0 = now_ms() - 60_000;
    let n = 120;
    for i in 0..n {
        let p = proto::Position {
            ts_ms: t0 + i * 500,
            lat: 48.8566 + i as f64 * 1e-4,
            lon: 2.3522,
            seq: Some(i as u64),
            ..Default::default()
        };
        client
            .publish(
                "fleet/restart-1/pos",
                rumqttc::QoS::AtLeastOnce,
                false,
                p.encode_to_vec(),
            )
            .await
            .expect("publish");
    }
    // Let the broker acknowledge the publishes (QoS 1) before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = server.get("/v1/vehicles/restart-1").await;
    assert_eq!(status, 404, "nothing is stored before the window ends");

    let status = server.interrupt();
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
    let log = server.log();
    assert!(log.contains("store flushed"), "drain order logged:\n{log}");
    drop(server);

    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let (status, latest) = server.get("/v1/vehicles/restart-1").await;
    assert_eq!(status, 200, "{latest}; first run's log:\n{log}");
    assert_eq!(latest["ts_ms"], t0 + (n - 1) * 500);
    assert_eq!(latest["seq"], n - 1);
    let (_, track) = server.get("/v1/vehicles/restart-1/track?limit=1000").await;
    assert_eq!(track["items"].as_array().map(Vec::len), Some(n as usize));

    // State was restored: an older point after restart does not regress latest.
    let client = server.mqtt_client("e2e-restart-2").await;
    let old = proto::Position {
        ts_ms: t0 - 1000,
        lat: 48.0,
        lon: 2.0,
        ..Default::default()
    };
    client
        .publish(
            "fleet/restart-1/pos",
            rumqttc::QoS::AtLeastOnce,
            false,
            old.encode_to_vec(),
        )
        .await
        .expect("publish");
    let grown = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, track) = server.get("/v1/vehicles/restart-1/track?limit=1000").await;
            (track["items"].as_array().map(Vec::len) == Some(n as usize + 1)).then_some(())
        })
        .await;
    assert!(grown.is_some(), "late point stored in history");
    let (_, latest) = server.get("/v1/vehicles/restart-1").await;
    assert_eq!(latest["ts_ms"], t0 + (n - 1) * 500, "latest not regressed");
}

/// A vehicle restarted in the middle of a trip keeps one trip and its
/// odometer. The server stays down longer than `trip_end_s`: silence while
/// fleetd is down must not end the trip (it could not hear the vehicle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_trip_keeps_one_trip_and_the_odometer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[processor]\nsweep_s = 1\n[vehicle]\nstopped_after_s = 5.0\ntrip_end_s = 15.0\n",
    )
    .expect("config");
    let args = [
        "--config",
        config.to_str().expect("utf-8"),
        "--window-ms",
        "200",
    ];
    // 15 m/s due north, one fix a second; then standing for 30 s.
    let t0 = now_ms() - 600_000;
    let step_deg = 15.0 / 111_195.0;
    let fix = |i: i64| {
        let moving = i.min(119);
        (t0 + i * 1000, 45.0 + moving as f64 * step_deg, 7.0)
    };
    let geodesic = |from: i64, to: i64| -> f64 {
        (from..to)
            .map(|i| {
                let (_, lat1, lon1) = fix(i);
                let (_, lat2, lon2) = fix(i + 1);
                fleetd_processor::kinematics::geodesic_m(lat1, lon1, lat2, lon2)
            })
            .sum()
    };
    async fn publish(server: &Fleetd, name: &str, fixes: impl Iterator<Item = (i64, f64, f64)>) {
        let client = server.mqtt_client(name).await;
        for (ts_ms, lat, lon) in fixes {
            let p = proto::Position {
                ts_ms,
                lat,
                lon,
                ..Default::default()
            };
            client
                .publish(
                    "fleet/trip-1/pos",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    p.encode_to_vec(),
                )
                .await
                .expect("publish");
        }
    }
    async fn state_at(server: &Fleetd, ts_ms: i64) -> serde_json::Value {
        server
            .wait_for(Duration::from_secs(20), || async {
                let (_, v) = server.get("/v1/vehicles/trip-1").await;
                (v["state_ts_ms"] == ts_ms).then_some(v)
            })
            .await
            .unwrap_or_else(|| panic!("state never reached ts {ts_ms}; log:\n{}", server.log()))
    }

    let mut server = Fleetd::start(&data, &args).await;
    publish(&server, "e2e-trip-a", (0..60).map(fix)).await;
    let before = state_at(&server, fix(59).0).await;
    assert_eq!(before["motion"], "moving", "{before}");
    assert_eq!(before["trip"]["open"], true, "{before}");
    let trip_id = before["trip"]["trip_id"].clone();
    let odometer_before = before["odometer_m"].as_f64().expect("odometer");
    // All the way so far (the API rounds to 0.1 m).
    let driven = geodesic(0, 59);
    assert!(
        (odometer_before - driven).abs() <= 0.1,
        "{odometer_before} vs {driven}"
    );
    assert!(server.interrupt().success(), "clean exit on SIGINT");
    drop(server);
    tokio::time::sleep(Duration::from_secs(16)).await;

    let server = Fleetd::start(&data, &args).await;
    let (_, restored) = server.get("/v1/vehicles/trip-1").await;
    assert_eq!(restored["odometer_m"], before["odometer_m"], "{restored}");
    assert_eq!(restored["trip"]["trip_id"], trip_id, "{restored}");
    // The sweep runs every second: give it time to (wrongly) end the trip.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, trips) = server.get("/v1/vehicles/trip-1/trips").await;
    assert_eq!(trips["trips"].as_array().map(Vec::len), Some(1), "{trips}");
    assert_eq!(trips["trips"][0]["open"], true, "{trips}");

    publish(&server, "e2e-trip-b", (60..150).map(fix)).await;
    let after = state_at(&server, fix(149).0).await;
    assert_eq!(after["motion"], "stopped", "{after}");
    let (_, trips) = server.get("/v1/vehicles/trip-1/trips").await;
    let list = trips["trips"].as_array().expect("trips");
    assert_eq!(list.len(), 1, "one trip across the restart: {trips}");
    let trip = &list[0];
    assert_eq!(trip["trip_id"], trip_id, "{trip}");
    assert_eq!(trip["open"], false, "{trip}");
    // The trip ends where the stop begins: within the stop radius of the
    // place the vehicle stood.
    let (_, stop_lat, stop_lon) = fix(119);
    let end_off = fleetd_processor::kinematics::geodesic_m(
        trip["end"]["lat"].as_f64().expect("lat"),
        trip["end"]["lon"].as_f64().expect("lon"),
        stop_lat,
        stop_lon,
    );
    assert!(end_off <= 50.0, "{trip}");
    // Continuous: the odometer went on from where it was, and the trip holds
    // the whole way, less the approach to the stop (within its radius, taken
    // as the stop's noise).
    let odometer_after = after["odometer_m"].as_f64().expect("odometer");
    let whole = geodesic(0, 119);
    assert!(
        odometer_after >= whole - 50.0 && odometer_after <= whole + 0.1,
        "odometer {odometer_after} vs {whole} driven (was {odometer_before} before the restart)"
    );
    let distance = trip["distance_m"].as_f64().expect("distance");
    assert!((distance - odometer_after).abs() < 0.5, "{trip} vs {after}");
}
