//! MQTT 3.1.1 conformance: the Eclipse Paho interoperability client tests
//! (vendored unmodified in vendor/paho-mqtt-testing, run by
//! tests/mqtt/paho_interop.py) against fleetd's embedded broker and, in the
//! same run, against Mosquitto. fleetd must pass every test Mosquitto
//! passes.
//!
//! The suite logs in without credentials, so fleetd runs with
//! `--allow-anonymous` here, as Mosquitto does with `allow_anonymous true`.
//! `test_subscribe_failure` needs a broker configured to refuse
//! subscriptions to `test/nosubscribe`, which neither is here; with
//! authentication on, fleetd refuses subscriptions outside a device's own
//! topics (tests/e2e/auth.rs).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::external::Mosquitto;
use crate::util::Fleetd;

/// Every test of the suite and its outcome against the broker on `port`.
fn run_suite(port: u16) -> BTreeMap<String, (String, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt/paho_interop.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .output()
        .expect("python3 runs the Paho suite");
    let results: BTreeMap<String, (String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["test"].as_str().unwrap_or_default().to_owned(),
                (
                    v["result"].as_str().unwrap_or_default().to_owned(),
                    v["detail"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(
        results.len(),
        10,
        "the suite did not run its 10 tests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_interoperability_suite_passes_everything_mosquitto_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--allow-anonymous"]).await;
    let mosquitto = Mosquitto::start();
    let (fleetd_port, mosquitto_port) = (server.mqtt_port, mosquitto.port);
    // The two runs take ~40 s each, mostly the suite's own waits: side by
    // side.
    let fleetd = tokio::task::spawn_blocking(move || run_suite(fleetd_port));
    let reference = tokio::task::spawn_blocking(move || run_suite(mosquitto_port));
    let (fleetd, reference) = (
        fleetd.await.expect("fleetd run"),
        reference.await.expect("mosquitto run"),
    );
    for (test, (outcome, _)) in &reference {
        if outcome == "pass" {
            let (ours, detail) = &fleetd[test];
            assert_eq!(
                ours,
                "pass",
                "{test} passes against Mosquitto but not fleetd:\n{detail}\nlog:\n{}",
                server.log()
            );
        }
    }
    let passed: Vec<&str> = fleetd
        .iter()
        .filter(|(_, (o, _))| o == "pass")
        .map(|(t, _)| t.as_str())
        .collect();
    // Mosquitto 2 fails test_overlapping_subscriptions (it sends one
    // message for overlapping subscriptions, which 3.1.1 allows but the
    // test does not); fleetd passes it.
    assert_eq!(passed.len(), 9, "fleetd passed {passed:?}");
    assert_eq!(fleetd["test_subscribe_failure"].0, "fail");
}
