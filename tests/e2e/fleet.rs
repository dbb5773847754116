//! A simulated fleet of 1,000 vehicles, each its own MQTT connection: every
//! published point is stored and every latest is the last point published.

use std::time::Duration;

use std::sync::Arc;

use fleetd_simulator::{Credentials, Qos, SimConfig};
use tokio_util::sync::CancellationToken;

use crate::util::{Fleetd, issue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_vehicles_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Each vehicle logs in as itself, with a secret provisioned in bulk.
    let mut config = SimConfig {
        vehicles: 1000,
        id_prefix: "fleet-".into(),
        ..Default::default()
    };
    let ids = config.device_ids();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let secrets = issue(&data, &ids, false);
    config.credentials = Credentials::PerDevice(Arc::new(secrets.into_iter().collect()));
    let server = Fleetd::start(&data, &["--window-ms", "250"]).await;
    let config = SimConfig {
        broker: format!("127.0.0.1:{}", server.mqtt_port),
        vehicles: 1000,
        rate_hz: 1.0,
        duration: Some(Duration::from_secs(6)),
        qos: Qos::AtLeastOnce,
        seed: 7,
        ..config
    };
    let report = fleetd_simulator::run(config, CancellationToken::new())
        .await
        .expect("simulation runs");
    assert_eq!(report.vehicles_connected, 1000, "{}", report.summary());
    assert_eq!(report.failed, 0, "{}", report.summary());
    assert!(report.published >= 4000, "{}", report.summary());

    // Everything acknowledged must become visible within a few windows.
    let expected = report.published as f64;
    let stored = server
        .wait_for(Duration::from_secs(20), || async {
            let v = server.metric("fleetd_positions_stored_total").await;
            (v >= expected).then_some(v)
        })
        .await;
    assert_eq!(
        stored,
        Some(expected),
        "stored vs published; log:\n{}",
        server.log()
    );

    for vehicle in &report.vehicles {
        let last = vehicle.last.as_ref().expect("each vehicle published");
        let (status, latest) = server
            .get(&format!("/v1/vehicles/{}", vehicle.device_id))
            .await;
        assert_eq!(status, 200, "{}: {latest}", vehicle.device_id);
        assert_eq!(latest["ts_ms"], last.ts_ms, "{}", vehicle.device_id);
        assert_eq!(
            latest["lat"].as_f64(),
            Some(last.lat),
            "{}",
            vehicle.device_id
        );
        assert_eq!(
            latest["lon"].as_f64(),
            Some(last.lon),
            "{}",
            vehicle.device_id
        );
        assert_eq!(latest["seq"].as_u64(), last.seq, "{}", vehicle.device_id);

        let (status, track) = server
            .get(&format!(
                "/v1/vehicles/{}/track?limit=10000",
                vehicle.device_id
            ))
            .await;
        assert_eq!(status, 200);
        let items = track["items"].as_array().expect("items");
        assert_eq!(
            items.len() as u64,
            vehicle.published,
            "{} history",
            vehicle.device_id
        );
        assert!(
            items
                .windows(2)
                .all(|w| w[0]["ts_ms"].as_i64() < w[1]["ts_ms"].as_i64()),
            "history in time order"
        );
    }
    assert_eq!(server.metric("fleetd_duplicates_total").await, 0.0);
}
