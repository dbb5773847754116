//! `--history-hours`: the embedded store's history on disk and its read
//! speed, rows against compact blocks, side by side in one run.
//!
//! The simulator's city fleet drives for the given hours at 1 Hz (times in
//! the past, as a backlog or an upgraded data directory holds them), one
//! write batch per second of driving as the processor writes them, into
//! two stores: one keeps the rows, the other's maintenance merges them
//! into blocks. Both are then compacted fully and reopened, and measured
//! alternately: disk, `track` pages, a vehicle's whole history in the
//! export's page size.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd_schemas::DeviceId;
use fleetd_store::{FjallStore, HistoryQuery, Store, WriteBatch};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The export's page size (`api/src/export.rs`).
const EXPORT_PAGE: usize = 5_000;
/// A `track` page of the API's default size.
const TRACK_PAGE: usize = 1_000;

/// One side's figures.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryFigures {
    /// History keyspaces' bytes on disk (tables after a full compaction).
    pub history_bytes: u64,
    /// `history_bytes` per stored position.
    pub bytes_per_position: f64,
    /// The whole data directory but fjall's journal, per stored position.
    pub dir_bytes_per_position: f64,
    /// fjall's journal (write-ahead log) on disk: bounded by fjall's
    /// journal limit (512 MiB), whatever history holds.
    pub journal_bytes: u64,
    /// Median time of one `track` page of 1,000 fixes at a random place.
    pub track_page_ms_p50: f64,
    /// 99th percentile of the same.
    pub track_page_ms_p99: f64,
    /// Median time to read one vehicle's whole history in export pages.
    pub export_ms_p50: f64,
}

/// The run's result.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryRun {
    /// Whether values were encrypted at rest.
    pub sealed: bool,
    pub vehicles: usize,
    pub hours: f64,
    pub positions: u64,
    /// Writing the rows, positions per second of `write_batch` time.
    pub write_rows_per_s: f64,
    /// Maintenance merging every row into blocks, positions per second.
    pub compact_rows_per_s: f64,
    pub rows: HistoryFigures,
    pub blocks: HistoryFigures,
    /// Blocks' bytes per position over rows'.
    pub disk_ratio: f64,
    /// Blocks' median `track` page time over rows'.
    pub track_ratio: f64,
    /// Blocks' median export time over rows'.
    pub export_ratio: f64,
}

/// `vehicles` driving for `hours` at 1 Hz, ending an hour ago.
pub(crate) async fn run(
    vehicles: usize,
    hours: f64,
    seed: u64,
    sealed: bool,
) -> anyhow::Result<HistoryRun> {
    let seconds = (hours * 3600.0).round() as i64;
    anyhow::ensure!(
        vehicles > 0 && seconds > 0,
        "--history-hours needs vehicles and time"
    );
    // Two stores get the same batches: one keeps them as rows (as fleetd
    // did before blocks), the other is maintained into blocks; measures
    // then alternate between them so both see the same machine noise.
    let (rows_dir, blocks_dir) = (
        tempfile::tempdir().context("temporary store directory")?,
        tempfile::tempdir().context("temporary store directory")?,
    );
    // Encryption at rest: a fresh key per run, as `--store-key` would give.
    let key = sealed.then(fleetd_store::StoreKey::generate);
    let rows_store = open(rows_dir.path(), key.clone()).await?;
    let blocks_store = open(blocks_dir.path(), key.clone()).await?;
    let mut fleet = crate::store::fleet(vehicles, 20, seed);
    let ids: Vec<DeviceId> = fleet
        .iter()
        .map(|(id, _)| DeviceId::parse(id))
        .collect::<Result<_, _>>()
        .context("fleet device id")?;
    let start_ms = fleetd_schemas::now_ms() - 3_600_000 - seconds * 1000;
    let progress = indicatif::ProgressBar::new(seconds as u64).with_message("writing rows");
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} s of driving, eta {eta}",
        )
        .context("progress template")?,
    );
    let mut write_time = Duration::ZERO;
    let mut positions = 0u64;
    for second in 0..seconds {
        let mut batch = WriteBatch::default();
        for (i, (_, vehicle)) in fleet.iter_mut().enumerate() {
            if second > 0 {
                vehicle.advance(Duration::from_secs(1));
            }
            let fix = vehicle.fix();
            let Some(h3) = fleetd_schemas::H3Cells::of(fix.lat, fix.lon, h3o::Resolution::Nine)
            else {
                continue;
            };
            // A tracker's clock ticks in whole seconds plus its own phase;
            // the network adds 50–400 ms.
            let ts_ms = start_ms + second * 1000 + (i as i64 * 37) % 1000;
            let lag = 50 + ((second * 7919 + i as i64 * 104_729) % 350);
            let seq = second as u64;
            let position = crate::store::simulated(&ids[i], ts_ms, &fix, h3, seq, ts_ms + lag);
            batch.history.push(position);
        }
        positions += batch.history.len() as u64;
        let batch = std::sync::Arc::new(batch);
        let started = Instant::now();
        rows_store
            .write_batch(batch.clone())
            .await
            .context("write_batch")?;
        write_time += started.elapsed();
        blocks_store
            .write_batch(batch)
            .await
            .context("write_batch")?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let to_ms = start_ms + seconds * 1000;

    eprintln!("merging the rows of one store into blocks");
    let started = Instant::now();
    loop {
        let pass = blocking(&blocks_store, |s| s.maintain_blocking()).await?;
        if !pass.late_rows_left {
            break;
        }
    }
    let compact_time = started.elapsed();
    let rows_store = reopen(rows_store, rows_dir.path(), key.clone()).await?;
    let blocks_store = reopen(blocks_store, blocks_dir.path(), key).await?;
    let (mut rows, mut blocks) = (Samples::default(), Samples::default());
    for round in 0..3 {
        let seed = seed.wrapping_add(round);
        sample(&rows_store, &ids, start_ms, to_ms, seed, &mut rows).await?;
        sample(&blocks_store, &ids, start_ms, to_ms, seed, &mut blocks).await?;
    }
    let rows = rows.figures(&rows_store, rows_dir.path(), positions);
    let blocks = blocks.figures(&blocks_store, blocks_dir.path(), positions);
    Ok(HistoryRun {
        sealed,
        vehicles,
        hours,
        positions,
        write_rows_per_s: positions as f64 / write_time.as_secs_f64().max(1e-9),
        compact_rows_per_s: positions as f64 / compact_time.as_secs_f64().max(1e-9),
        disk_ratio: blocks.bytes_per_position / rows.bytes_per_position,
        track_ratio: blocks.track_page_ms_p50 / rows.track_page_ms_p50,
        export_ratio: blocks.export_ms_p50 / rows.export_ms_p50,
        rows,
        blocks,
    })
}

async fn open(dir: &Path, key: Option<fleetd_store::StoreKey>) -> anyhow::Result<FjallStore> {
    let path = dir.to_owned();
    tokio::task::spawn_blocking(move || FjallStore::open_with_key(&path, key.as_ref()))
        .await
        .context("store open task")?
        .context("open the embedded store")
}

/// Flushes every history keyspace's memtable and compacts its tables fully,
/// then closes and opens the store again: what a restarted server finds.
async fn reopen(
    store: FjallStore,
    dir: &Path,
    key: Option<fleetd_store::StoreKey>,
) -> anyhow::Result<FjallStore> {
    blocking(&store, |s| s.compact_history_tables()).await?;
    store.flush().await.context("flush")?;
    drop(store);
    open(dir, key).await
}

async fn blocking<T: Send + 'static>(
    store: &FjallStore,
    f: impl FnOnce(&FjallStore) -> Result<T, fleetd_store::StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store))
        .await
        .context("store task")??)
}

/// Timings of one store, over the rounds.
#[derive(Default)]
struct Samples {
    pages_ms: Vec<f64>,
    exports_ms: Vec<f64>,
}

impl Samples {
    fn figures(mut self, store: &FjallStore, dir: &Path, positions: u64) -> HistoryFigures {
        let history_bytes = store.history_disk_bytes();
        let (dir_bytes, journal_bytes) = dir_size(dir);
        let per = |bytes: u64| bytes as f64 / positions.max(1) as f64;
        HistoryFigures {
            history_bytes,
            bytes_per_position: per(history_bytes),
            dir_bytes_per_position: per(dir_bytes - journal_bytes),
            journal_bytes,
            track_page_ms_p50: quantile(&mut self.pages_ms, 0.5),
            track_page_ms_p99: quantile(&mut self.pages_ms, 0.99),
            export_ms_p50: quantile(&mut self.exports_ms, 0.5),
        }
    }
}

/// 300 `track` pages at random places and 5 vehicles' whole history.
async fn sample(
    store: &FjallStore,
    ids: &[DeviceId],
    from_ms: i64,
    to_ms: i64,
    seed: u64,
    into: &mut Samples,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..300 {
        let device = &ids[rng.random_range(0..ids.len())];
        let at = from_ms + rng.random_range(0..(to_ms - from_ms).max(1));
        let query = HistoryQuery {
            from_ms: at,
            to_ms,
            limit: TRACK_PAGE,
            cursor: None,
        };
        let started = Instant::now();
        let page = store.history(device, &query).await.context("track page")?;
        into.pages_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(page);
    }
    for _ in 0..5 {
        let device = &ids[rng.random_range(0..ids.len())];
        let started = Instant::now();
        let mut cursor = None;
        loop {
            let query = HistoryQuery {
                from_ms,
                to_ms,
                limit: EXPORT_PAGE,
                cursor: cursor.take(),
            };
            let page = store.history(device, &query).await.context("export page")?;
            std::hint::black_box(&page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        into.exports_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

/// Bytes of every file under `dir`, and of those that are fjall's
/// journal (`*.jnl`, bounded by fjall's journal limit, not by history).
fn dir_size(dir: &Path) -> (u64, u64) {
    let (mut total, mut journal) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => {
                    total += m.len();
                    if entry.path().extension().is_some_and(|e| e == "jnl") {
                        journal += m.len();
                    }
                }
                Err(_) => {}
            }
        }
    }
    (total, journal)
}

/// Prints the run for people.
pub(crate) fn print(run: &HistoryRun) {
    println!(
        "history{}: {} vehicles × {:.1} h at 1 Hz = {} positions (written at {:.0}/s, merged into blocks at {:.0}/s)",
        if run.sealed {
            " (encrypted at rest)"
        } else {
            ""
        },
        run.vehicles,
        run.hours,
        run.positions,
        run.write_rows_per_s,
        run.compact_rows_per_s
    );
    for (name, f) in [("rows", &run.rows), ("blocks", &run.blocks)] {
        println!(
            "  {name:>6}: {:.1} B/position on disk ({:.1} B with the directory's other files, {:.0} MB of fjall journal beside); track page p50 {:.2} ms p99 {:.2} ms; a vehicle's whole history {:.1} ms",
            f.bytes_per_position,
            f.dir_bytes_per_position,
            f.journal_bytes as f64 / 1e6,
            f.track_page_ms_p50,
            f.track_page_ms_p99,
            f.export_ms_p50
        );
    }
    println!(
        "  blocks/rows: disk {:.3}, track page {:.2}, export {:.2}",
        run.disk_ratio, run.track_ratio, run.export_ratio
    );
}
