//! fleetd's ingest journal: an acknowledgement means the position is
//! durable.
//!
//! Every position ingest accepts (MQTT, HTTP) is appended here before the
//! client is acknowledged; the journal then hands it to the processor. The
//! journal is a directory of segment files written by one task with group
//! commit: appends that arrive while a write is in progress go into the next
//! write together, so a busy fleetd makes one `write()` (and, with
//! [`Durability::Power`], one `fdatasync`) for many positions.
//!
//! * [`Journal::start`] replays the segments a previous run left (the
//!   processor drops what the store already has, see
//!   [`fleetd_schemas::Ingested::Replayed`]), then takes appends.
//! * [`Journal::append`] waits for room in the journal's bounded queue
//!   (backpressure for MQTT connections), [`Journal::try_append`] does not
//!   (HTTP answers 503); both give a [`Pending`] that resolves once the
//!   positions are durable.
//! * A segment is rolled every [`JournalSettings::segment_age`] (or
//!   [`JournalSettings::segment_bytes`]) and followed into the processor's
//!   queue by a [`Checkpoint`]; when the processor has stored everything
//!   before it, the store is flushed and the segment deleted.
//!
//! A write that fails (disk full, I/O error) is retried until it succeeds:
//! nothing is acknowledged meanwhile, the queue fills, MQTT connections stop
//! being read and HTTP answers 503, and [`Journal::is_writable`] is false
//! (`/readyz`). When space returns fleetd resumes by itself.

mod codec;
mod segments;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
mod writer;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetd_schemas::{Checkpoint, Ingested, PositionReport};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What an acknowledgement promises (`journal.durability`), as Redis's
/// `appendfsync` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// No journal: acknowledged once queued for the processor. A crash
    /// loses what was acknowledged and not yet stored (about two windows).
    Off,
    /// Acknowledged after the positions were written to the journal file
    /// (`write()`): survives a crash of fleetd, not of the machine.
    #[default]
    Process,
    /// Acknowledged after the journal file was synced to the disk
    /// (`fdatasync`, group-committed): survives power loss.
    Power,
}

impl Durability {
    /// The setting's name, as in fleetd.toml.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Process => "process",
            Self::Power => "power",
        }
    }
}

/// Settings of the journal (`[journal]` in fleetd.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct JournalSettings {
    /// Where the segment files live (`{data_dir}/journal`).
    pub dir: PathBuf,
    /// What an acknowledgement promises.
    pub durability: Durability,
    /// A segment is rolled once it holds this many bytes...
    pub segment_bytes: u64,
    /// ...or once it is this old and holds anything: how long positions
    /// stay in the journal after they are stored, and so how much a restart
    /// replays.
    pub segment_age: Duration,
    /// Appends waiting for the writer, at most (each is one MQTT publish or
    /// HTTP request). Bounds the memory between ingest and the processor.
    pub queue_appends: usize,
}

impl JournalSettings {
    /// The defaults, with segments in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            durability: Durability::Process,
            segment_bytes: 16 * 1024 * 1024,
            segment_age: Duration::from_secs(1),
            queue_appends: 4096,
        }
    }
}

/// `[journal]` in fleetd.toml: what an acknowledgement promises and how
/// long positions stay in the journal. The directory is `{data_dir}/journal`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// `process` (default), `power` or `off`; see [`Durability`].
    pub durability: Durability,
    /// Roll a segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// Roll a segment once it is this old (ms) and holds anything.
    pub segment_age_ms: u64,
    /// Appends (MQTT publishes, HTTP requests) waiting for the writer.
    pub queue_appends: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        let d = JournalSettings::new(PathBuf::new());
        Self {
            durability: d.durability,
            segment_bytes: d.segment_bytes,
            segment_age_ms: d.segment_age.as_millis() as u64,
            queue_appends: d.queue_appends,
        }
    }
}

/// A `[journal]` value out of range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalConfigError(String);

impl JournalConfig {
    /// Checks the ranges; the journal lives in `dir`.
    pub fn validate(&self, dir: PathBuf) -> Result<JournalSettings, JournalConfigError> {
        if self.segment_bytes < 4096 {
            return Err(JournalConfigError(format!(
                "journal.segment_bytes must be at least 4096, got {}",
                self.segment_bytes
            )));
        }
        if !(10..=60_000).contains(&self.segment_age_ms) {
            return Err(JournalConfigError(format!(
                "journal.segment_age_ms must be in 10..=60000, got {}",
                self.segment_age_ms
            )));
        }
        if self.queue_appends == 0 {
            return Err(JournalConfigError(
                "journal.queue_appends must be at least 1".into(),
            ));
        }
        Ok(JournalSettings {
            dir,
            durability: self.durability,
            segment_bytes: self.segment_bytes,
            segment_age: Duration::from_millis(self.segment_age_ms),
            queue_appends: self.queue_appends,
        })
    }
}

/// Why the journal could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal directory cannot be created, read or written.
    #[error("journal directory {}: {source}", path.display())]
    Dir {
        /// The directory or file that failed.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Why positions were not made durable. Nothing of them was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The journal's queue is full (the processor or the disk is behind).
    #[error("the ingest journal is full")]
    Full,
    /// fleetd is shutting down.
    #[error("the ingest journal is closed")]
    Closed,
}

/// Seals journal frames at rest (fleetd with `--store-key`: the same key
/// and cipher as the embedded store). A segment is bound to its id, so a
/// frame copied into another segment does not open.
pub trait FrameSeal: Send + Sync {
    /// Seals the body of a frame of segment `segment`.
    fn seal(&self, segment: u64, plain: Vec<u8>) -> Vec<u8>;
    /// Opens a sealed body of segment `segment`; `None` if it does not
    /// open (another key, another segment, damaged).
    fn open(&self, segment: u64, sealed: &[u8]) -> Option<Vec<u8>>;
}

/// Makes everything the processor stored durable in the store; called
/// before segments are deleted, since a store may buffer its own writes.
pub type FlushStore =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One queued append.
struct Append {
    positions: Vec<PositionReport>,
    done: oneshot::Sender<Result<(), AppendError>>,
}

/// A handle for appending to the journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Append>,
    writable: Arc<AtomicBool>,
}

/// Positions queued for the journal: [`Pending::durable`] resolves once
/// they are as durable as the journal's [`Durability`] promises.
#[must_use = "positions are acknowledged only once durable"]
pub struct Pending(oneshot::Receiver<Result<(), AppendError>>);

impl Pending {
    /// Waits until the positions are durable.
    pub async fn durable(self) -> Result<(), AppendError> {
        self.0.await.unwrap_or(Err(AppendError::Closed))
    }
}

/// The journal's running tasks (writer and pruner).
pub struct JournalTasks {
    writer: JoinHandle<()>,
    pruner: JoinHandle<()>,
}

impl JournalTasks {
    /// Waits until the writer has written and forwarded every queued append
    /// (after `cancel`, or once every [`Journal`] handle is gone) and the
    /// pruner has settled what the processor confirmed.
    pub async fn join(self) {
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "journal writer failed");
        }
        if let Err(e) = self.pruner.await {
            tracing::error!(error = %e, "journal pruner failed");
        }
    }
}

impl Journal {
    /// Opens the journal in `settings.dir` (created if missing), replays
    /// what a previous run left into `output` (the processor's queue), then
    /// takes appends until `cancel`. `flush_store` runs before segments are
    /// deleted; `seal`, when given, seals what is written and opens sealed
    /// segments found.
    ///
    /// When the writer stops it drops `output`: the processor then flushes
    /// and stops.
    pub async fn start(
        settings: JournalSettings,
        output: mpsc::Sender<Ingested>,
        flush_store: FlushStore,
        seal: Option<Arc<dyn FrameSeal>>,
        cancel: CancellationToken,
    ) -> Result<(Self, JournalTasks), JournalError> {
        let dir = settings.dir.clone();
        let found = tokio::task::spawn_blocking(move || segments::open_dir(&dir))
            .await
            .map_err(|e| JournalError::Dir {
                path: settings.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let (tx, rx) = mpsc::channel(settings.queue_appends.max(1));
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        let writable = Arc::new(AtomicBool::new(true));
        let pruner = tokio::spawn(segments::prune(
            settings.dir.clone(),
            settled_rx,
            flush_store,
        ));
        let writer = tokio::spawn(writer::run(
            writer::Start {
                settings,
                found,
                seal,
            },
            rx,
            output,
            settled_tx,
            Arc::clone(&writable),
            cancel,
        ));
        Ok((Self { tx, writable }, JournalTasks { writer, pruner }))
    }

    /// Queues `positions`, waiting while the journal is full.
    pub async fn append(&self, positions: Vec<PositionReport>) -> Result<Pending, AppendError> {
        let permit = self.tx.reserve().await.map_err(|_| AppendError::Closed)?;
        Ok(Self::send(permit, positions))
    }

    /// Queues `positions`, or fails with [`AppendError::Full`] at once.
    pub fn try_append(&self, positions: Vec<PositionReport>) -> Result<Pending, AppendError> {
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => AppendError::Full,
            mpsc::error::TrySendError::Closed(()) => AppendError::Closed,
        })?;
        Ok(Self::send(permit, positions))
    }

    fn send(permit: mpsc::Permit<'_, Append>, positions: Vec<PositionReport>) -> Pending {
        let (done, rx) = oneshot::channel();
        permit.send(Append { positions, done });
        Pending(rx)
    }

    /// Whether an append would find room in the queue now.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Whether the last journal write succeeded (false while the disk is
    /// full or failing: fleetd is then not ready).
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }
}

/// A checkpoint that reports its segment to the pruner once settled.
fn checkpoint(
    segment: u64,
    max_received_ms: i64,
    settled: &mpsc::UnboundedSender<u64>,
) -> Ingested {
    let settled = settled.clone();
    Ingested::Checkpoint(Checkpoint::new(segment, max_received_ms, move |s| {
        // The pruner is gone only at shutdown; the segment then stays and
        // is replayed (and deduplicated) at the next start.
        let _ = settled.send(s);
    }))
}
