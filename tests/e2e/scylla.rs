//! `fleetd serve --store scylla` against a fake ScyllaDB node (scylla-proxy
//! in dry mode with a tiny in-memory CQL engine, shared with the store's
//! tests): positions flow to the store and back out of the API, and a
//! cluster that becomes unavailable turns `/readyz` to 503 without
//! stopping fleetd, which recovers with the cluster. While the store is
//! down, batches wait and acknowledgements are held back: nothing
//! acknowledged is lost.

#[path = "../../store/tests/support/fake_scylla.rs"]
mod fake_scylla;

use std::time::Duration;

use fake_scylla::{FakeScylla, KEYSPACE};
use scylla_proxy::{Condition, RequestOpcode, RequestReaction, RequestRule, example_db_errors};

use crate::util::{AckedDevice, Fleetd, missing_after, now_ms};

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
    server.mosquitto_pub("fleet/sc-1/pos", payload.as_bytes());
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
    // Per-statement latency, labelled with the statement's name.
    let metrics = server.get_text("/metrics").await;
    for statement in ["insert_latest", "insert_cell", "select_latest"] {
        let series = format!("fleetd_scylla_statement_seconds_count{{statement=\"{statement}\"}}");
        assert!(
            crate::util::parse_metric(&metrics, &series) >= 1.0,
            "{series} missing:\n{metrics}"
        );
    }

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

// The policy while the store is down (README, "When ScyllaDB is down or
// overloaded"): the batch being written is retried until stored, never
// dropped; the next one gathers up to `max_batch`, the bounded queues and
// the journal's queue fill, and then publishes are no longer acknowledged
// (the connection is closed after 5 s without room) instead of fleetd
// buffering more. When the cluster is back, every acknowledged position is
// written. Queues are made tiny here so that the load exceeds them many
// times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_holds_acknowledgements_back_and_loses_nothing_acknowledged() {
    let mut fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[processor]\npartitions = 1\nmax_batch = 50\nqueue_chunks = 1\n\
         partition_queue_chunks = 1\n[journal]\nqueue_appends = 16\n",
    )
    .expect("write config");
    let uri = fake.addr.to_string();
    let server = Fleetd::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
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

    fake.prepend_rules(vec![RequestRule(
        Condition::RequestOpcode(RequestOpcode::Execute),
        RequestReaction::forge_with_error(example_db_errors::unavailable()),
    )]);
    const N: usize = 5_000;
    let first_ts = now_ms() - N as i64 * 1000;
    let devices: Vec<AckedDevice> = (0..4)
        .map(|d| {
            AckedDevice::start(
                server.mqtt_port,
                server.mqtt_login(),
                &format!("bp-{d}"),
                first_ts,
                N,
            )
        })
        .collect();

    // What fleetd acknowledges while the store is down, in positions: the
    // batch being retried and the next one (each < max_batch + one chunk),
    // one chunk in the partition queue and one in the processor's queue,
    // the journal writer's group and the journal's queue (16 appends of
    // one position), one blocked publish per device.
    const CHUNK: f64 = 512.0;
    let bound = 2.0 * (50.0 + CHUNK) + 2.0 * CHUNK + 2.0 * 16.0 + 4.0;
    let last = std::cell::Cell::new(usize::MAX);
    let settled = server
        .wait_for(Duration::from_secs(30), || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now: usize = devices.iter().map(AckedDevice::acked).sum();
            let before = last.replace(now);
            (now == before && now > 0).then_some(now)
        })
        .await;
    let held =
        settled.unwrap_or_else(|| panic!("fleetd kept acknowledging; log:\n{}", server.log()));
    assert!(
        held as f64 <= bound,
        "{held} positions acknowledged during the outage, more than the {bound} fleetd can hold"
    );
    assert!(
        server.log().contains("store write failed; retrying"),
        "the batch was retried while the store was down; log:\n{}",
        server.log()
    );
    assert_eq!(server.metric("fleetd_positions_stored_total").await, 0.0);

    // Longer than a retry's backoff: the batch has failed many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.reset_rules();
    let mut acked_total = 0;
    for device in devices {
        let id = device.id.clone();
        let acked = device.stop().await;
        acked_total += acked.len();
        let missing = missing_after(&server, &id, &acked, Duration::from_secs(60)).await;
        assert!(
            missing.is_empty(),
            "{} of {id}'s {} acknowledged positions not stored after the outage; log:\n{}",
            missing.len(),
            acked.len(),
            server.log()
        );
    }
    assert!(acked_total >= held, "{acked_total} < {held}");
    let mut server = server;
    let status = server.interrupt();
    assert!(status.success(), "clean exit; log:\n{}", server.log());
}
