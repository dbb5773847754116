//! A journal for other crates' tests: real files in a directory the test
//! owns, a store flush that does nothing.

use std::path::Path;
use std::sync::Arc;

use fleetd_schemas::Ingested;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{FlushStore, Journal, JournalSettings, JournalTasks};

/// A flush for tests without a store.
pub fn no_flush() -> FlushStore {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// A running journal in `dir` with room for `queue_appends`, forwarding into
/// a queue of `output` items the test reads.
pub async fn start(
    dir: &Path,
    queue_appends: usize,
    output: usize,
) -> (
    Journal,
    JournalTasks,
    mpsc::Receiver<Ingested>,
    CancellationToken,
) {
    let (tx, rx) = mpsc::channel(output);
    let cancel = CancellationToken::new();
    let settings = JournalSettings {
        queue_appends,
        ..JournalSettings::new(dir.to_path_buf())
    };
    let (journal, tasks) = Journal::start(settings, tx, no_flush(), None, cancel.clone())
        .await
        .expect("a journal in the test's directory");
    (journal, tasks, rx, cancel)
}

/// The positions the journal forwarded into `rx`, waiting until none came
/// for 200 ms (the writer acknowledges before it forwards, so a test that
/// just got its acknowledgement may look a moment too early).
pub async fn forwarded(rx: &mut mpsc::Receiver<Ingested>) -> Vec<fleetd_schemas::PositionReport> {
    let mut all = Vec::new();
    while let Ok(Some(item)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await
    {
        match item {
            Ingested::Positions(p) | Ingested::Replayed(p) => all.extend(p),
            Ingested::Checkpoint(c) => c.done(),
        }
    }
    all
}
