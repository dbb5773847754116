//! `fleetd serve --store scylla` against a fake ScyllaDB node (scylla-proxy
//! in dry mode with a tiny in-memory CQL engine, shared with the store's
//! tests): positions flow to the store and back out of the API, and a
//! cluster that becomes unavailable turns `/readyz` to 503 without
//! stopping fleetd, which recovers with the cluster. While the store is
//! down, batches wait and ingest is pushed back; nothing is lost.

#[path = "../../store/tests/support/fake_scylla.rs"]
mod fake_scylla;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use fake_scylla::{FakeScylla, KEYSPACE};
use scylla_proxy::{Condition, RequestOpcode, RequestReaction, RequestRule, example_db_errors};

use crate::util::{Fleetd, now_ms};

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

/// Publishes one message per line of `lines` with a single mosquitto_pub
/// (QoS 1), so thousands go out in one burst.
fn mosquitto_pub_lines(server: &Fleetd, topic: &str, lines: &str) {
    let mut command = Command::new("mosquitto_pub");
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &server.mqtt_port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
        "-l",
    ]);
    if let Some((username, password)) = server.mqtt_login() {
        command.args(["-u", &username, "-P", &password]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "mosquitto_pub is not installed: run scripts/test, which installs mosquitto-clients",
        );
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write messages");
    let out = child.wait_with_output().expect("mosquitto_pub ends");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// The policy while the store is down (README, "When ScyllaDB is down or
// overloaded"): the batch being written is retried and held, the next one
// gathers up to `max_batch`, the bounded queues fill, and then ingest waits
// (backpressure) and stops reading the broker instead of buffering more;
// when the cluster is back, every position is written. Queues are made tiny
// here so that a burst exceeds them several times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_holds_batches_pushes_back_on_ingest_and_loses_nothing() {
    let mut fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(
        &config,
        "[processor]\npartitions = 1\nmax_batch = 50\nqueue_chunks = 1\n\
         partition_queue_chunks = 1\nstore_retry_max = 1000\n",
    )
    .expect("write config");
    let uri = fake.addr.to_string();
    let server = Fleetd::start(
        &dir.path().join("unused"),
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
    const N: i64 = 10_000;
    let first_ts = now_ms() - N * 1000;
    let lines: String = (0..N)
        .map(|i| {
            format!(
                "{{\"ts_ms\": {}, \"lat\": 52.5219, \"lon\": 13.4132}}\n",
                first_ts + i * 1000
            )
        })
        .collect();
    mosquitto_pub_lines(&server, "fleet/bp-1/pos", &lines);

    // What fleetd can hold while the store is down, in positions: the batch
    // being retried and the next one (each < max_batch + one chunk), one
    // chunk in the partition queue, the dispatcher, the ingest queue and
    // ingest's own blocked send (ingest chunks are at most 512 positions).
    const CHUNK: f64 = 512.0;
    let bound = 2.0 * (50.0 + CHUNK) + 4.0 * CHUNK;
    let last = std::cell::Cell::new(-1.0);
    let settled = server
        .wait_for(Duration::from_secs(30), || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = server.metric("fleetd_received_total").await;
            let before = last.replace(now);
            (now == before && now > 0.0).then_some(now)
        })
        .await;
    let held =
        settled.unwrap_or_else(|| panic!("ingest never stopped reading; log:\n{}", server.log()));
    assert!(
        held <= bound,
        "ingest read {held} positions during the outage, more than the {bound} fleetd can hold"
    );
    assert!(
        server.log().contains("store write failed; retrying"),
        "the batch was retried while the store was down; log:\n{}",
        server.log()
    );
    assert_eq!(
        server.metric("fleetd_store_dropped_positions_total").await,
        0.0
    );

    fake.reset_rules();
    let path = format!("/v1/vehicles/bp-1/track?limit={N}");
    let stored = server
        .wait_for(Duration::from_secs(90), || async {
            let (status, body) = server.get(&path).await;
            let items = body["items"].as_array().map_or(0, Vec::len);
            (status == 200 && items as i64 == N).then_some(body)
        })
        .await;
    let (status, last) = server.get(&path).await;
    let got = last["items"].as_array().map_or(0, Vec::len);
    assert!(
        stored.is_some(),
        "{got} of {N} positions stored after the outage (status {status}); log:\n{}",
        server.log()
    );
    let items = last["items"].as_array().expect("items");
    assert_eq!(items[0]["ts_ms"].as_i64(), Some(first_ts));
    assert_eq!(
        items[items.len() - 1]["ts_ms"].as_i64(),
        Some(first_ts + (N - 1) * 1000)
    );
    assert_eq!(server.metric("fleetd_received_total").await, N as f64);
    assert!(server.metric("fleetd_ingest_blocked_seconds_count").await >= 1.0);
    assert_eq!(
        server.metric("fleetd_store_dropped_positions_total").await,
        0.0
    );
    assert_eq!(server.metric("fleetd_broker_dropped_total").await, 0.0);
}

// The bound of that policy: after `processor.store_retry_max` failed
// attempts a batch is dropped, counted, and not reported as stored; the
// partition then takes new batches, which are stored once the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_every_attempt_is_dropped_and_counted() {
    let mut fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("fleetd.toml");
    std::fs::write(&config, "[processor]\nstore_retry_max = 2\n").expect("write config");
    let uri = fake.addr.to_string();
    let server = Fleetd::start(
        &dir.path().join("unused"),
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
    let ts = now_ms() - 60_000;
    let lines: String = (0..10)
        .map(|i| {
            format!(
                "{{\"ts_ms\": {}, \"lat\": 52.5219, \"lon\": 13.4132}}\n",
                ts + i * 1000
            )
        })
        .collect();
    mosquitto_pub_lines(&server, "fleet/drop-1/pos", &lines);
    let dropped = server
        .wait_for(Duration::from_secs(15), || async {
            let n = server.metric("fleetd_store_dropped_positions_total").await;
            (n >= 10.0).then_some(n)
        })
        .await;
    assert_eq!(dropped, Some(10.0), "log:\n{}", server.log());
    assert_eq!(server.metric("fleetd_positions_stored_total").await, 0.0);
    assert!(server.log().contains("batch dropped"), "{}", server.log());

    fake.reset_rules();
    let after = now_ms();
    let payload = format!("{{\"ts_ms\": {after}, \"lat\": 52.5219, \"lon\": 13.4132}}");
    server.mosquitto_pub("fleet/drop-1/pos", payload.as_bytes());
    let track = server
        .wait_for(Duration::from_secs(15), || async {
            let (status, body) = server.get("/v1/vehicles/drop-1/track").await;
            let stored = body["items"]
                .as_array()
                .is_some_and(|items| !items.is_empty());
            (status == 200 && stored).then_some(body)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the position after the outage was not stored; log:\n{}",
                server.log()
            )
        });
    let items = track["items"].as_array().expect("items");
    assert_eq!(
        items.len(),
        1,
        "only the position after the outage: {track}"
    );
    assert_eq!(items[0]["ts_ms"].as_i64(), Some(after));
    assert_eq!(server.metric("fleetd_positions_stored_total").await, 1.0);
}
