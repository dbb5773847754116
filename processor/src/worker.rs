//! One partition worker: gathers its micro-batch, processes it off the async
//! runtime, writes it to the store, and keeps its devices' state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetd_schemas::{Checkpoint, Ingested, PositionReport, RejectReason, RejectionLog, now_ms};
use fleetd_store::{Store, WriteBatch};
use tokio::sync::mpsc;

use crate::batch::{BatchContext, BatchOutcome, process_batch};
use crate::settings::ProcessorSettings;
use crate::state::PartitionState;
use fleetd_geofence::Geofences;
use fleetd_live::{LiveHub, LivePosition};
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
    /// Where a batch's alerts go for webhooks, before the batch is stored.
    pub(crate) webhooks: Option<fleetd_webhooks::Outbox>,
}

type Flush = Pin<Box<dyn Future<Output = Flushed> + Send>>;

/// A finished batch: the partition state back, and whether every position
/// it took is accounted for in the store.
struct Flushed {
    state: PartitionState,
    /// False only when the batch was lost (processing panicked): journal
    /// checkpoints are then never settled, so the journal keeps what the
    /// store may lack and replays it at the next start.
    complete: bool,
}

/// A journal checkpoint part waiting for this partition's batches.
struct Waiting {
    checkpoint: Checkpoint,
    /// The first batch started after the checkpoint arrived: it holds every
    /// position that came before it.
    batch: u64,
}

/// Runs one partition until its input closes, then flushes what it holds.
///
/// At most one batch per partition is being processed or written at a time,
/// which keeps per-device order; the next batch gathers meanwhile, up to
/// `max_batch` positions, after which input waits (backpressure).
///
/// A journal checkpoint is settled once the batch that followed it is
/// stored and no fix received before it waits in a reorder buffer.
pub(crate) async fn run_partition(
    partition: usize,
    mut input: mpsc::Receiver<Ingested>,
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
    let mut waiting: Vec<Waiting> = Vec::new();
    // Batches started, and the newest one stored.
    let mut started: u64 = 0;
    let mut stored: u64 = 0;
    let mut lost = false;
    loop {
        tokio::select! {
            item = input.recv(), if input_open && pending.len() < settings.max_batch => {
                match item {
                    Some(Ingested::Positions(chunk)) => pending.extend(chunk),
                    Some(Ingested::Replayed(chunk)) => {
                        pending.extend(drop_stored_or_keep(partition, &*ports.store, chunk).await);
                    }
                    Some(Ingested::Checkpoint(checkpoint)) => waiting.push(Waiting {
                        checkpoint,
                        batch: started + 1,
                    }),
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
                in_flight = None;
                lost |= !done.complete;
                if done.complete {
                    stored = started;
                }
                if !lost {
                    settle(&mut waiting, stored, &done.state);
                }
                state = Some(done.state);
            }
        }
        let due = window_due || pending.len() >= settings.max_batch || !input_open;
        // Fixes held for the reorder allowance must be released even when
        // no new input arrives, and silent devices' trips closed; a waiting
        // checkpoint needs a batch to follow it.
        let buffered = state.as_ref().is_some_and(PartitionState::has_buffered);
        let sweep = last_sweep.elapsed() >= settings.sweep_every;
        let checkpoint = !waiting.is_empty() && !lost;
        if due && (!pending.is_empty() || buffered || sweep || checkpoint) {
            if let Some(s) = state.take() {
                let batch = std::mem::take(&mut pending);
                if sweep {
                    last_sweep = Instant::now();
                }
                let kind = BatchKind {
                    release_all: !input_open,
                    sweep,
                };
                started += 1;
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
    if !waiting.is_empty() {
        tracing::debug!(
            partition,
            checkpoints = waiting.len(),
            "stopping with journal checkpoints unsettled: their segments are replayed at the next start"
        );
    }
    tracing::debug!(partition, "partition worker stopped");
}

/// Settles the checkpoints whose positions are all stored: the batch after
/// each is stored, and no fix received at or before it is still waiting in
/// a reorder buffer.
fn settle(waiting: &mut Vec<Waiting>, stored: u64, state: &PartitionState) {
    if waiting.is_empty() {
        return;
    }
    let oldest_waiting = state.oldest_buffered_received_ms();
    let (ready, rest): (Vec<Waiting>, Vec<Waiting>) =
        std::mem::take(waiting).into_iter().partition(|w| {
            w.batch <= stored
                && oldest_waiting.is_none_or(|oldest| oldest > w.checkpoint.max_received_ms())
        });
    *waiting = rest;
    for w in ready {
        w.checkpoint.done();
    }
}

/// Replayed positions minus those already stored; if the store cannot be
/// asked, all of them (a stored fix then comes back as a late one, which
/// is better than losing one that was not stored).
async fn drop_stored_or_keep(
    partition: usize,
    store: &dyn Store,
    chunk: Vec<PositionReport>,
) -> Vec<PositionReport> {
    match crate::replay::drop_stored(store, chunk.clone()).await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(partition, error = %e, "cannot check replayed positions against the store; replaying all");
            chunk
        }
    }
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
) -> Flushed {
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
    let (state, outcome, _settings) = match processed {
        Ok(done) => done,
        Err(e) => {
            // A panic in processing is a bug; the partition's state is lost
            // with it, so start afresh rather than stop ingesting.
            tracing::error!(partition, error = %e, "batch processing failed; partition state reset");
            return Flushed {
                state: PartitionState::default(),
                complete: false,
            };
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
    let stored = !write.is_empty();
    if stored {
        let write = Arc::new(write);
        if let Some(outbox) = &ports.webhooks
            && !write.alerts.is_empty()
        {
            queue_for_webhooks(partition, outbox, &write).await;
        }
        write_until_stored(partition, &*ports.store, &write).await;
        record_lag(&write);
        metrics::counter!("fleetd_positions_stored_total").increment(n_history as u64);
        // The store has let go of its reference: the batch moves on to
        // the live streams without a copy.
        let write = Arc::try_unwrap(write).unwrap_or_else(|shared| (*shared).clone());
        publish_live(&ports.live, write, &state);
    }
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
    Flushed {
        state,
        complete: true,
    }
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
fn publish_live(live: &LiveHub, write: WriteBatch, state: &PartitionState) {
    // Each event carries the device's state after the batch, as
    // `GET /v1/vehicles/{id}` shows it: the one just stored, else (its
    // fixes still wait out the reorder allowance) the one it has; a device
    // with no state yet goes without.
    let mut changed: std::collections::HashMap<_, _> = write.states.into_iter().collect();
    let latest = write
        .latest
        .into_iter()
        .map(|u| {
            let device = &u.position.report.device_id;
            let vehicle = changed.remove(device).or_else(|| {
                let ds = state.devices.get(device)?;
                (ds.vehicle.ts_ms != 0).then(|| ds.vehicle.clone())
            });
            LivePosition {
                vehicle,
                position: u.position,
            }
        })
        .collect();
    live.publish(latest, write.alerts);
}

/// Appends the batch's alerts to the webhook outbox, retrying until it
/// takes them: it must hold them before the store does, or a crash after
/// the store write would lose their deliveries (the replay finds the batch
/// stored and raises nothing again).
async fn queue_for_webhooks(
    partition: usize,
    outbox: &fleetd_webhooks::Outbox,
    batch: &Arc<WriteBatch>,
) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let (outbox, batch) = (outbox.clone(), Arc::clone(batch));
        let appended = tokio::task::spawn_blocking(move || outbox.append(&batch.alerts))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match appended {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(partition, failures, %error, "webhook outbox append failed; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes a batch, retrying with exponential backoff until the store takes
/// it (writes are idempotent). Every position in it was acknowledged, so
/// none is ever dropped: while a partition retries it takes no new
/// batches, the bounded queues fill, and ingest stops acknowledging (MQTT
/// clients keep their data and wait, HTTP answers 503) until the store
/// recovers. One WARN when it starts failing, one every 30 s while it
/// does, one INFO when it recovers.
///
/// Every attempt shares the one batch.
async fn write_until_stored(partition: usize, store: &dyn Store, batch: &Arc<WriteBatch>) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        match store.write_batch(Arc::clone(batch)).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(partition, failures, "store writes succeed again");
                }
                return;
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("fleetd_store_write_retries_total").increment(1);
                if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(
                        partition,
                        failures,
                        positions = batch.history.len(),
                        error = %e,
                        "store write failed; retrying, ingest holds its acknowledgements meanwhile"
                    );
                    last_log = Some(Instant::now());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
