//! Contract tests of the ScyllaDB backend without a server: a scylla-proxy
//! in dry mode stands in for a node (see `support/fake_scylla.rs`) and
//! checks what fleetd sends — which statements it prepares, the values it
//! binds, how it retries forged errors and how it reports unavailability.

#[path = "support/fake_scylla.rs"]
mod fake_scylla;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fake_scylla::{FakeScylla, KEYSPACE, Val};
use fleetd_schemas::EnrichedPosition;
use fleetd_store::scylla::statement_cql;
use fleetd_store::{LatestUpdate, ScyllaSettings, ScyllaStore, Store, StoreError, WriteBatch};
use scylla_proxy::{
    Condition, Reaction, RequestOpcode, RequestReaction, RequestRule, example_db_errors,
};

fn settings(fake: &FakeScylla) -> ScyllaSettings {
    ScyllaSettings {
        contact_points: vec![fake.addr.to_string()],
        keyspace: KEYSPACE.into(),
        retry_backoff: Duration::from_millis(5),
        request_timeout: Duration::from_secs(2),
        ..ScyllaSettings::default()
    }
}

async fn connect(fake: &FakeScylla) -> ScyllaStore {
    tokio::time::timeout(
        Duration::from_secs(20),
        ScyllaStore::connect(settings(fake), false),
    )
    .await
    .expect("connects within 20 s")
    .expect("connects to the fake node")
}

fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
    let mut p = fleetd_schemas::test_support::full_position(device, ts_ms, lat, lon);
    p.report.altitude_m = None;
    p.report.battery_pct = None;
    p.report.seq = Some(7);
    p
}

/// The columns `select_*` statements return, for canned rows.
fn row_of(p: &EnrichedPosition) -> Vec<Val> {
    let r = &p.report;
    let f = |v: Option<f32>| v.map_or(Val::Null, |v| Val::Float(f64::from(v)));
    vec![
        Val::Text(r.device_id.to_string()),
        Val::Int(r.ts_ms),
        Val::Float(r.lat),
        Val::Float(r.lon),
        f(r.accuracy_m),
        f(r.altitude_m),
        f(r.speed_mps),
        f(r.heading_deg),
        f(r.battery_pct),
        r.seq.map_or(Val::Null, |s| Val::Int(s as i64)),
        Val::Int(p.h3.area as i64),
        Val::Int(p.h3.detail as i64),
        Val::Bool(p.speed_derived),
        Val::Bool(p.heading_derived),
        Val::Int(r.received_ms),
        p.flag.map_or(Val::Null, |f| Val::Text(f.code().to_owned())),
    ]
}

fn now_minute() -> i64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    ms / 60_000
}

#[tokio::test]
async fn connects_and_prepares_every_statement() {
    let fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let prepared: BTreeSet<String> = fake.prepared_texts().into_iter().collect();
    let expected: BTreeSet<String> = statement_cql(KEYSPACE)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(prepared, expected);
    store.ready().await.expect("ready against a healthy node");
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn micro_batch_binds_the_expected_values() {
    let fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let day = 20_000i64;
    let t0 = day * 86_400_000 + 5_000;
    let first = position("truck-1", t0, 52.52, 13.405);
    let second = position("truck-1", t0 + 1_000, 52.60, 13.50);
    let old_cell = first.h3.area;
    assert_ne!(
        old_cell, second.h3.area,
        "the fixture moves the truck to another cell"
    );
    let batch = WriteBatch {
        history: vec![first.clone(), second.clone()],
        latest: vec![LatestUpdate {
            position: second.clone(),
            previous_area_cell: Some(old_cell),
        }],
        ..WriteBatch::default()
    };
    let minute_before = now_minute();
    store
        .write_batch(batch.into())
        .await
        .expect("batch written");
    let minute_after = now_minute();

    let executed = fake.executed();
    let of = |prefix: &str| -> Vec<_> {
        executed
            .iter()
            .filter(|e| e.text.starts_with(prefix))
            .cloned()
            .collect()
    };
    let history = of(&format!("INSERT INTO {KEYSPACE}.positions "));
    assert_eq!(history.len(), 2, "one insert per history row");
    let mut ts: Vec<i64> = history.iter().map(|e| e.int("ts")).collect();
    ts.sort_unstable();
    assert_eq!(ts, [t0, t0 + 1_000]);
    for e in &history {
        assert_eq!(e.text_of("device_id"), "truck-1");
        assert_eq!(e.int("day"), day);
        assert_eq!(e.values["accuracy_m"], Val::Float(4.5));
        assert_eq!(e.values["altitude_m"], Val::Null);
        assert_eq!(e.values["speed_derived"], Val::Bool(true));
        assert_eq!(e.int("seq"), 7);
    }
    let days = of(&format!("INSERT INTO {KEYSPACE}.position_days "));
    assert_eq!(days.len(), 1, "one day row per device and day");
    assert_eq!(days[0].int("day"), day);

    let latest = of(&format!("INSERT INTO {KEYSPACE}.latest_position "));
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].int("ts"), t0 + 1_000);
    assert_eq!(
        latest[0].int("write_time"),
        (t0 + 1_000) * 1000,
        "USING TIMESTAMP is device time in µs"
    );
    assert_eq!(latest[0].int("h3_area"), second.h3.area as i64);
    assert_eq!(latest[0].values["lat"], Val::Float(52.60));

    let cell_insert = of(&format!("INSERT INTO {KEYSPACE}.devices_by_cell "));
    assert_eq!(cell_insert.len(), 1);
    assert_eq!(cell_insert[0].int("cell"), second.h3.area as i64);
    let minute = cell_insert[0].int("minute");
    assert!(
        (minute_before..=minute_after).contains(&minute),
        "minute {minute} is the server clock's"
    );
    assert_eq!(cell_insert[0].int("write_time"), (t0 + 1_000) * 1000);

    let deletes = of(&format!("DELETE FROM {KEYSPACE}.devices_by_cell "));
    assert_eq!(deletes.len(), 2, "the old cell's two readable minutes");
    let mut minutes: Vec<i64> = deletes.iter().map(|e| e.int("minute")).collect();
    minutes.sort_unstable();
    assert_eq!(minutes, [minute - 1, minute]);
    for e in &deletes {
        assert_eq!(e.int("cell"), old_cell as i64);
        assert_eq!(e.text_of("device_id"), "truck-1");
        assert_eq!(e.int("write_time"), (t0 + 1_000) * 1000);
    }
    assert_eq!(executed.len(), 7, "nothing else is written: {executed:#?}");
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn forged_overload_and_timeout_are_retried() {
    let mut fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let execute = || Condition::RequestOpcode(RequestOpcode::Execute);
    fake.prepend_rules(vec![
        RequestRule(
            execute().and(Condition::TrueForLimitedTimes(1)),
            RequestReaction::forge_with_error(example_db_errors::overloaded())
                .with_feedback_when_performed(tx.clone()),
        ),
        RequestRule(
            execute().and(Condition::TrueForLimitedTimes(1)),
            RequestReaction::forge_with_error(example_db_errors::write_timeout())
                .with_feedback_when_performed(tx),
        ),
    ]);
    let p = position("van-9", 1_700_000_000_000, 48.85, 2.35);
    let batch = WriteBatch {
        history: vec![p.clone()],
        latest: vec![],
        ..WriteBatch::default()
    };
    store
        .write_batch(batch.into())
        .await
        .expect("retried until it succeeded");
    let mut forged = 0;
    while rx.try_recv().is_ok() {
        forged += 1;
    }
    assert_eq!(forged, 2, "both forged errors were answered");
    // Both statements of the batch arrived after the forged errors.
    assert_eq!(fake.executed().len(), 2);
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn unavailability_is_a_clear_error_and_not_ready() {
    let mut fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let any_request = Condition::any([
        Condition::RequestOpcode(RequestOpcode::Execute),
        Condition::RequestOpcode(RequestOpcode::Query),
    ]);
    fake.prepend_rules(vec![RequestRule(
        any_request,
        RequestReaction::forge_with_error(example_db_errors::unavailable()),
    )]);
    let batch = WriteBatch {
        history: vec![position("bus-3", 1_700_000_000_000, 40.0, -3.7)],
        latest: vec![],
        ..WriteBatch::default()
    };
    let started = Instant::now();
    let err = store
        .write_batch(batch.clone().into())
        .await
        .expect_err("cluster is unavailable");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("after 4 attempts"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded retries"
    );
    let not_ready = store
        .ready()
        .await
        .expect_err("not ready while unavailable");
    assert!(
        matches!(not_ready, StoreError::Unavailable(_)),
        "{not_ready:?}"
    );

    // A statement the server rejects is not retried and says so.
    fake.prepend_rules(vec![RequestRule(
        Condition::RequestOpcode(RequestOpcode::Execute),
        RequestReaction::forge_with_error(example_db_errors::invalid()),
    )]);
    let err = store
        .write_batch(batch.clone().into())
        .await
        .expect_err("rejected");
    assert!(matches!(err, StoreError::Scylla(_)), "{err:?}");

    // The node recovers: so do the store and its readiness.
    fake.reset_rules();
    store.ready().await.expect("ready again");
    store.write_batch(batch.into()).await.expect("writes again");
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn a_node_that_goes_away_fails_writes_and_readiness() {
    let fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let _ = fake.proxy.finish().await;
    let batch = WriteBatch {
        history: vec![position("bus-4", 1_700_000_000_000, 40.0, -3.7)],
        latest: vec![],
        ..WriteBatch::default()
    };
    let err = store.write_batch(batch.into()).await.expect_err("no node");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(store.ready().await.is_err());
}

#[tokio::test]
async fn connecting_to_nothing_is_a_clear_error() {
    let addr = std::net::SocketAddr::new(scylla_proxy::get_exclusive_local_address(), 9042);
    let settings = ScyllaSettings {
        contact_points: vec![addr.to_string()],
        connect_timeout: Duration::from_secs(1),
        ..ScyllaSettings::default()
    };
    let err = ScyllaStore::connect(settings, false)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn reads_decode_rows_and_bind_their_keys() {
    let fake = FakeScylla::start().await;
    let store = connect(&fake).await;
    let p = position("alice/phone", 1_700_000_123_456, -33.86, 151.21);
    fake.set_rows("SELECT device_id, ts", vec![row_of(&p)]);
    let got = store.latest(&p.report.device_id).await.expect("read");
    assert_eq!(got.as_ref(), Some(&p));
    let all = store.all_latest().await.expect("scan");
    assert_eq!(all, vec![p.clone()]);
    let select = fake
        .executed()
        .into_iter()
        .find(|e| e.text.contains("latest_position WHERE device_id"))
        .expect("select_latest executed");
    assert_eq!(select.text_of("device_id"), "alice/phone");
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn migration_creates_the_keyspace_and_every_table() {
    let fake = FakeScylla::start().await;
    let settings = ScyllaSettings {
        replication_factor: 1,
        ..settings(&fake)
    };
    ScyllaStore::connect(settings.clone(), true)
        .await
        .expect("migrates and connects");
    let queries = fake.queries();
    assert_eq!(
        queries.first().map(String::as_str),
        Some(fleetd_store::scylla::create_keyspace_cql(&settings).as_str())
    );
    assert!(
        queries[0].contains("'replication_factor': 1"),
        "{}",
        queries[0]
    );
    for table in [
        "latest_position",
        "positions",
        "position_days",
        "devices_by_cell",
        "schema_migrations",
    ] {
        let create = format!("CREATE TABLE IF NOT EXISTS {table} ");
        assert!(
            queries.iter().any(|q| q.starts_with(&create)),
            "{table}: {queries:#?}"
        );
    }
    assert!(
        queries
            .iter()
            .any(|q| q.starts_with("INSERT INTO schema_migrations"))
    );
    let _ = fake.proxy.finish().await;
}

#[tokio::test]
async fn a_batch_keeps_at_most_max_inflight_statements_in_flight() {
    let mut fake = FakeScylla::start().await;
    const MAX_INFLIGHT: usize = 3;
    let store = ScyllaStore::connect(
        ScyllaSettings {
            max_inflight: MAX_INFLIGHT,
            retry_max: 0,
            // Longer than the test: unanswered statements stay in flight.
            request_timeout: Duration::from_secs(60),
            ..settings(&fake)
        },
        false,
    )
    .await
    .expect("connects");
    // The node swallows every EXECUTE: each one the driver sends stays in
    // flight, so the number that arrive is the number in flight at once.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    fake.prepend_rules(vec![RequestRule(
        Condition::RequestOpcode(RequestOpcode::Execute),
        RequestReaction::drop_frame().with_feedback_when_performed(tx),
    )]);
    let t0 = 1_700_000_000_000;
    let batch = WriteBatch {
        // Ten history rows and their day: eleven statements.
        history: (0..10)
            .map(|i| position("tram-5", t0 + i * 1000, 60.17, 24.94))
            .collect(),
        ..WriteBatch::default()
    };
    let writer = tokio::spawn({
        let store = store.clone();
        async move { store.write_batch(batch.into()).await }
    });
    let mut arrived = 0;
    while arrived < MAX_INFLIGHT {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the first statements arrive")
            .expect("feedback channel open");
        arrived += 1;
    }
    // Nothing more may arrive until one of those is answered.
    let more = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(
        more.is_err(),
        "more than {MAX_INFLIGHT} statements in flight"
    );
    assert!(!writer.is_finished());
    writer.abort();
    let _ = fake.proxy.finish().await;
}
