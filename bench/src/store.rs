//! The storage write path alone, and the fleet's data for other systems:
//! `--store-rows` writes simulated micro-batches straight into a throwaway
//! embedded store (no broker, no processor) and times `Store::write_batch`;
//! `--export-rows` and `--export-fleet` write the same rows, or the fleet's
//! first positions, as CSV so a side-by-side script can load exactly them
//! into another database.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd_schemas::{DeviceId, EnrichedPosition, PositionReport};
use fleetd_simulator::{CityGrid, Vehicle};
use fleetd_store::{FjallStore, LatestUpdate, Store, WriteBatch};
use serde::Serialize;

/// The fleet the exports and the store bench use: `vehicles` on a grid of
/// `blocks` × 150 m around Berlin's centre, seeded with `seed`; the same
/// construction as the simulator's first phase, so the first fix of each
/// vehicle is the first position it publishes.
pub(crate) fn fleet(vehicles: usize, blocks: u32, seed: u64) -> Vec<(String, Vehicle)> {
    let grid = CityGrid::with_blocks(52.52, 13.405, blocks, 150.0);
    let width = vehicles.saturating_sub(1).to_string().len().max(4);
    (0..vehicles)
        .map(|i| {
            (
                format!("bench-q0-{i:0width$}"),
                Vehicle::new(grid, seed, i as u64),
            )
        })
        .collect()
}

/// Writes `device_id,lat,lon` of each vehicle's first fix.
pub(crate) fn export_fleet(path: &Path, fleet: &[(String, Vehicle)]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    writeln!(out, "device_id,lat,lon")?;
    for (id, vehicle) in fleet {
        let fix = vehicle.fix();
        writeln!(out, "{id},{:.7},{:.7}", fix.lat, fix.lon)?;
    }
    out.flush()?;
    Ok(())
}

/// The store bench result.
#[derive(Debug, Serialize)]
pub(crate) struct StoreWrite {
    /// Whether values were encrypted at rest.
    pub sealed: bool,
    /// History rows written.
    pub rows: u64,
    /// Rows per `write_batch`.
    pub batch_rows: usize,
    /// Batches written.
    pub batches: u64,
    /// Rows per second of `write_batch` time.
    pub rows_per_s: f64,
    /// Mean time of one `write_batch`, ms.
    pub mean_batch_ms: f64,
    /// Slowest `write_batch`, ms.
    pub max_batch_ms: f64,
}

/// `rows` positions of the fleet, one second of driving between each
/// vehicle's fixes, in batches of `batch_rows` (each vehicle once per
/// batch at most, as the processor writes them).
fn batches(
    fleet: &mut [(String, Vehicle)],
    rows: u64,
    batch_rows: usize,
) -> anyhow::Result<Vec<WriteBatch>> {
    let ids: Vec<DeviceId> = fleet
        .iter()
        .map(|(id, _)| DeviceId::parse(id))
        .collect::<Result<_, _>>()
        .context("fleet device id")?;
    let mut previous: Vec<Option<u64>> = vec![None; fleet.len()];
    let base_ms = fleetd_schemas::now_ms() - 3_600_000;
    let mut out = Vec::new();
    let mut batch = WriteBatch::default();
    let (mut made, mut k) = (0u64, 0usize);
    while made < rows {
        let i = k % fleet.len();
        let round = (k / fleet.len()) as i64;
        k += 1;
        let (_, vehicle) = &mut fleet[i];
        if round > 0 {
            vehicle.advance(Duration::from_secs(1));
        }
        let fix = vehicle.fix();
        let Some(h3) = fleetd_schemas::H3Cells::of(fix.lat, fix.lon, h3o::Resolution::Nine) else {
            continue;
        };
        let ts_ms = base_ms + round * 1000 + (i % 1000) as i64;
        let position = simulated(&ids[i], ts_ms, &fix, h3, round as u64, ts_ms);
        batch.latest.push(LatestUpdate {
            position: position.clone(),
            previous_area_cell: previous[i].replace(h3.area),
        });
        batch.history.push(position);
        made += 1;
        // A batch never holds a vehicle twice, as the processor's never do.
        if batch.history.len() >= batch_rows || (i + 1 == fleet.len() && batch_rows >= fleet.len())
        {
            out.push(std::mem::take(&mut batch));
        }
    }
    if !batch.history.is_empty() {
        out.push(batch);
    }
    Ok(out)
}

/// A simulator fix as the processor would store it: the fields the
/// simulator sends, nothing derived or flagged.
pub(crate) fn simulated(
    device: &DeviceId,
    ts_ms: i64,
    fix: &fleetd_simulator::Fix,
    h3: fleetd_schemas::H3Cells,
    seq: u64,
    received_ms: i64,
) -> EnrichedPosition {
    EnrichedPosition {
        report: PositionReport {
            device_id: device.clone(),
            ts_ms,
            lat: fix.lat,
            lon: fix.lon,
            accuracy_m: Some(fix.accuracy_m),
            altitude_m: None,
            speed_mps: Some(fix.speed_mps),
            heading_deg: Some(fix.heading_deg),
            battery_pct: Some(fix.battery_pct),
            seq: Some(seq),
            received_ms,
        },
        h3,
        speed_derived: false,
        heading_derived: false,
        flag: None,
    }
}

/// Writes the rows to a CSV (`device_id,ts_ms,lat,lon,accuracy_m,speed_mps,
/// heading_deg,battery_pct,seq,h3_area,h3_detail,batch`).
fn export_rows(path: &Path, batches: &[WriteBatch]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    writeln!(
        out,
        "device_id,ts_ms,lat,lon,accuracy_m,speed_mps,heading_deg,battery_pct,seq,h3_area,h3_detail,batch"
    )?;
    for (b, batch) in batches.iter().enumerate() {
        for p in &batch.history {
            let r = &p.report;
            writeln!(
                out,
                "{},{},{:.7},{:.7},{},{},{},{},{},{},{},{b}",
                r.device_id.as_str(),
                r.ts_ms,
                r.lat,
                r.lon,
                r.accuracy_m.unwrap_or(0.0),
                r.speed_mps.unwrap_or(0.0),
                r.heading_deg.unwrap_or(0.0),
                r.battery_pct.unwrap_or(0.0),
                r.seq.unwrap_or(0),
                p.h3.area as i64,
                p.h3.detail as i64,
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Builds `rows` rows of `vehicles` vehicles, optionally exports them, and
/// writes them batch by batch into a fresh embedded store.
pub(crate) async fn store_write(
    vehicles: usize,
    rows: u64,
    batch_rows: usize,
    export: Option<&Path>,
    sealed: bool,
) -> anyhow::Result<StoreWrite> {
    let mut fleet = fleet(vehicles, 20, 1);
    let batches = tokio::task::spawn_blocking(move || batches(&mut fleet, rows, batch_rows.max(1)))
        .await
        .context("row generation task")??;
    if let Some(path) = export {
        let path = path.to_owned();
        let copy = batches.clone();
        tokio::task::spawn_blocking(move || export_rows(&path, &copy))
            .await
            .context("export task")??;
    }
    let dir = tempfile::tempdir().context("temporary store directory")?;
    let path = dir.path().to_owned();
    // Encryption at rest: a fresh key per run, as `--store-key` would give.
    let key = sealed.then(fleetd_store::StoreKey::generate);
    let store = tokio::task::spawn_blocking(move || FjallStore::open_with_key(&path, key.as_ref()))
        .await
        .context("store open task")?
        .context("open the embedded store")?;
    let (mut total, mut max) = (Duration::ZERO, Duration::ZERO);
    let mut written = 0u64;
    let n = batches.len() as u64;
    for batch in batches {
        written += batch.history.len() as u64;
        let started = Instant::now();
        store
            .write_batch(batch.into())
            .await
            .context("write_batch")?;
        let took = started.elapsed();
        total += took;
        max = max.max(took);
    }
    // Make it durable, as a database's commit would: part of the cost.
    let started = Instant::now();
    store.flush().await.context("flush")?;
    total += started.elapsed();
    Ok(StoreWrite {
        sealed,
        rows: written,
        batch_rows,
        batches: n,
        rows_per_s: written as f64 / total.as_secs_f64().max(1e-9),
        mean_batch_ms: total.as_secs_f64() * 1000.0 / n.max(1) as f64,
        max_batch_ms: max.as_secs_f64() * 1000.0,
    })
}

/// `--store-rows N --store-sealed`: the write path with encryption at rest
/// off and on, alternating so both see the same machine noise; prints each
/// run and the ratio of the medians.
pub(crate) async fn store_sealed_side_by_side(
    vehicles: usize,
    rows: u64,
    batch_rows: usize,
    runs: usize,
    json: bool,
) -> anyhow::Result<()> {
    let (mut plain, mut sealed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for encrypted in [false, true] {
            let run = store_write(vehicles, rows, batch_rows, None, encrypted).await?;
            if !json {
                println!(
                    "store write ({}): {} rows in {} batches of {}: {:.0} rows/s (mean {:.1} ms per batch, max {:.1} ms)",
                    if encrypted { "encrypted" } else { "plain" },
                    run.rows,
                    run.batches,
                    run.batch_rows,
                    run.rows_per_s,
                    run.mean_batch_ms,
                    run.max_batch_ms
                );
            }
            match encrypted {
                true => sealed.push(run),
                false => plain.push(run),
            }
        }
    }
    let median = |runs: &[StoreWrite]| {
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rows_per_s).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (p, s) = (median(&plain), median(&sealed));
    if json {
        let out = serde_json::json!({
            "plain": plain, "encrypted": sealed,
            "plain_median_rows_per_s": p, "encrypted_median_rows_per_s": s,
            "encrypted_over_plain": s / p,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "median: plain {p:.0} rows/s, encrypted {s:.0} rows/s: encrypted/plain = {:.3} ({:+.1}% time per row)",
            s / p,
            (p / s - 1.0) * 100.0
        );
    }
    Ok(())
}
