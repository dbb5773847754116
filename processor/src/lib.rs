//! The fleetd processor: micro-batches positions and turns them into stored,
//! enriched vehicle state.
//!
//! * [`Processor::start`] restores per-device state from the store, then runs
//!   a dispatcher and one partition worker per core. The dispatcher routes
//!   each position to the worker owning its device (hash of the device id),
//!   so per-device order holds without locks.
//! * Each worker gathers a micro-batch for [`ProcessorSettings::window`] (or
//!   until [`ProcessorSettings::max_batch`]), runs [`process_batch`] on the
//!   blocking pool (sort, dedupe, H3, derived speed/heading, latest), then
//!   writes one [`fleetd_store::WriteBatch`].
//! * Input is a bounded channel of position chunks; when it closes, workers
//!   flush what they hold and [`Processor::join`] returns.
//!
//! * After a batch is stored, the worker publishes its latest positions and
//!   alerts to the [`live::LiveHub`], which feeds the live streams.
//!
//! The enrichment functions ([`process_batch`]) do no I/O and read no clock.

mod batch;
mod dispatch;
pub mod kinematics;
pub mod live;
mod settings;
mod state;
mod worker;

use std::sync::Arc;

use fleetd_schemas::PositionReport;
use fleetd_store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use batch::{BatchOutcome, EnrichSettings, cells, process_batch};
pub use settings::ProcessorSettings;
pub use state::{DeviceState, PartitionState};

/// A running processor.
pub struct Processor {
    tasks: JoinSet<()>,
    devices: usize,
}

impl Processor {
    /// Restores state from `store` and starts the dispatcher and workers,
    /// reading position chunks from `input` until it closes.
    ///
    /// After each stored batch, workers publish its latest positions and
    /// alerts to `live` (see [`live::LiveHub::publish`]).
    pub async fn start(
        settings: ProcessorSettings,
        store: Arc<dyn Store>,
        input: mpsc::Receiver<Vec<PositionReport>>,
        live: live::LiveHub,
    ) -> Result<Self, StoreError> {
        let partitions = settings.partitions.max(1);
        let mut states: Vec<PartitionState> =
            (0..partitions).map(|_| PartitionState::default()).collect();
        let latest = store.all_latest().await?;
        let devices = latest.len();
        live.seed(&latest);
        for position in &latest {
            let p = dispatch::partition_of(&position.report.device_id, partitions);
            states[p].devices.insert(
                position.report.device_id.clone(),
                DeviceState::from(position),
            );
        }
        tracing::info!(
            devices,
            partitions,
            window_ms = settings.window.as_millis() as u64,
            "processor state restored"
        );
        let mut tasks = JoinSet::new();
        let mut senders = Vec::with_capacity(partitions);
        for (partition, state) in states.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(settings.partition_queue_chunks.max(1));
            senders.push(tx);
            tasks.spawn(worker::run_partition(
                partition,
                rx,
                state,
                Arc::clone(&store),
                settings.clone(),
                live.clone(),
            ));
        }
        tasks.spawn(dispatch::run(input, senders));
        Ok(Self { tasks, devices })
    }

    /// How many devices' state was restored at start.
    pub fn restored_devices(&self) -> usize {
        self.devices
    }

    /// Waits until input has closed and every worker has flushed.
    pub async fn join(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "processor task failed");
            }
        }
    }
}
