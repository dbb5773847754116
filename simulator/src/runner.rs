//! [`run`]: a whole simulation, in three phases: connect every vehicle
//! (bounded concurrency), publish until the duration ends or the token is
//! cancelled, then drain and disconnect.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::city::CityGrid;
use crate::config::SimConfig;
use crate::device::{Device, Fleet, Signals};
use crate::error::SimError;
use crate::multiplex::Group;
use crate::phone::CityMap;
use crate::progress::{Counters, Progress};
use crate::report::{ChaosCounts, SimReport};
use crate::session::{Endpoint, MAX_INFLIGHT, REQUEST_CAPACITY};

/// Unacknowledged QoS 1 publishes and queued requests of a connection
/// shared by many vehicles: enough to keep a loopback connection busy at
/// tens of thousands of publishes per second.
const SHARED_INFLIGHT: u16 = 1_000;
const SHARED_REQUEST_CAPACITY: usize = 10_000;

/// Runs the simulation described by `config` until `config.duration` has
/// passed (counted from the moment every vehicle has tried to connect) or
/// `cancel` fires, whichever is first.
///
/// Each vehicle is its own MQTT client (client id = device id, clean
/// session), or with `config.connections` shares one of a few connections,
/// publishing a `fleet.v1.Position` to `fleet/{device_id}/pos` every
/// `1 / rate_hz` seconds, phase-shifted across the fleet so the load is
/// smooth. Phones that go offline (`config.outages`) buffer and flush a
/// `pos/batch` when back; `config.chaos` adds deliberate faults. A vehicle whose connection drops reconnects with back-off and
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
    let shared = config.connections.is_some();
    let fleet = Arc::new(Fleet {
        endpoint: Endpoint {
            host: plan.host,
            port: plan.port,
            qos: config.qos,
            keep_alive: config.keep_alive,
            connect_timeout: config.connect_timeout,
            inflight: if shared {
                SHARED_INFLIGHT
            } else {
                MAX_INFLIGHT
            },
            request_capacity: if shared {
                SHARED_REQUEST_CAPACITY
            } else {
                REQUEST_CAPACITY
            },
            credentials: config.credentials.clone(),
        },
        period: plan.period,
        drain_timeout: config.drain_timeout,
        map: match &config.roads {
            Some(roads) => CityMap::Roads(roads.clone()),
            None => CityMap::Grid(CityGrid::with_blocks(
                config.center_lat,
                config.center_lon,
                config.grid_blocks,
                config.grid_block_m,
            )),
        },
        chaos: config.chaos,
        outages: config.outages,
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
    let signals = || Signals {
        connected: connected_tx.clone(),
        go: go_rx.clone(),
        stop: stop.clone(),
    };
    let tasks: Vec<(String, JoinHandle<Vec<crate::VehicleReport>>)> = match config.connections {
        None => plan
            .device_ids
            .into_iter()
            .enumerate()
            .map(|(index, device_id)| {
                let device = Device::new(fleet.clone(), index, device_id.clone());
                let task = device.run(signals());
                (device_id, tokio::spawn(async move { vec![task.await] }))
            })
            .collect(),
        Some(n) => {
            let mut members: Vec<Vec<(usize, String)>> = vec![Vec::new(); n];
            for (index, device_id) in plan.device_ids.into_iter().enumerate() {
                members[index % n].push((index, device_id));
            }
            members
                .into_iter()
                .enumerate()
                .map(|(g, members)| {
                    let client_id = format!("{}mux-{g}", config.id_prefix);
                    let group = Group::new(fleet.clone(), client_id.clone(), members);
                    (client_id, tokio::spawn(group.run(signals())))
                })
                .collect()
        }
    };
    drop(connected_tx);

    let (mut up, mut last_error) = (0usize, None);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            outcome = connected_rx.recv() => match outcome {
                Some(Ok(n)) => up += n,
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
        batches: 0,
        chaos: ChaosCounts::default(),
        connections: config.connections.unwrap_or(vehicles),
        elapsed: Default::default(),
        connect_elapsed,
        qos: config.qos,
        vehicles_connected: up,
        vehicles: Vec::with_capacity(vehicles),
    };
    let mut broken = None;
    for (device_id, task) in tasks {
        match task.await {
            Ok(vehicles) => {
                for vehicle in vehicles {
                    report.published += vehicle.published;
                    report.acked += vehicle.acked;
                    report.failed += vehicle.failed;
                    report.batches += vehicle.batches;
                    report.chaos.add(&vehicle.chaos);
                    report.vehicles.push(vehicle);
                }
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
    // Groups report their members interleaved; keep vehicle-index order.
    if config.connections.is_some() {
        report.vehicles.sort_by(|a, b| {
            a.device_id
                .len()
                .cmp(&b.device_id.len())
                .then_with(|| a.device_id.cmp(&b.device_id))
        });
    }
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
