//! The fleetd processor: micro-batches positions and turns them into stored,
//! enriched vehicle state.
//!
//! * [`Processor::start`] restores per-device state from the store, then runs
//!   a dispatcher and one partition worker per core. The dispatcher routes
//!   each position to the worker owning its device (hash of the device id),
//!   so per-device order holds without locks.
//! * Each worker gathers a micro-batch for [`ProcessorSettings::window`] (or
//!   until [`ProcessorSettings::max_batch`]), runs [`process_batch`] on the
//!   blocking pool (sort, dedupe, H3, latest, reorder, vehicle state:
//!   filters, motion, odometer, trips, overspeed), then writes one
//!   [`fleetd_store::WriteBatch`].
//! * [`fleetd_store::Registry`] is the enrichment cache of the device registry, written by
//!   the API and read once per batch; [`fleetd_geofence::Geofences`] likewise holds
//!   the fence index, and every applied fix is evaluated against it
//!   (enter/exit/dwell alerts, memberships kept in the vehicle state).
//! * Input is a bounded channel of [`Ingested`] items from the journal:
//!   position chunks, chunks replayed after a restart (those the store
//!   already has are dropped) and journal checkpoints, which each partition
//!   settles once everything before them is stored. When the input closes,
//!   workers flush what they hold and [`Processor::join`] returns.
//! * A batch the store refuses is retried until it is stored: every
//!   position in it was acknowledged.
//!
//! * After a batch is stored, the worker publishes its latest positions and
//!   alerts to the [`fleetd_live::LiveHub`], which feeds the live streams.
//!
//! The enrichment functions ([`process_batch`]) do no I/O and read no clock.

mod batch;
mod caches;
mod config;
mod device_map;
mod dispatch;

pub mod kinematics;

mod reorder;
mod replay;
mod settings;
mod state;
mod vehicle;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use fleetd_schemas::{Ingested, RejectionLog};
use fleetd_store::{Store, StoreError};

use fleetd_geofence::Geofences;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use batch::{BatchContext, BatchOutcome, EnrichSettings, cells, process_batch};
pub use device_map::{DeviceEntry, DeviceMap};

pub use config::{ProcessorConfig, VehicleConfig};
pub use settings::{ProcessorSettings, VehicleSettings};
pub use state::{DeviceState, LatestFix, PartitionState};

/// What the processor shares with the rest of fleetd.
#[derive(Clone)]
pub struct ProcessorPorts {
    /// The device registry cache, joined into every batch.
    pub registry: Arc<fleetd_store::Registry>,
    /// The geofences, evaluated for every applied fix.
    pub geofences: Arc<Geofences>,
    /// Where filtered fixes are sampled for `GET /v1/rejections`.
    pub rejections: Arc<RejectionLog>,
    /// Where stored batches are published for live streams.
    pub live: fleetd_live::LiveHub,
    /// Where each batch's alerts are queued for webhooks (before the batch
    /// is stored); `None`: no webhooks.
    pub webhooks: Option<fleetd_webhooks::Outbox>,
}

/// A running processor.
pub struct Processor {
    /// The dispatcher and the partition workers: they end when the input
    /// closes and every worker has flushed.
    workers: JoinSet<()>,
    /// Stops the cache refreshers once the workers are done.
    caches: CancellationToken,
    cache_tasks: JoinSet<()>,
    devices: usize,
}

impl Processor {
    /// Loads the registry and geofence caches from `store` (and keeps them
    /// fresh, see [`ProcessorSettings::registry_refresh`]), restores state
    /// from `store` and starts the dispatcher and workers,
    /// reading position chunks from `input` until it closes. Each batch
    /// joins the registry, is evaluated against the geofences, and samples
    /// its filtered fixes into the rejection log; after it is stored, its
    /// latest positions and alerts go to the live hub (see
    /// [`fleetd_live::LiveHub::publish`]).
    pub async fn start(
        settings: ProcessorSettings,
        store: Arc<dyn Store>,
        ports: ProcessorPorts,
        input: mpsc::Receiver<Ingested>,
    ) -> Result<Self, StoreError> {
        let ProcessorPorts {
            registry,
            geofences,
            rejections,
            live,
            webhooks,
        } = ports;
        caches::load_registry(&*store, &registry).await?;
        let fences = caches::load_geofences(&*store, &geofences).await?;
        tracing::info!(
            geofences = fences,
            devices = registry.len(),
            "enrichment caches loaded"
        );
        let caches = CancellationToken::new();
        let mut tasks = JoinSet::new();
        {
            let (store, registry) = (Arc::clone(&store), Arc::clone(&registry));
            let reload = move || {
                let (store, registry) = (Arc::clone(&store), Arc::clone(&registry));
                async move { caches::load_registry(&*store, &registry).await }
            };
            tasks.spawn(caches::refresh(
                "registry",
                settings.registry_refresh,
                caches.clone(),
                reload,
            ));
        }
        if let Some(every) = settings.geofence_refresh {
            let (store, geofences) = (Arc::clone(&store), Arc::clone(&geofences));
            let reload = move || {
                let (store, geofences) = (Arc::clone(&store), Arc::clone(&geofences));
                async move { caches::load_geofences(&*store, &geofences).await }
            };
            tasks.spawn(caches::refresh("geofences", every, caches.clone(), reload));
        }
        let partitions = settings.partitions.max(1);
        let mut states: Vec<PartitionState> =
            (0..partitions).map(|_| PartitionState::default()).collect();
        let latest = store.all_latest().await?;
        let mut vehicles: HashMap<_, _> = store.all_vehicle_states().await?.into_iter().collect();
        let devices = latest.len().max(vehicles.len());
        live.seed(&latest);
        for position in &latest {
            let id = &position.report.device_id;
            let p = dispatch::partition_of(id, partitions);
            let restored = DeviceState::restore(Some(position), vehicles.remove(id));
            states[p].devices.insert(id.clone(), restored);
        }
        // A state without a latest position (its latest was filtered).
        for (id, vehicle) in vehicles {
            let p = dispatch::partition_of(&id, partitions);
            states[p]
                .devices
                .insert(id, DeviceState::restore(None, Some(vehicle)));
        }
        // No device could be heard while fleetd was down: count silence
        // (which ends trips) from now, so a restart does not split trips.
        let started_ms = fleetd_schemas::now_ms();
        for ds in states.iter_mut().flat_map(|s| s.devices.values_mut()) {
            ds.vehicle.last_seen_ms = ds.vehicle.last_seen_ms.max(started_ms);
        }
        let ports = worker::Ports {
            store: Arc::clone(&store),
            registry,
            geofences,
            rejections,
            live,
            webhooks,
        };
        tracing::info!(
            devices,
            partitions,
            window_ms = settings.window.as_millis() as u64,
            "processor state restored"
        );
        let mut workers = JoinSet::new();
        let mut senders = Vec::with_capacity(partitions);
        for (partition, state) in states.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(settings.partition_queue_chunks.max(1));
            senders.push(tx);
            workers.spawn(worker::run_partition(
                partition,
                rx,
                state,
                ports.clone(),
                settings.clone(),
            ));
        }
        workers.spawn(dispatch::run(input, senders));
        Ok(Self {
            workers,
            caches,
            cache_tasks: tasks,
            devices,
        })
    }

    /// How many devices' state was restored at start.
    pub fn restored_devices(&self) -> usize {
        self.devices
    }

    /// Waits until input has closed and every worker has flushed, then
    /// stops the cache refreshers.
    pub async fn join(mut self) {
        while let Some(result) = self.workers.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "processor task failed");
            }
        }
        self.caches.cancel();
        while let Some(result) = self.cache_tasks.join_next().await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cache refresh task failed");
            }
        }
    }
}
