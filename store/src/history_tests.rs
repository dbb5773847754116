use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fleetd_schemas::test_support::full_position;

use super::*;
use crate::{FjallStore, HistoryQuery, Store, WriteBatch};

/// 2026-12-07 10:00:10 UTC: ten seconds into a bucket.
const T0: i64 = 1_796_637_610_000;

struct Fixture {
    store: FjallStore,
    now: Arc<AtomicI64>,
}

fn open(path: &Path, key: Option<&crate::StoreKey>) -> Fixture {
    let mut store = FjallStore::open_with_key(path, key).expect("open");
    let now = Arc::new(AtomicI64::new(T0));
    Arc::get_mut(&mut store.inner)
        .expect("only handle")
        .history
        .clock = Clock::fixed(&now);
    Fixture { store, now }
}

/// A fix whose values all read back exactly from a block (coordinates with
/// 7 decimals, as a tracker sends them).
fn fix(device: &str, ts_ms: i64) -> EnrichedPosition {
    let step = (ts_ms / 1000 % 10_000) as f64;
    let lat: f64 = format!("{:.7}", 52.5 + step * 1.3e-5).parse().expect("lat");
    let lon: f64 = format!("{:.7}", 13.4 + step * 2.1e-5).parse().expect("lon");
    full_position(device, ts_ms, lat, lon)
}

async fn write(store: &FjallStore, fixes: Vec<EnrichedPosition>) {
    let batch = WriteBatch {
        history: fixes,
        ..WriteBatch::default()
    };
    store.write_batch(Arc::new(batch)).await.expect("write");
}

/// Every fix of `device` in `[from, to]`, page by page of `limit`.
async fn all(
    store: &FjallStore,
    device: &str,
    from: i64,
    to: i64,
    limit: usize,
) -> Vec<EnrichedPosition> {
    let device = DeviceId::parse(device).expect("id");
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let query = HistoryQuery {
            from_ms: from,
            to_ms: to,
            limit,
            cursor: cursor.take(),
        };
        let page = store.history(&device, &query).await.expect("page");
        assert!(page.items.len() <= limit);
        out.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn names(store: &FjallStore, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .inner
        .db
        .list_keyspace_names()
        .iter()
        .map(|n| n.to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn fixes_move_from_hot_rows_to_blocks_and_read_the_same_throughout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = open(dir.path(), None);
    let bucket = bucket_of(T0);
    let mut sent = Vec::new();
    for second in 0..10 {
        let fixes: Vec<EnrichedPosition> = ["a", "b", "c"]
            .iter()
            .map(|d| fix(d, bucket + second * 1000))
            .collect();
        sent.extend(
            fixes
                .iter()
                .filter(|p| p.report.device_id.as_str() == "b")
                .cloned(),
        );
        write(&f.store, fixes).await;
    }
    assert_eq!(names(&f.store, HOT_PREFIX), [hot_name(bucket)]);
    assert_eq!(all(&f.store, "b", 0, i64::MAX, 4).await, sent);

    // Not yet: the bucket still takes fixes during its grace period.
    f.now
        .store(bucket + BUCKET_MS + GRACE_MS - 1, Ordering::Relaxed);
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!(done.buckets_compacted, 0);

    f.now
        .store(bucket + BUCKET_MS + GRACE_MS, Ordering::Relaxed);
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!(
        (
            done.buckets_compacted,
            done.rows_compacted,
            done.blocks_written
        ),
        (1, 30, 3)
    );
    assert!(
        names(&f.store, HOT_PREFIX).is_empty(),
        "hot keyspace dropped"
    );
    assert_eq!(
        names(&f.store, BLOCKS_PREFIX),
        [blocks_name(day_of(bucket))]
    );
    assert_eq!(all(&f.store, "b", 0, i64::MAX, 4).await, sent);
    assert_eq!(
        all(&f.store, "b", bucket + 2500, bucket + 6000, 2).await,
        sent[3..7]
    );

    // A fix for the closed bucket arrives late: a row until the next pass
    // merges it, the row winning over the block's fix of the same time.
    let mut again = fix("b", bucket + 3000);
    again.report.battery_pct = Some(12.0);
    let extra = fix("b", bucket + 3500);
    write(&f.store, vec![again.clone(), extra.clone()]).await;
    let mut expected = sent.clone();
    expected[3] = again;
    expected.insert(4, extra);
    assert_eq!(all(&f.store, "b", 0, i64::MAX, 3).await, expected);
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!((done.rows_compacted, done.blocks_written), (2, 1));
    assert!(f.store.inner.history.late.is_empty().expect("late"));
    assert_eq!(all(&f.store, "b", 0, i64::MAX, 100).await, expected);
    // A sweep later, reads of "b" no longer look at the late tier at all
    // (its tombstones), and still find everything.
    f.store.maintain_blocking().expect("maintain");
    assert!(!lock(&f.store.inner.history.late_devices).may_hold(b"b"));
    assert_eq!(all(&f.store, "b", 0, i64::MAX, 100).await, expected);
    write(&f.store, vec![fix("b", bucket + 4500)]).await;
    assert!(lock(&f.store.inner.history.late_devices).may_hold(b"b"));
    assert_eq!(
        all(&f.store, "b", 0, i64::MAX, 100).await.len(),
        expected.len() + 1
    );
}

#[tokio::test]
async fn a_page_merges_all_three_tiers_in_time_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = open(dir.path(), None);
    let bucket = bucket_of(T0);
    // Blocks: two buckets ago; late rows: one bucket before that and
    // inside the blocks' bucket; hot: now.
    let old = bucket - 2 * BUCKET_MS;
    let blocks: Vec<EnrichedPosition> = (0..5).map(|i| fix("v", old + i * 2000)).collect();
    write(&f.store, blocks.clone()).await;
    f.store.maintain_blocking().expect("maintain");
    assert!(f.store.inner.history.late.is_empty().expect("late"));
    let late: Vec<EnrichedPosition> = [old - 1000, old + 1000, old + 5000]
        .into_iter()
        .map(|ts| fix("v", ts))
        .collect();
    write(&f.store, late.clone()).await;
    let hot: Vec<EnrichedPosition> = (0..3).map(|i| fix("v", bucket + i * 1000)).collect();
    write(&f.store, hot.clone()).await;
    assert_eq!(names(&f.store, HOT_PREFIX).len(), 1);

    let mut expected: Vec<EnrichedPosition> = blocks.into_iter().chain(late).chain(hot).collect();
    expected.sort_by_key(|p| p.report.ts_ms);
    for limit in [1, 2, 3, 5, 100] {
        assert_eq!(
            all(&f.store, "v", i64::MIN, i64::MAX, limit).await,
            expected,
            "{limit}"
        );
    }
    let mid = &expected[2..8];
    let got = all(&f.store, "v", mid[0].report.ts_ms, mid[5].report.ts_ms, 2).await;
    assert_eq!(got, mid);
    // Another device's rows never show.
    write(&f.store, vec![fix("v0", old + 1000), fix("u", old + 1000)]).await;
    assert_eq!(all(&f.store, "v", i64::MIN, i64::MAX, 100).await, expected);
}

#[tokio::test]
async fn retention_drops_old_days_whole_and_keeps_recent_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = open(dir.path(), None);
    let bucket = bucket_of(T0);
    let three_days_ago = bucket - 3 * DAY_MS;
    let old: Vec<EnrichedPosition> = (0..20)
        .map(|i| fix("t", three_days_ago + i * 1000))
        .collect();
    let recent: Vec<EnrichedPosition> = (0..20)
        .map(|i| fix("t", bucket - 3_600_000 + i * 1000))
        .collect();
    write(&f.store, old.clone()).await;
    write(&f.store, recent.clone()).await;
    f.store.maintain_blocking().expect("maintain");
    assert_eq!(names(&f.store, BLOCKS_PREFIX).len(), 2);
    let both: Vec<EnrichedPosition> = old.iter().chain(&recent).cloned().collect();
    assert_eq!(all(&f.store, "t", i64::MIN, i64::MAX, 7).await, both);

    f.store.set_history_days(Some(2));
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!(done.days_dropped, 1);
    assert_eq!(
        names(&f.store, BLOCKS_PREFIX),
        [blocks_name(day_of(recent[0].report.ts_ms))]
    );
    assert_eq!(all(&f.store, "t", i64::MIN, i64::MAX, 7).await, recent);

    // A late fix older than the retention is deleted, not merged.
    write(&f.store, vec![fix("t", three_days_ago + 99_000)]).await;
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!((done.rows_expired, done.rows_compacted), (1, 0));
    assert_eq!(names(&f.store, BLOCKS_PREFIX).len(), 1);
    assert_eq!(all(&f.store, "t", i64::MIN, i64::MAX, 7).await, recent);
}

#[tokio::test]
async fn hot_buckets_and_blocks_survive_a_restart_and_a_rekey() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, sealed) = (dir.path().join("plain"), dir.path().join("sealed"));
    let bucket = bucket_of(T0);
    let old: Vec<EnrichedPosition> = (0..5)
        .map(|i| fix("r", bucket - DAY_MS + i * 1000))
        .collect();
    let hot: Vec<EnrichedPosition> = (0..5).map(|i| fix("r", bucket + i * 1000)).collect();
    let expected: Vec<EnrichedPosition> = old.iter().chain(&hot).cloned().collect();
    {
        let f = open(&plain, None);
        write(&f.store, old.clone()).await;
        f.store.maintain_blocking().expect("maintain");
        write(&f.store, hot.clone()).await;
        f.store.flush().await.expect("flush");
    }
    let key = crate::StoreKey::generate();
    crate::rekey(&plain, None, &sealed, Some(&key)).expect("rekey");
    for (path, key) in [(&plain, None), (&sealed, Some(&key))] {
        let f = open(path, key);
        assert_eq!(names(&f.store, HOT_PREFIX), [hot_name(bucket)]);
        assert_eq!(all(&f.store, "r", i64::MIN, i64::MAX, 3).await, expected);
        f.now
            .store(bucket + BUCKET_MS + GRACE_MS, Ordering::Relaxed);
        let done = f.store.maintain_blocking().expect("maintain");
        assert_eq!(done.buckets_compacted, 1);
        assert_eq!(all(&f.store, "r", i64::MIN, i64::MAX, 3).await, expected);
        // After the pass, new fixes of the closed bucket are late rows.
        write(&f.store, vec![fix("r", bucket + 9000)]).await;
        assert!(!f.store.inner.history.late.is_empty().expect("late"));
    }
}

#[tokio::test]
async fn a_crash_between_writing_blocks_and_dropping_the_hot_bucket_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = bucket_of(T0);
    let sent: Vec<EnrichedPosition> = (0..8).map(|i| fix("k", bucket + i * 1000)).collect();
    {
        let f = open(dir.path(), None);
        write(&f.store, sent.clone()).await;
        // The first half of a pass: blocks written and durable, the hot
        // keyspace not yet dropped; then the process dies.
        let history = &f.store.inner.history;
        let ks = read(&history.hot)
            .open
            .get(&bucket)
            .cloned()
            .expect("hot bucket");
        let mut done = Maintenance::default();
        history
            .compact_hot(&f.store.inner.tables.sealer, bucket, &ks, &mut done)
            .expect("blocks");
        history.db.persist(PersistMode::SyncAll).expect("persist");
        assert_eq!(done.blocks_written, 1);
    }
    let f = open(dir.path(), None);
    assert_eq!(
        all(&f.store, "k", i64::MIN, i64::MAX, 3).await,
        sent,
        "rows and block dedup"
    );
    f.now
        .store(bucket + BUCKET_MS + GRACE_MS, Ordering::Relaxed);
    let done = f.store.maintain_blocking().expect("maintain");
    assert_eq!((done.buckets_compacted, done.blocks_written), (1, 1));
    assert!(names(&f.store, HOT_PREFIX).is_empty());
    assert_eq!(all(&f.store, "k", i64::MIN, i64::MAX, 3).await, sent);
}
