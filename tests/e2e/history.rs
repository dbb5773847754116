//! History compaction and retention in the embedded store, through the
//! real server: fixes published over MQTT (mosquitto_pub and rumqttc) are
//! merged into compact blocks by the store's maintenance and read back
//! unchanged; a crash in the middle loses nothing; with a shorter
//! `history_days` the old day disappears whole and recent history stays.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleetd_schemas::proto;
use prost::Message;

use crate::util::{Fleetd, now_ms, stored_ts};

const DAY_MS: i64 = 86_400_000;

fn config(dir: &Path, history_days: u32) -> std::path::PathBuf {
    let path = dir.join(format!("fleetd-{history_days}.toml"));
    std::fs::write(
        &path,
        format!("[store]\nhistory_days = {history_days}\nmaintenance_interval_s = 1\n"),
    )
    .expect("write config");
    path
}

/// Coordinates with 7 decimals, as trackers send them.
fn coords(i: i64) -> (f64, f64) {
    let lat = format!("{:.7}", 60.1699 + i as f64 * 3.1e-5);
    let lon = format!("{:.7}", 24.9384 + i as f64 * 4.7e-5);
    (lat.parse().expect("lat"), lon.parse().expect("lon"))
}

/// `(lat, lon)` by `ts_ms` of every stored fix of `id`.
async fn track(server: &Fleetd, id: &str) -> BTreeMap<i64, (f64, f64)> {
    let (status, body) = server
        .get(&format!("/v1/vehicles/{id}/track?from=0&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            let ts = p["ts_ms"].as_i64().expect("ts");
            (
                ts,
                (
                    p["lat"].as_f64().expect("lat"),
                    p["lon"].as_f64().expect("lon"),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_compacted_survives_a_crash_and_old_days_are_dropped_at_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let keep_five = config(dir.path(), 5);
    let mut server = Fleetd::start(&data, &["--config", keep_five.to_str().expect("utf-8")]).await;
    let id = "hist-1";
    let now = now_ms();
    let old_t0 = now - 3 * DAY_MS;
    let recent_t0 = now - 2 * 3_600_000;
    let mut sent: BTreeMap<i64, (f64, f64)> = BTreeMap::new();

    // Three days old (a tracker's backlog), over mosquitto_pub as JSON.
    for i in 0..15 {
        let ts = old_t0 + i * 1000;
        let (lat, lon) = coords(i);
        let json = format!(r#"{{"ts_ms":{ts},"lat":{lat},"lon":{lon},"speed_mps":8.25}}"#);
        server.mosquitto_pub(&format!("fleet/{id}/pos"), json.as_bytes());
        sent.insert(ts, (lat, lon));
    }
    // Two hours old and current, over rumqttc as protobuf.
    let client = server.mqtt_client("e2e-history").await;
    let times = (0..20)
        .map(|i| recent_t0 + i * 1000)
        .chain((0..5).map(|i| now - 5000 + i * 1000));
    for (i, ts) in times.enumerate() {
        let (lat, lon) = coords(100 + i as i64);
        let p = proto::Position {
            ts_ms: ts,
            lat,
            lon,
            speed_mps: Some(8.25),
            ..Default::default()
        };
        client
            .publish(
                format!("fleet/{id}/pos"),
                rumqttc::QoS::AtLeastOnce,
                false,
                p.encode_to_vec(),
            )
            .await
            .expect("publish");
        sent.insert(ts, (lat, lon));
    }
    let stored = server
        .wait_for(Duration::from_secs(20), || async {
            (stored_ts(&server, id, 0).await.len() == sent.len()).then_some(())
        })
        .await;
    assert!(stored.is_some(), "all stored; log:\n{}", server.log());

    // The late fixes (old and two hours old) are merged into blocks by
    // the maintenance pass, which runs every second here.
    let compacted = server
        .wait_for(Duration::from_secs(20), || async {
            let rows = server
                .metric("fleetd_store_history_maintained_total{what=\"rows_compacted\"}")
                .await;
            (rows >= 35.0).then_some(())
        })
        .await;
    assert!(
        compacted.is_some(),
        "late rows compacted; log:\n{}",
        server.log()
    );
    // (Its value is 0 until fjall flushes the blocks' memtable.)
    let scrape = server.get_text("/metrics").await;
    for tier in ["history", "history_hot", "history_blocks"] {
        let series = format!("fleetd_store_disk_bytes{{keyspace=\"{tier}\"}}");
        assert!(scrape.contains(&series), "{series} exported");
    }
    assert_eq!(
        track(&server, id).await,
        sent,
        "read back unchanged from blocks"
    );

    // kill -9 while the passes go on: nothing stored is lost.
    server.crash();
    let mut server = Fleetd::start(&data, &["--config", keep_five.to_str().expect("utf-8")]).await;
    assert_eq!(track(&server, id).await, sent, "the same after the crash");
    server.interrupt();

    // Keep one day: the day three days ago is dropped whole.
    let keep_one = config(dir.path(), 1);
    let server = Fleetd::start(&data, &["--config", keep_one.to_str().expect("utf-8")]).await;
    let dropped = server
        .wait_for(Duration::from_secs(20), || async {
            let days = server
                .metric("fleetd_store_history_maintained_total{what=\"days_dropped\"}")
                .await;
            (days >= 1.0).then_some(())
        })
        .await;
    assert!(dropped.is_some(), "old day dropped; log:\n{}", server.log());
    let recent: BTreeMap<i64, (f64, f64)> = sent
        .into_iter()
        .filter(|(ts, _)| *ts >= recent_t0)
        .collect();
    assert_eq!(track(&server, id).await, recent, "recent history stays");
    let (status, body) = server
        .get(&format!(
            "/v1/vehicles/{id}/track?from={old_t0}&to={}&limit=100",
            old_t0 + DAY_MS
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "{body}");
}
