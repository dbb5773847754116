//! `--history-hours`: the embedded store's history on disk and its read
//! speed, rows against compact blocks, side by side in one run.
//!
//! The simulator's city fleet drives for the given hours at 1 Hz (times in
//! the past, as a backlog or an upgraded data directory holds them), one
//! write batch per second of driving as the processor writes them. The
//! rows are measured (disk after a full compaction, `track` pages, a
//! day-long export in the export's page size), then the store's
//! maintenance merges them into blocks and the same measures are taken
//! again on the same data.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd_schemas::{DeviceId, EnrichedPosition, PositionReport};
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
    /// The whole data directory per stored position (fjall's journal and
    /// every other keyspace included).
    pub dir_bytes_per_position: f64,
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
pub(crate) async fn run(vehicles: usize, hours: f64, seed: u64) -> anyhow::Result<HistoryRun> {
    let seconds = (hours * 3600.0).round() as i64;
    anyhow::ensure!(
        vehicles > 0 && seconds > 0,
        "--history-hours needs vehicles and time"
    );
    let dir = tempfile::tempdir().context("temporary store directory")?;
    let path = dir.path().to_owned();
    let store = tokio::task::spawn_blocking(move || FjallStore::open(&path))
        .await
        .context("store open task")?
        .context("open the embedded store")?;
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
            let position = EnrichedPosition {
                report: PositionReport {
                    device_id: ids[i].clone(),
                    ts_ms,
                    lat: fix.lat,
                    lon: fix.lon,
                    accuracy_m: Some(fix.accuracy_m),
                    altitude_m: None,
                    speed_mps: Some(fix.speed_mps),
                    heading_deg: Some(fix.heading_deg),
                    battery_pct: Some(fix.battery_pct),
                    seq: Some(second as u64),
                    received_ms: ts_ms + lag,
                },
                h3,
                speed_derived: false,
                heading_derived: false,
                flag: None,
            };
            batch.history.push(position);
        }
        positions += batch.history.len() as u64;
        let started = Instant::now();
        store
            .write_batch(batch.into())
            .await
            .context("write_batch")?;
        write_time += started.elapsed();
        progress.inc(1);
    }
    progress.finish_and_clear();
    store.flush().await.context("flush")?;
    let to_ms = start_ms + seconds * 1000;

    let rows = measure(&store, dir.path(), &ids, start_ms, to_ms, positions, seed).await?;
    eprintln!("rows measured; merging them into blocks");
    let started = Instant::now();
    loop {
        let pass = blocking(&store, |s| s.maintain_blocking()).await?;
        if !pass.late_rows_left {
            break;
        }
    }
    let compact_time = started.elapsed();
    let blocks = measure(&store, dir.path(), &ids, start_ms, to_ms, positions, seed).await?;
    Ok(HistoryRun {
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

async fn blocking<T: Send + 'static>(
    store: &FjallStore,
    f: impl FnOnce(&FjallStore) -> Result<T, fleetd_store::StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store))
        .await
        .context("store task")??)
}

/// Disk use after a full compaction, then page and export timings.
async fn measure(
    store: &FjallStore,
    dir: &Path,
    ids: &[DeviceId],
    from_ms: i64,
    to_ms: i64,
    positions: u64,
    seed: u64,
) -> anyhow::Result<HistoryFigures> {
    blocking(store, |s| s.compact_history_tables()).await?;
    let history_bytes = store.history_disk_bytes();
    let dir_bytes = dir_size(dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pages = Vec::new();
    for _ in 0..300 {
        let device = &ids[rng.random_range(0..ids.len())];
        let span = (to_ms - from_ms).max(1);
        let at = from_ms + rng.random_range(0..span);
        let query = HistoryQuery {
            from_ms: at,
            to_ms,
            limit: TRACK_PAGE,
            cursor: None,
        };
        let started = Instant::now();
        let page = store.history(device, &query).await.context("track page")?;
        pages.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(page);
    }
    let mut exports = Vec::new();
    for device in ids.iter().take(5) {
        let started = Instant::now();
        let mut cursor = None;
        let mut n = 0usize;
        loop {
            let query = HistoryQuery {
                from_ms,
                to_ms,
                limit: EXPORT_PAGE,
                cursor: cursor.take(),
            };
            let page = store.history(device, &query).await.context("export page")?;
            n += page.items.len();
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        exports.push(started.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(n);
    }
    Ok(HistoryFigures {
        history_bytes,
        bytes_per_position: history_bytes as f64 / positions.max(1) as f64,
        dir_bytes_per_position: dir_bytes as f64 / positions.max(1) as f64,
        track_page_ms_p50: quantile(&mut pages, 0.5),
        track_page_ms_p99: quantile(&mut pages, 0.99),
        export_ms_p50: quantile(&mut exports, 0.5),
    })
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(at).copied().unwrap_or(f64::NAN)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Prints the run for people.
pub(crate) fn print(run: &HistoryRun) {
    println!(
        "history: {} vehicles × {:.1} h at 1 Hz = {} positions (written at {:.0}/s, merged into blocks at {:.0}/s)",
        run.vehicles, run.hours, run.positions, run.write_rows_per_s, run.compact_rows_per_s
    );
    for (name, f) in [("rows", &run.rows), ("blocks", &run.blocks)] {
        println!(
            "  {name:>6}: {:.1} B/position on disk ({:.1} B with the whole directory); track page p50 {:.2} ms p99 {:.2} ms; a vehicle's whole history {:.1} ms",
            f.bytes_per_position,
            f.dir_bytes_per_position,
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
