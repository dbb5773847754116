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
