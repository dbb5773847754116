//! The journal against a real directory: acknowledged positions come back
//! after a restart until the processor's checkpoint settles them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleetd_journal::{AppendError, Durability, FlushStore, Journal, JournalSettings};
use fleetd_schemas::test_support::report;
use fleetd_schemas::{Ingested, PositionReport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn settings(dir: &std::path::Path, durability: Durability) -> JournalSettings {
    JournalSettings {
        segment_age: Duration::from_millis(100),
        durability,
        ..JournalSettings::new(dir.to_path_buf())
    }
}

fn counting_flush() -> (FlushStore, Arc<AtomicUsize>) {
    let flushes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&flushes);
    let flush: FlushStore = Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    });
    (flush, flushes)
}

fn positions(device: &str, n: i64) -> Vec<PositionReport> {
    (0..n)
        .map(|i| report(device, 1_000 + i, 52.0, 13.0))
        .collect()
}

async fn next(rx: &mut mpsc::Receiver<Ingested>) -> Ingested {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the journal forwards within 5 s")
        .expect("the journal is open")
}

async fn join(tasks: fleetd_journal::JournalTasks) {
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .expect("the journal stops within 5 s");
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_positions_are_replayed_and_settled_ones_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (flush, flushes) = counting_flush();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(64);
    let (journal, tasks) = Journal::start(
        settings(dir.path(), Durability::Process),
        tx,
        Arc::clone(&flush),
        None,
        cancel.clone(),
    )
    .await
    .expect("start");
    let pending = journal.append(positions("a", 3)).await.expect("queued");
    pending.durable().await.expect("durable");
    let Ingested::Positions(got) = next(&mut rx).await else {
        panic!("positions first");
    };
    assert_eq!(got, positions("a", 3));
    // The segment rolls after 100 ms: its checkpoint follows the positions.
    let Ingested::Checkpoint(first) = next(&mut rx).await else {
        panic!("then the checkpoint");
    };
    let newest = got.iter().map(|p| p.received_ms).max();
    assert_eq!(Some(first.max_received_ms()), newest);
    // Appended after the roll: in the next segment, which nobody settles.
    journal
        .append(positions("b", 2))
        .await
        .expect("queued")
        .durable()
        .await
        .expect("durable");
    assert!(matches!(next(&mut rx).await, Ingested::Positions(_)));
    first.done();
    // The pruner flushes the store, then deletes the settled segment.
    for _ in 0..100 {
        if flushes.load(Ordering::SeqCst) > 0 && segment_files(dir.path()) <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flushes.load(Ordering::SeqCst), 1);
    // What a crash leaves: stop without settling the rest.
    cancel.cancel();
    drop(journal);
    drop(rx);
    join(tasks).await;

    let (tx, mut rx) = mpsc::channel(64);
    let (_journal, _tasks) = Journal::start(
        settings(dir.path(), Durability::Process),
        tx,
        flush,
        None,
        CancellationToken::new(),
    )
    .await
    .expect("restart");
    let mut replayed = Vec::new();
    loop {
        match next(&mut rx).await {
            Ingested::Replayed(chunk) => replayed.extend(chunk),
            Ingested::Checkpoint(_) if !replayed.is_empty() => break,
            Ingested::Checkpoint(_) => {}
            Ingested::Positions(p) => panic!("new positions during replay: {p:?}"),
        }
    }
    assert_eq!(replayed, positions("b", 2), "only the unsettled segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_write_is_skipped_and_the_rest_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (flush, _) = counting_flush();
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let mut settings = settings(dir.path(), Durability::Power);
    settings.segment_age = Duration::from_secs(3600);
    let (journal, tasks) = Journal::start(
        settings.clone(),
        tx,
        Arc::clone(&flush),
        None,
        cancel.clone(),
    )
    .await
    .expect("start");
    for device in ["a", "b"] {
        journal
            .append(positions(device, 2))
            .await
            .expect("queued")
            .durable()
            .await
            .expect("durable");
        next(&mut rx).await;
    }
    cancel.cancel();
    drop(journal);
    // Stopping sends the last segment's checkpoint: left unsettled here.
    let last = next(&mut rx).await;
    drop((last, rx));
    join(tasks).await;
    // Tear the last frame as a crash in the middle of a write would.
    let file = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .expect("a segment")
        .path();
    let len = std::fs::metadata(&file).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open")
        .set_len(len - 5)
        .expect("truncate");

    let (tx, mut rx) = mpsc::channel(64);
    let (_journal, _tasks) = Journal::start(settings, tx, flush, None, CancellationToken::new())
        .await
        .expect("restart");
    let Ingested::Replayed(replayed) = next(&mut rx).await else {
        panic!("replay first");
    };
    assert_eq!(replayed, positions("a", 2));
    assert!(matches!(next(&mut rx).await, Ingested::Checkpoint(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_try_append_and_closing_refuses_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (flush, _) = counting_flush();
    // The processor does not read: the writer blocks forwarding the first
    // group, the queue of one append fills behind it.
    let (tx, rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let mut settings = settings(dir.path(), Durability::Process);
    settings.queue_appends = 1;
    let (journal, tasks) = Journal::start(settings, tx, flush, None, cancel.clone())
        .await
        .expect("start");
    let mut acks = Vec::new();
    let mut full = false;
    for i in 0..10 {
        match journal.try_append(positions("a", 600 + i)) {
            Ok(p) => acks.push(p),
            Err(AppendError::Full) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(full, "the bounded journal pushes back");
    drop(rx);
    for ack in acks {
        // Written, then the processor went away: still durable.
        let _ = ack.durable().await;
    }
    cancel.cancel();
    join(tasks).await;
    assert_eq!(
        journal.try_append(positions("a", 1)).err(),
        Some(AppendError::Closed)
    );
}
