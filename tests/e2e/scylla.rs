//! `fleetd serve --store scylla` against a fake ScyllaDB node (scylla-proxy
//! in dry mode with a tiny in-memory CQL engine, shared with the store's
//! tests): positions flow to the store and back out of the API, and a
//! cluster that becomes unavailable turns `/readyz` to 503 without
//! stopping fleetd, which recovers with the cluster.

#[path = "../../store/tests/support/fake_scylla.rs"]
mod fake_scylla;

use std::time::Duration;

use fake_scylla::{FakeScylla, KEYSPACE};
use scylla_proxy::{Condition, RequestOpcode, RequestReaction, RequestRule, example_db_errors};

use crate::util::{Fleetd, mosquitto_pub, now_ms};

// Multi-threaded: the fake node runs on this runtime and must keep
// answering while the test thread blocks waiting for fleetd to exit (its
// final batch is written during shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_scylla_reports_unavailability_on_readyz_and_recovers() {
    let mut fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fake.addr.to_string();
    let server = Fleetd::start(
        &dir.path().join("unused"),
        &[
            "--store",
            "scylla",
            "--scylla-uri",
            &uri,
            "--scylla-keyspace",
            KEYSPACE,
            "--window-ms",
            "100",
        ],
    )
    .await;

    let ts = now_ms();
    let payload = format!("{{\"ts_ms\": {ts}, \"lat\": 52.5219, \"lon\": 13.4132}}");
    mosquitto_pub(server.mqtt_port, "fleet/sc-1/pos", payload.as_bytes());
    let latest = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get("/v1/vehicles/sc-1").await;
            (status == 200).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("position not stored; log:\n{}", server.log()));
    assert_eq!(latest["ts_ms"].as_i64(), Some(ts));
    let (status, near) = server
        .get("/v1/vehicles?near=52.5219,13.4132&radius_m=100")
        .await;
    assert_eq!(status, 200, "{near}");
    assert!(near.to_string().contains("sc-1"), "{near}");

    // Every statement now fails as if too few replicas were alive.
    fake.prepend_rules(vec![RequestRule(
        Condition::RequestOpcode(RequestOpcode::Execute),
        RequestReaction::forge_with_error(example_db_errors::unavailable()),
    )]);
    let not_ready = server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get("/readyz").await;
            (status == 503).then_some(body)
        })
        .await;
    assert!(
        not_ready.is_some(),
        "readyz stayed up; log:\n{}",
        server.log()
    );
    let (status, _) = server.get("/v1/vehicles/sc-1").await;
    assert!(
        status >= 500,
        "reads fail while the store is down: {status}"
    );

    fake.reset_rules();
    let ready = server
        .wait_for(Duration::from_secs(10), || async {
            (server.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
    assert!(
        ready.is_some(),
        "readyz did not recover; log:\n{}",
        server.log()
    );
    let mut server = server;
    let status = server.interrupt();
    assert!(status.success(), "clean exit; log:\n{}", server.log());
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
