//! The OpenAPI document and the server agree: Schemathesis (PyPI, in the
//! virtual environment scripts/test makes) runs every check against a
//! fleetd holding a vehicle and a geofence, seeded and bounded
//! (tests/api/schemathesis.toml, which also lists the few constraints an
//! OpenAPI document cannot state), and must find nothing.

use std::process::Command;

use serde_json::json;

use crate::util::{Fleetd, now_ms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_mismatch_between_the_document_and_the_server() {
    let python = std::env::var("FLEETD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("FLEETD_TEST_PYTHON is not set: run scripts/test, which installs Schemathesis")
    });
    let schemathesis = std::path::Path::new(&python).with_file_name("schemathesis");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    // Schemathesis sends bad tokens on purpose (to see them refused); the
    // login throttle would then refuse its good one too.
    std::fs::write(&config, "[auth]\nmax_failed_logins_per_minute = 1000000\n").expect("config");
    let server = Fleetd::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
    )
    .await;
    let r = server
        .client
        .post(format!("{}/v1/positions", server.http))
        .json(
            &json!([{"device_id": "car-1", "ts_ms": now_ms() - 60_000, "lat": 52.5, "lon": 13.4}]),
        )
        .send()
        .await
        .expect("position");
    assert_eq!(r.status(), 202);
    let r = server
        .client
        .put(format!("{}/v1/geofences/depot", server.http))
        .json(&json!({"center": [13.4, 52.5], "radius_m": 100.0}))
        .send()
        .await
        .expect("geofence");
    assert_eq!(r.status(), 201);
    server
        .wait_for(std::time::Duration::from_secs(10), || async {
            (server.get("/v1/vehicles/car-1").await.0 == 200).then_some(())
        })
        .await
        .expect("car-1 stored");

    let token = server.admin_token.clone().expect("admin token");
    let settings = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/schemathesis.toml");
    let out = tokio::task::spawn_blocking({
        let url = format!("{}/openapi.json", server.http);
        move || {
            Command::new(&schemathesis)
                .arg("--config-file")
                .arg(settings)
                .arg("--no-color")
                .args(["run", &url, "--checks", "all"])
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .output()
                .unwrap_or_else(|e| {
                    panic!("{}: {e} (scripts/test installs it)", schemathesis.display())
                })
        }
    })
    .await
    .expect("schemathesis run");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Schemathesis found mismatches:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("No issues found"), "{report}");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
