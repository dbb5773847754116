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
fn bench_runs_both_qos_phases_end_to_end_and_loses_nothing() {
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
            "0,1",
            "--probes",
            "2",
            "--window-ms",
            "200",
            "--near-queries",
            "50",
            "--near-concurrency",
            "2",
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
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "{report}");
    for (phase, qos) in phases.iter().zip([0, 1]) {
        assert_eq!(phase["qos"], qos, "{report}");
        let published = phase["published"].as_u64().expect("published");
        assert!(published >= 2500, "{report}");
        assert_eq!(phase["stored"].as_u64(), Some(published), "{report}");
        assert_eq!(phase["lost"], 0, "{report}");
        assert_eq!(phase["rejected"], 0, "{report}");
        assert!(
            phase["latency_ms"]["samples"].as_u64() > Some(5),
            "{report}"
        );
        assert!(phase["latency_ms"]["p99"].as_f64() > Some(0.0), "{report}");
        // Batch sizes come from the server's own histogram of this phase.
        let batches = phase["batch_positions"]["count"].as_u64().expect("batches");
        assert!(batches >= 3, "{report}");
        assert!(
            phase["batch_positions"]["mean"].as_f64() > Some(1.0),
            "{report}"
        );
    }
    let near = &report["near"];
    assert_eq!(near["queries"], 50, "{report}");
    assert_eq!(near["errors"], 0, "{report}");
    assert!(near["mean_results"].as_f64() > Some(1.0), "{report}");
    assert!(
        report["server_peak_rss_mb"].as_f64() > Some(1.0),
        "{report}"
    );
}

#[test]
fn bench_with_chaos_counts_what_the_server_rejects_and_drops() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args([
            "bench",
            "--vehicles",
            "100",
            "--rate",
            "500",
            "--duration",
            "3s",
            "--connections",
            "2",
            "--qos",
            "1",
            "--probes",
            "1",
            "--window-ms",
            "200",
            "--chaos",
            "malformed=0.05,duplicate=0.05",
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
    let phase = &report["phases"][0];
    let malformed = phase["chaos"]["malformed"].as_u64().expect("malformed");
    let duplicate = phase["chaos"]["duplicate"].as_u64().expect("duplicate");
    assert!(malformed > 10 && duplicate > 10, "{report}");
    // Every malformed message is rejected, every duplicate dropped, and
    // every real position stored once.
    assert_eq!(phase["rejected"].as_u64(), Some(malformed), "{report}");
    assert_eq!(
        phase["duplicates_dropped"].as_u64(),
        Some(duplicate),
        "{report}"
    );
    assert_eq!(phase["lost"], 0, "{report}");
}

#[test]
fn bench_store_write_path_and_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = dir.path().join("rows.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args(["bench", "--store-rows", "5000", "--store-batch", "1000"])
        .args(["--vehicles", "500", "--json", "--export-rows"])
        .arg(&rows)
        .output()
        .expect("run fleetd bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["rows"], 5000, "{report}");
    assert!(report["rows_per_s"].as_f64() > Some(100.0), "{report}");
    let csv = std::fs::read_to_string(&rows).expect("rows written");
    assert_eq!(csv.lines().count(), 5001);

    let fleet = dir.path().join("fleet.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args(["bench", "--vehicles", "300", "--export-fleet"])
        .arg(&fleet)
        .output()
        .expect("run fleetd bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(&fleet).expect("fleet written");
    assert_eq!(csv.lines().count(), 301);
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("bench-q0-0000,52."))
    );
}
