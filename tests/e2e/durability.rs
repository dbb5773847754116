//! Acknowledged means stored: a position fleetd acknowledged (QoS 1 PUBACK,
//! HTTP 202) survives `kill -9` and SIGTERM under load, because the ingest
//! journal holds it before the acknowledgement and a restart replays it.
//! The devices here behave like the trackers: one publish at a time, the
//! next only after the PUBACK, no resend of what was acknowledged.

use std::time::Duration;

use crate::util::{AckedDevice, Fleetd, missing_after, now_ms};

/// Devices publishing at once in the crash tests.
const DEVICES: usize = 8;

/// Starts [`DEVICES`] devices `{prefix}-0`... whose first fix is `first_ts`.
fn start_devices(server: &Fleetd, prefix: &str, first_ts: i64) -> Vec<AckedDevice> {
    (0..DEVICES)
        .map(|d| {
            AckedDevice::start(
                server.mqtt_port,
                server.mqtt_login(),
                &format!("{prefix}-{d}"),
                first_ts,
                100_000,
            )
        })
        .collect()
}

/// Waits until the devices have `at_least` acknowledgements between them.
async fn wait_acked(server: &Fleetd, devices: &[AckedDevice], at_least: usize) {
    let enough = server
        .wait_for(Duration::from_secs(60), || async {
            let n: usize = devices.iter().map(AckedDevice::acked).sum();
            (n >= at_least).then_some(())
        })
        .await;
    let n: usize = devices.iter().map(AckedDevice::acked).sum();
    assert!(
        enough.is_some(),
        "only {n} positions acknowledged in 60 s; log:\n{}",
        server.log()
    );
}

/// Every acknowledged position of every device is stored after the
/// restart; returns how many there were.
async fn assert_all_stored(server: &Fleetd, acked: &[(String, Vec<i64>)], what: &str) -> usize {
    let mut total = 0;
    for (id, ts) in acked {
        total += ts.len();
        let missing = missing_after(server, id, ts, Duration::from_secs(30)).await;
        assert!(
            missing.is_empty(),
            "{what}: {} of {id}'s {} acknowledged positions are not stored (first: {:?}); log:\n{}",
            missing.len(),
            ts.len(),
            missing.first(),
            server.log()
        );
    }
    eprintln!("{what}: all {total} acknowledged positions stored");
    total
}

// Three crashes in a row on one data directory, each in the middle of a
// QoS 1 load from eight devices with a one-second window: without the
// journal each crash lost the last one to two windows of acknowledged
// positions (thousands at this rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_qos1_load_loses_no_acknowledged_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut acked_all: Vec<(String, Vec<i64>)> = Vec::new();
    for round in 0..3 {
        let mut server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
        // Everything acknowledged before the previous crash is still there.
        assert_all_stored(&server, &acked_all, "after the restart").await;
        let first_ts = now_ms() - 3_600_000 + round * 600_000;
        let devices = start_devices(&server, &format!("crash{round}"), first_ts);
        wait_acked(&server, &devices, 1500).await;
        server.crash();
        for device in devices {
            let id = device.id.clone();
            acked_all.push((id, device.finish().await));
        }
    }
    let server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let total = assert_all_stored(&server, &acked_all, "after the last crash").await;
    assert!(total >= 4500, "{total} positions acknowledged in all");
    // They came back through the journal: the load never paused, so the
    // last segment always held positions when the process died.
    assert!(
        server
            .metric("fleetd_journal_replayed_positions_total")
            .await
            > 0.0,
        "nothing replayed from the journal; log:\n{}",
        server.log()
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

// A service manager's stop under load: what was acknowledged before or
// during the drain is stored, and fleetd exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_qos1_load_loses_no_acknowledged_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let first_ts = now_ms() - 3_600_000;
    let devices = start_devices(&server, "term", first_ts);
    wait_acked(&server, &devices, 1500).await;
    let status = server.terminate();
    assert!(status.success(), "clean exit; log:\n{}", server.log());
    let mut acked = Vec::new();
    for device in devices {
        let id = device.id.clone();
        acked.push((id, device.finish().await));
    }
    let server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let total = assert_all_stored(&server, &acked, "after SIGTERM").await;
    assert!(total >= 1500, "{total} positions acknowledged");
}

// HTTP ingest: a 202 is sent once the batch is in the journal. A long
// window keeps it in the processor's pending batch, so only the journal
// can bring it back after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_202_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Fleetd::start(&data, &["--window-ms", "30000"]).await;
    let first_ts = now_ms() - 600_000;
    let items: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            serde_json::json!({
                "device_id": "http-crash-1",
                "ts_ms": first_ts + i * 1000,
                "lat": 52.52 + i as f64 * 1e-5,
                "lon": 13.41,
            })
        })
        .collect();
    let r = server
        .client
        .post(format!("{}/v1/positions", server.http))
        .json(&items)
        .send()
        .await
        .expect("POST /v1/positions");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        server.metric("fleetd_positions_stored_total").await,
        0.0,
        "the window still holds the batch"
    );
    server.crash();
    let server = Fleetd::start(&data, &[]).await;
    let acked: Vec<i64> = (0..200).map(|i| first_ts + i * 1000).collect();
    let missing = missing_after(&server, "http-crash-1", &acked, Duration::from_secs(30)).await;
    assert!(
        server
            .metric("fleetd_journal_replayed_positions_total")
            .await
            >= 200.0,
        "the batch came back through the journal; log:\n{}",
        server.log()
    );
    assert!(
        missing.is_empty(),
        "{} of 200 positions lost; log:\n{}",
        missing.len(),
        server.log()
    );
}
