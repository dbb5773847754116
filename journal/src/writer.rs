//! The journal's writer task: replay, group commit, forwarding, rolling.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetd_schemas::{Ingested, PositionReport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, Damage};
use crate::segments::{self, Found};
use crate::{Append, AppendError, Durability, FrameSeal, JournalSettings, checkpoint};

/// Positions per chunk handed to the processor (its queue's memory bound
/// assumes chunks of about this size).
const CHUNK: usize = 512;

/// Most positions written in one group commit: a bound on the memory of one
/// write and on the latency of the first append in it.
const GROUP_POSITIONS: usize = 16_384;

/// The segment being written.
struct Open {
    id: u64,
    /// Shared with the blocking pool, where every write runs.
    file: Arc<File>,
    bytes: u64,
    positions: u64,
    opened: tokio::time::Instant,
    max_received_ms: i64,
}

/// What the writer starts from: its settings, the segments a previous run
/// left and the seal of encryption at rest.
pub(crate) struct Start {
    pub(crate) settings: JournalSettings,
    pub(crate) found: Found,
    pub(crate) seal: Option<Arc<dyn FrameSeal>>,
}

pub(crate) async fn run(
    start: Start,
    mut rx: mpsc::Receiver<Append>,
    output: mpsc::Sender<Ingested>,
    settled: mpsc::UnboundedSender<u64>,
    writable: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let Start {
        settings,
        found,
        seal,
    } = start;
    let seal = seal.as_deref();
    let magic = codec::magic(seal);
    if replay(&settings, &found, &output, &settled, seal)
        .await
        .is_err()
    {
        tracing::warn!("processor gone during journal replay");
        return;
    }
    let durable = settings.durability != Durability::Off;
    let sync = settings.durability == Durability::Power;
    let mut next_id = found.next_id;
    let mut open = None;
    if durable {
        open = open_segment(&settings, &mut next_id, sync, magic, &cancel, &writable).await;
    }
    let mut buf = Vec::new();
    let mut group: Vec<Append> = Vec::new();
    let mut closing = false;
    loop {
        let roll_at = open
            .as_ref()
            .filter(|o: &&Open| o.positions > 0)
            .map(|o| o.opened + settings.segment_age);
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled(), if !closing => {
                // Appends already queued are still written and answered;
                // new ones fail with Closed.
                rx.close();
                closing = true;
                continue;
            }
            append = rx.recv() => match append {
                Some(append) => append,
                None => break,
            },
            _ = sleep_until(roll_at) => {
                roll(&settings, &mut open, &mut next_id, sync, magic, &output, &settled).await;
                continue;
            }
        };
        group.push(first);
        let mut n = group[0].positions.len();
        while n < GROUP_POSITIONS {
            match rx.try_recv() {
                Ok(append) => {
                    n += append.positions.len();
                    group.push(append);
                }
                Err(_) => break,
            }
        }
        if let Some(o) = open.as_mut() {
            buf.clear();
            for append in &group {
                codec::encode_frame(&append.positions, seal, o.id, &mut buf);
                for p in &append.positions {
                    o.max_received_ms = o.max_received_ms.max(p.received_ms);
                }
            }
            let started = Instant::now();
            let written;
            (buf, written) = write_durably(o, buf, sync, &writable, &cancel).await;
            if !written {
                for append in group.drain(..) {
                    let _ = append.done.send(Err(AppendError::Closed));
                }
                break;
            }
            metrics::histogram!("fleetd_journal_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("fleetd_journal_bytes_written_total").increment(buf.len() as u64);
            o.bytes += buf.len() as u64;
            o.positions += n as u64;
        }
        metrics::histogram!("fleetd_journal_group_positions").record(n as f64);
        metrics::counter!("fleetd_journal_positions_total").increment(n as u64);
        // Durable now: acknowledged before the processor takes it. When the
        // processor is behind, forwarding waits, the writer takes no new
        // group and the bounded queue fills: new appends wait or are
        // refused, and memory stays bounded to one group.
        let forwarded = forward(&mut group, &output).await;
        if !forwarded {
            tracing::warn!("processor queue closed; journal writer stops");
            break;
        }
        if open
            .as_ref()
            .is_some_and(|o| o.bytes >= settings.segment_bytes)
        {
            roll(
                &settings,
                &mut open,
                &mut next_id,
                sync,
                magic,
                &output,
                &settled,
            )
            .await;
        }
    }
    // The last segment gets its checkpoint too: once the processor has
    // stored it all, nothing is left to replay.
    if let Some(o) = open.take() {
        finish(o, &output, &settled).await;
    }
    tracing::debug!("journal writer stopped");
}

/// Runs file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(t) => t,
        // Only a panic in `f` gets here: file calls do not panic.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn create(
    dir: &Path,
    id: u64,
    sync: bool,
    magic: &'static [u8; 8],
) -> std::io::Result<Arc<File>> {
    let dir = dir.to_path_buf();
    blocking(move || segments::create(&dir, id, sync, magic).map(Arc::new)).await
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Acknowledges the group's appends and hands their positions to the
/// processor in chunks, in append order; returns whether the processor
/// still listens.
async fn forward(group: &mut Vec<Append>, output: &mpsc::Sender<Ingested>) -> bool {
    let mut positions = Vec::with_capacity(group.len());
    for append in group.drain(..) {
        let _ = append.done.send(Ok(()));
        positions.push(append.positions);
    }
    let mut chunk: Vec<PositionReport> = Vec::new();
    for p in positions {
        if chunk.is_empty() && p.len() >= CHUNK {
            chunk = p;
        } else {
            chunk.extend(p);
        }
        if chunk.len() >= CHUNK
            && output
                .send(Ingested::Positions(std::mem::take(&mut chunk)))
                .await
                .is_err()
        {
            return false;
        }
    }
    chunk.is_empty() || output.send(Ingested::Positions(chunk)).await.is_ok()
}

/// Writes `buf` at the end of the segment (and syncs it), retrying until it
/// succeeds or `cancel`; a failed attempt is cut off again so that the file
/// never holds a half frame before a whole one.
async fn write_durably(
    o: &mut Open,
    mut buf: Vec<u8>,
    sync: bool,
    writable: &AtomicBool,
    cancel: &CancellationToken,
) -> (Vec<u8>, bool) {
    let mut delay = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let file = Arc::clone(&o.file);
        let result;
        (buf, result) = blocking(move || {
            let written = (&*file)
                .write_all(&buf)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
            (buf, written)
        })
        .await;
        let Err(e) = result else {
            if failures > 0 {
                tracing::info!(failures, "journal writes succeed again; acknowledging");
                writable.store(true, Ordering::Relaxed);
            }
            return (buf, true);
        };
        failures += 1;
        metrics::counter!("fleetd_journal_write_errors_total").increment(1);
        if failures == 1 {
            writable.store(false, Ordering::Relaxed);
            tracing::error!(
                segment = o.id,
                error = %e,
                "journal write failed; nothing is acknowledged until it succeeds (retrying)"
            );
        }
        let (file, len) = (Arc::clone(&o.file), o.bytes);
        let _ = blocking(move || {
            file.set_len(len)?;
            (&*file).seek(SeekFrom::Start(len))
        })
        .await;
        tokio::select! {
            _ = cancel.cancelled() => {
                tracing::warn!(failures, "shutting down with a journal write failing: those positions were not acknowledged");
                return (buf, false);
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Creates the next segment, retrying while the disk refuses (nothing can
/// be acknowledged without one).
async fn open_segment(
    settings: &JournalSettings,
    next_id: &mut u64,
    sync: bool,
    magic: &'static [u8; 8],
    cancel: &CancellationToken,
    writable: &AtomicBool,
) -> Option<Open> {
    let mut logged = false;
    loop {
        let id = *next_id;
        match create(&settings.dir, id, sync, magic).await {
            Ok(file) => {
                *next_id += 1;
                if logged {
                    writable.store(true, Ordering::Relaxed);
                }
                metrics::gauge!("fleetd_journal_segments").increment(1.0);
                return Some(Open {
                    id,
                    file,
                    bytes: codec::MAGIC.len() as u64,
                    positions: 0,
                    opened: tokio::time::Instant::now(),
                    max_received_ms: i64::MIN,
                });
            }
            Err(e) => {
                metrics::counter!("fleetd_journal_write_errors_total").increment(1);
                if !logged {
                    writable.store(false, Ordering::Relaxed);
                    tracing::error!(segment = id, error = %e, "cannot create a journal segment; retrying");
                    logged = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Seals the open segment (its checkpoint goes to the processor) and opens
/// the next one. If the next cannot be created, the open one stays open.
async fn roll(
    settings: &JournalSettings,
    open: &mut Option<Open>,
    next_id: &mut u64,
    sync: bool,
    magic: &'static [u8; 8],
    output: &mpsc::Sender<Ingested>,
    settled: &mpsc::UnboundedSender<u64>,
) {
    let id = *next_id;
    let file = match create(&settings.dir, id, sync, magic).await {
        Ok(file) => file,
        Err(e) => {
            metrics::counter!("fleetd_journal_write_errors_total").increment(1);
            tracing::warn!(segment = id, error = %e, "cannot roll the journal; writing on to the current segment");
            // Try again one segment age later, not on every append.
            if let Some(o) = open.as_mut() {
                o.opened = tokio::time::Instant::now();
            }
            return;
        }
    };
    *next_id += 1;
    metrics::gauge!("fleetd_journal_segments").increment(1.0);
    let new = Open {
        id,
        file,
        bytes: codec::MAGIC.len() as u64,
        positions: 0,
        opened: tokio::time::Instant::now(),
        max_received_ms: i64::MIN,
    };
    if let Some(old) = open.replace(new) {
        finish(old, output, settled).await;
    }
}

/// Sends a closed segment's checkpoint behind its positions.
async fn finish(o: Open, output: &mpsc::Sender<Ingested>, settled: &mpsc::UnboundedSender<u64>) {
    let cp = checkpoint(o.id, o.max_received_ms, settled);
    // Processor gone (shutdown): the segment is replayed next time.
    let _ = output.send(cp).await;
}

/// Hands the segments a previous run left to the processor, oldest first,
/// each followed by its checkpoint. A damaged tail (the write a crash tore,
/// never acknowledged) is logged and skipped.
async fn replay(
    settings: &JournalSettings,
    found: &Found,
    output: &mpsc::Sender<Ingested>,
    settled: &mpsc::UnboundedSender<u64>,
    seal: Option<&dyn FrameSeal>,
) -> Result<(), ()> {
    if found.segments.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut total = 0usize;
    metrics::gauge!("fleetd_journal_segments").increment(found.segments.len() as f64);
    for &id in &found.segments {
        let path = segments::path(&settings.dir, id);
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::read(path)
        })
        .await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read journal segment; kept, not replayed");
                continue;
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "journal replay task failed");
                continue;
            }
        };
        let decoded = codec::decode_segment(&bytes, seal, id);
        match decoded.damage {
            None => {}
            Some(Damage::NotAJournal) => {
                tracing::warn!(file = %path.display(), "not a journal segment; left alone");
                continue;
            }
            Some(Damage::SealedWithoutKey) => {
                tracing::error!(file = %path.display(), "journal segment sealed with a store key and fleetd has none; kept, not replayed");
                continue;
            }
            Some(Damage::WrongKey { at }) => {
                tracing::error!(
                    file = %path.display(),
                    at,
                    "journal segment does not open with the store key from this frame on; \
                     what opened is replayed, the file is kept"
                );
            }
            Some(Damage::BadFrame { at }) => {
                metrics::counter!("fleetd_journal_torn_bytes_total")
                    .increment(decoded.trailing_bytes as u64);
                tracing::warn!(
                    file = %path.display(),
                    at,
                    bytes = decoded.trailing_bytes,
                    "journal segment ends in a torn or damaged write (never acknowledged); skipped"
                );
            }
        }
        let max_received_ms = decoded
            .positions
            .iter()
            .map(|p| p.received_ms)
            .max()
            .unwrap_or(i64::MIN);
        total += decoded.positions.len();
        let mut positions = decoded.positions;
        while !positions.is_empty() {
            let rest = positions.split_off(positions.len().min(CHUNK));
            let chunk = std::mem::replace(&mut positions, rest);
            output
                .send(Ingested::Replayed(chunk))
                .await
                .map_err(|_| ())?;
        }
        // A segment that did not open whole is never settled, so never
        // deleted: what it holds beyond the damage is the operator's to
        // recover (with the right key).
        if !matches!(decoded.damage, Some(Damage::WrongKey { .. })) {
            output
                .send(checkpoint(id, max_received_ms, settled))
                .await
                .map_err(|_| ())?;
        }
    }
    metrics::counter!("fleetd_journal_replayed_positions_total").increment(total as u64);
    tracing::info!(
        positions = total,
        segments = found.segments.len(),
        ms = started.elapsed().as_millis() as u64,
        "journal replayed into the processor"
    );
    Ok(())
}
