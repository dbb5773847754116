//! [`run`]: a whole simulation, in three phases: connect every vehicle
//! (bounded concurrency), publish until the duration ends or the token is
//! cancelled, then drain and disconnect.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::city::CityGrid;
use crate::config::SimConfig;
use crate::device::{Device, Fleet, Signals};
use crate::error::SimError;
use crate::progress::{Counters, Progress};
use crate::report::SimReport;
use crate::session::Endpoint;

/// Runs the simulation described by `config` until `config.duration` has
/// passed (counted from the moment every vehicle has tried to connect) or
/// `cancel` fires, whichever is first.
///
/// Each vehicle is its own MQTT client (client id = device id, clean
/// session) publishing a `fleet.v1.Position` to `fleet/{device_id}/pos`
/// every `1 / rate_hz` seconds, phase-shifted across the fleet so the load
/// is smooth. A vehicle whose connection drops reconnects with back-off and
/// counts the positions it could not send as failed. On stop, each vehicle
/// waits up to `config.drain_timeout` for its publishes to be confirmed,
/// then disconnects cleanly.
///
/// # Errors
///
/// [`SimError::InvalidBroker`], [`SimError::InvalidConfig`] before anything
/// connects; [`SimError::ConnectFailed`] when no vehicle could connect at
/// all; [`SimError::VehicleTask`] if a vehicle task panicked (its counts
/// would be missing from the report).
pub async fn run(config: SimConfig, cancel: CancellationToken) -> Result<SimReport, SimError> {
    let plan = config.plan()?;
    let vehicles = plan.device_ids.len();
    tracing::info!(
        broker = %config.broker,
        vehicles,
        rate_hz = config.rate_hz,
        qos = config.qos.level(),
        duration_s = config.duration.map(|d| d.as_secs_f64()),
        "simulation starting"
    );

    let counters = Arc::new(Counters::default());
    let progress = Progress::start(config.show_progress, counters.clone(), vehicles);
    let fleet = Arc::new(Fleet {
        endpoint: Endpoint {
            host: plan.host,
            port: plan.port,
            qos: config.qos,
            keep_alive: config.keep_alive,
            connect_timeout: config.connect_timeout,
        },
        period: plan.period,
        drain_timeout: config.drain_timeout,
        grid: CityGrid::new(config.center_lat, config.center_lon),
        seed: config.seed,
        vehicles,
        connect_permits: Semaphore::new(config.connect_concurrency),
        counters,
    });

    // Stops every vehicle: fired by the duration timer, or by `cancel`.
    let stop = cancel.child_token();
    // One outcome per vehicle; the runner reads as they come, so a small
    // bound only paces the vehicles that report.
    let (connected_tx, mut connected_rx) = mpsc::channel(vehicles.clamp(1, 1024));
    let (go_tx, go_rx) = watch::channel(None);
    let connect_started = Instant::now();
    let tasks: Vec<_> = plan
        .device_ids
        .into_iter()
        .enumerate()
        .map(|(index, device_id)| {
            let signals = Signals {
                connected: connected_tx.clone(),
                go: go_rx.clone(),
                stop: stop.clone(),
            };
            let device = Device::new(fleet.clone(), index, device_id.clone());
            (device_id, tokio::spawn(device.run(signals)))
        })
        .collect();
    drop(connected_tx);

    let (mut up, mut last_error) = (0usize, None);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            outcome = connected_rx.recv() => match outcome {
                Some(Ok(())) => up += 1,
                Some(Err(reason)) => last_error = Some(reason),
                None => break,
            },
        }
    }
    // Devices still connecting when a cancel cut this phase short must not
    // block on a full channel nobody reads any more.
    drop(connected_rx);
    let connect_elapsed = connect_started.elapsed();
    if up == 0 && !stop.is_cancelled() {
        stop.cancel();
        for (_, task) in tasks {
            let _ = task.await;
        }
        progress.finish();
        return Err(SimError::ConnectFailed {
            broker: config.broker,
            vehicles,
            last_error: last_error.unwrap_or_else(|| "unknown".to_owned()),
        });
    }
    if up < vehicles {
        tracing::warn!(
            connected = up,
            vehicles,
            last_error = last_error.as_deref().unwrap_or(""),
            "some vehicles could not connect; they keep retrying"
        );
    }
    tracing::info!(
        connected = up,
        vehicles,
        elapsed_ms = connect_elapsed.as_millis() as u64,
        "vehicles connected"
    );

    let publish_started = Instant::now();
    progress.phase("publishing");
    go_tx.send_replace(Some(publish_started));
    match config.duration {
        Some(duration) => {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(duration) => {}
            }
        }
        None => stop.cancelled().await,
    }
    stop.cancel();
    progress.phase("draining");

    let mut report = SimReport {
        published: 0,
        acked: 0,
        failed: 0,
        elapsed: Default::default(),
        connect_elapsed,
        qos: config.qos,
        vehicles_connected: up,
        vehicles: Vec::with_capacity(vehicles),
    };
    let mut broken = None;
    for (device_id, task) in tasks {
        match task.await {
            Ok(vehicle) => {
                report.published += vehicle.published;
                report.acked += vehicle.acked;
                report.failed += vehicle.failed;
                report.vehicles.push(vehicle);
            }
            Err(err) => {
                tracing::error!(%device_id, error = %err, "vehicle task failed");
                broken.get_or_insert(SimError::VehicleTask {
                    device_id,
                    reason: err.to_string(),
                });
            }
        }
    }
    report.elapsed = publish_started.elapsed();
    progress.finish();
    if let Some(err) = broken {
        return Err(err);
    }
    tracing::info!(
        published = report.published,
        acked = report.acked,
        failed = report.failed,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "simulation finished"
    );
    Ok(report)
}
