//! One partition worker: gathers its micro-batch, processes it off the async
//! runtime, writes it to the store, and keeps its devices' state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetd_schemas::{PositionReport, RejectReason, RejectionLog, now_ms};
use fleetd_store::{Store, WriteBatch};
use tokio::sync::mpsc;

use crate::batch::{BatchContext, BatchOutcome, process_batch};
use crate::settings::ProcessorSettings;
use crate::state::PartitionState;
use fleetd_geofence::Geofences;
use fleetd_live::LiveHub;
use fleetd_store::Registry;

/// What every partition worker shares: where to write and what to join.
#[derive(Clone)]
pub(crate) struct Ports {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<Registry>,
    /// The geofences each batch is evaluated against.
    pub(crate) geofences: Arc<Geofences>,
    pub(crate) rejections: Arc<RejectionLog>,
    /// Where stored batches are published for live streams.
    pub(crate) live: LiveHub,
}

type Flush = Pin<Box<dyn Future<Output = PartitionState> + Send>>;

/// Runs one partition until its input closes, then flushes what it holds.
///
/// At most one batch per partition is being processed or written at a time,
/// which keeps per-device order; the next batch gathers meanwhile, up to
/// `max_batch` positions, after which input waits (backpressure).
pub(crate) async fn run_partition(
    partition: usize,
    mut input: mpsc::Receiver<Vec<PositionReport>>,
    state: PartitionState,
    ports: Ports,
    settings: ProcessorSettings,
) {
    let mut ticker = tokio::time::interval(settings.window);
    let mut last_sweep = Instant::now();
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = Some(state);
    let mut pending: Vec<PositionReport> = Vec::new();
    let mut in_flight: Option<Flush> = None;
    let mut input_open = true;
    let mut window_due = false;
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open && pending.len() < settings.max_batch => {
                match chunk {
                    Some(chunk) => pending.extend(chunk),
                    None => input_open = false,
                }
            }
            _ = ticker.tick() => window_due = true,
            done = async {
                match in_flight.as_mut() {
                    Some(flush) => flush.await,
                    None => std::future::pending().await,
                }
            }, if in_flight.is_some() => {
                state = Some(done);
                in_flight = None;
            }
        }
        let due = window_due || pending.len() >= settings.max_batch || !input_open;
        // Fixes held for the reorder allowance must be released even when
        // no new input arrives, and silent devices' trips closed.
        let buffered = state.as_ref().is_some_and(PartitionState::has_buffered);
        let sweep = last_sweep.elapsed() >= settings.sweep_every;
        if due && (!pending.is_empty() || buffered || sweep) {
            if let Some(s) = state.take() {
                let batch = std::mem::take(&mut pending);
                if sweep {
                    last_sweep = Instant::now();
                }
                let kind = BatchKind {
                    release_all: !input_open,
                    sweep,
                };
                in_flight = Some(Box::pin(flush(
                    partition,
                    s,
                    batch,
                    kind,
                    ports.clone(),
                    settings.clone(),
                )));
                window_due = false;
            }
        } else if due {
            window_due = false;
        }
        let drained = state.as_ref().is_some_and(|s| !s.has_buffered());
        if !input_open && pending.is_empty() && in_flight.is_none() && drained {
            break;
        }
    }
    tracing::debug!(partition, "partition worker stopped");
}

/// Which extra work a batch does.
#[derive(Debug, Clone, Copy)]
struct BatchKind {
    /// The last batch before shutdown: release every waiting fix.
    release_all: bool,
    /// Close the trips of devices that went silent.
    sweep: bool,
}

/// Processes and stores one batch; returns the partition state.
async fn flush(
    partition: usize,
    mut state: PartitionState,
    batch: Vec<PositionReport>,
    kind: BatchKind,
    ports: Ports,
    settings: ProcessorSettings,
) -> PartitionState {
    let started = Instant::now();
    let n_in = batch.len();
    let registry = Arc::clone(&ports.registry);
    let geofences = Arc::clone(&ports.geofences);
    let processed = tokio::task::spawn_blocking(move || {
        let ctx = BatchContext {
            now_ms: now_ms(),
            registry: &registry,
            geofences: &geofences,
            release_all: kind.release_all,
            sweep: kind.sweep,
        };
        let outcome = process_batch(&mut state, batch, &settings.enrich, &ctx);
        (state, outcome, settings)
    })
    .await;
    let (state, outcome, settings) = match processed {
        Ok(done) => done,
        Err(e) => {
            // A panic in processing is a bug; the partition's state is lost
            // with it, so start afresh rather than stop ingesting.
            tracing::error!(partition, error = %e, "batch processing failed; partition state reset");
            return PartitionState::default();
        }
    };
    let processed_at = started.elapsed();
    let duplicates = outcome.count(RejectReason::Duplicate);
    let late = outcome.count(RejectReason::TooLate);
    let BatchOutcome {
        write,
        filtered,
        samples,
    } = outcome;
    for (reason, n) in &filtered {
        metrics::counter!(reason.metric(), "reason" => reason.code()).increment(*n);
    }
    ports.rejections.keep(samples);
    metrics::counter!("fleetd_duplicates_total").increment(duplicates);
    metrics::counter!("fleetd_late_positions_total").increment(late);
    for alert in &write.alerts {
        metrics::counter!("fleetd_alerts_total", "kind" => alert.kind.code()).increment(1);
    }
    metrics::counter!("fleetd_trips_closed_total").increment(write.trips.len() as u64);
    metrics::histogram!("fleetd_batch_positions").record(n_in as f64);
    // Batches that only waited on the reorder allowance have nothing to say.
    let n_history = write.history.len();
    let (n_latest, n_alerts) = (write.latest.len(), write.alerts.len());
    let stored = if write.is_empty() {
        false
    } else {
        let write = Arc::new(write);
        let stored =
            write_with_retry(partition, &*ports.store, &write, settings.store_retry_max).await;
        // A dropped batch is counted in fleetd_store_dropped_positions_total
        // only: it was neither stored nor delivered.
        if stored {
            record_lag(&write);
            metrics::counter!("fleetd_positions_stored_total").increment(n_history as u64);
            // The store has let go of its reference: the batch moves on to
            // the live streams without a copy.
            let write = Arc::try_unwrap(write).unwrap_or_else(|shared| (*shared).clone());
            publish_live(&ports.live, write);
        }
        stored
    };
    metrics::histogram!("fleetd_batch_process_seconds").record(processed_at.as_secs_f64());
    metrics::histogram!("fleetd_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    tracing::debug!(
        partition,
        positions = n_in,
        stored = if stored { n_history } else { 0 },
        latest = n_latest,
        alerts = n_alerts,
        duplicates,
        late,
        ms = started.elapsed().as_millis() as u64,
        "batch written"
    );
    state
}

/// Records how long the batch's positions took from ingest to the store and
/// from the device to the store.
fn record_lag(write: &WriteBatch) {
    let stored_ms = now_ms();
    // One handle per batch: looking a histogram up costs a registry hash
    // per call, and these record per position.
    let ingest_to_store = metrics::histogram!("fleetd_ingest_to_store_seconds");
    for p in &write.history {
        ingest_to_store.record((stored_ms - p.report.received_ms).max(0) as f64 / 1000.0);
    }
    let event_lag = metrics::histogram!("fleetd_event_lag_seconds");
    for u in &write.latest {
        event_lag.record((stored_ms - u.position.report.ts_ms).max(0) as f64 / 1000.0);
    }
}

/// Hands the stored batch to live streams: its latest positions (one per
/// device) and its alerts. Only stored batches are published, so a stream
/// never shows what a query cannot find. Never blocks on a consumer.
fn publish_live(live: &LiveHub, write: WriteBatch) {
    let latest = write.latest.into_iter().map(|u| u.position).collect();
    live.publish(latest, write.alerts);
}

/// Writes a batch, retrying with exponential backoff (writes are
/// idempotent). While it retries, the partition takes no new batches, so
/// the bounded queues push back on ingest instead of growing.
/// After `max_attempts` failures the batch is dropped and counted, and
/// `false` is returned.
///
/// Every attempt shares the one batch.
async fn write_with_retry(
    partition: usize,
    store: &dyn Store,
    batch: &Arc<WriteBatch>,
    max_attempts: u32,
) -> bool {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=max_attempts {
        match store.write_batch(Arc::clone(batch)).await {
            Ok(()) => return true,
            Err(e) if attempt < max_attempts => {
                metrics::counter!("fleetd_store_write_retries_total").increment(1);
                tracing::warn!(partition, attempt, error = %e, "store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                metrics::counter!("fleetd_store_dropped_positions_total")
                    .increment(batch.history.len() as u64);
                tracing::error!(partition, attempt, error = %e, positions = batch.history.len(), "store write failed; batch dropped");
            }
        }
    }
    false
}
