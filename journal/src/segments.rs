//! Segment files: naming, listing at start, creating, deleting.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{FlushStore, JournalError};

/// Segments a previous run left, oldest first, and the id the next one gets.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) segments: Vec<u64>,
    pub(crate) next_id: u64,
}

/// The file of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn dir_error(path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Dir {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` if needed, checks that it is writable and lists its
/// segments. Files that are not segments are left alone.
pub(crate) fn open_dir(dir: &Path) -> Result<Found, JournalError> {
    fs::create_dir_all(dir).map_err(|e| dir_error(dir, e))?;
    // A directory fleetd cannot write to fails here, at start, not at the
    // first acknowledgement.
    let probe = dir.join(".writable");
    File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok"))
        .map_err(|e| dir_error(dir, e))?;
    let _ = fs::remove_file(&probe);
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| dir_error(dir, e))? {
        let entry = entry.map_err(|e| dir_error(dir, e))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(id);
    }
    segments.sort_unstable();
    let next_id = segments.last().map_or(1, |last| last + 1);
    Ok(Found { segments, next_id })
}

/// Creates segment `id` with its header `magic`; with `sync`, the file and
/// the directory entry are synced too (power-loss durability).
pub(crate) fn create(
    dir: &Path,
    id: u64,
    sync: bool,
    magic: &'static [u8; 8],
) -> std::io::Result<File> {
    let path = path(dir, id);
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let written = file.write_all(magic).and_then(|()| {
        if sync {
            file.sync_data()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    });
    if let Err(e) = written {
        // No half-made segment left for the next start to stumble over.
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Deletes the segments the processor settled, after the store was
/// flushed, until every settlement sender is gone.
pub(crate) async fn prune(
    dir: PathBuf,
    mut settled: mpsc::UnboundedReceiver<u64>,
    flush_store: FlushStore,
) {
    let mut ready = BTreeSet::new();
    while let Some(id) = settled.recv().await {
        ready.insert(id);
        while let Ok(id) = settled.try_recv() {
            ready.insert(id);
        }
        // The store may still hold the batches in its own buffers: they
        // must be durable there before their only other copy goes.
        loop {
            match flush_store().await {
                Ok(()) => break,
                Err(e) => {
                    metrics::counter!("fleetd_journal_prune_errors_total").increment(1);
                    tracing::warn!(error = %e, "store flush failed; journal segments kept");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if settled.is_closed() && settled.is_empty() {
                        return;
                    }
                }
            }
        }
        let ids: Vec<u64> = std::mem::take(&mut ready).into_iter().collect();
        let dir = dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = 0usize;
            for id in ids {
                match fs::remove_file(path(&dir, id)) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(segment = id, error = %e, "cannot delete journal segment")
                    }
                }
            }
            removed
        })
        .await
        .unwrap_or(0);
        metrics::counter!("fleetd_journal_segments_deleted_total").increment(removed as u64);
        metrics::gauge!("fleetd_journal_segments").decrement(removed as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_finds_segments_in_order_and_ignores_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for id in [3, 1, 20] {
            create(dir.path(), id, false, crate::codec::MAGIC).expect("segment");
        }
        fs::write(dir.path().join("notes.txt"), "x").expect("file");
        let found = open_dir(dir.path()).expect("open");
        assert_eq!(found.segments, [1, 3, 20]);
        assert_eq!(found.next_id, 21);
        assert_eq!(open_dir(&dir.path().join("new")).expect("open").next_id, 1);
    }
}
