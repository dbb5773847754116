//! `serve --demo N` runs a moving fleet in-process; `bench` runs end to end.

use std::process::Command;
use std::time::Duration;

use crate::util::Fleetd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_fleet_moves_on_the_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &["--demo", "25", "--window-ms", "250"],
    )
    .await;
    // The demo city is around Berlin's centre (52.52, 13.405), 3 km across.
    let area = "/v1/vehicles?bbox=13.3,52.45,13.5,52.6";
    let first = server
        .wait_for(Duration::from_secs(20), || async {
            let (_, body) = server.get(area).await;
            (body["count"] == 25).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("25 demo vehicles never showed up; log:\n{}", server.log()));
    let position_of = |body: &serde_json::Value, id: &str| {
        body["vehicles"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["device_id"] == id))
            .map(|v| (v["ts_ms"].as_i64(), v["lat"].as_f64(), v["lon"].as_f64()))
    };
    let id = first["vehicles"][0]["device_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = position_of(&first, &id);
    let moved = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, body) = server.get(area).await;
            let now = position_of(&body, &id);
            (now.is_some() && now.map(|p| p.0) != before.map(|p| p.0)).then_some(())
        })
        .await;
    assert!(moved.is_some(), "demo vehicle {id} reports new positions");
}

#[test]
fn bench_runs_end_to_end_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args([
            "bench",
            "--vehicles",
            "200",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--connections",
            "2",
            "--qos",
            "1",
            "--probes",
            "2",
            "--window-ms",
            "200",
            "--json",
        ])
        .output()
        .expect("run fleetd bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let published = report["published"].as_u64().expect("published");
    assert!(published >= 2500, "{report}");
    assert_eq!(report["stored"].as_u64(), Some(published), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");
    assert!(
        report["latency_ms"]["samples"].as_u64() > Some(5),
        "{report}"
    );
    assert!(report["latency_ms"]["p99"].as_f64() > Some(0.0), "{report}");
    assert!(
        report["server_peak_rss_mb"].as_f64() > Some(1.0),
        "{report}"
    );
}
