//! [`MqttIngest`]: MQTT ingest as one stage, whichever the mode: the
//! embedded broker and the task reading its link, or the client of an
//! external broker.

use std::sync::Arc;

use fleetd_auth::Access;
use fleetd_schemas::{PositionReport, RejectionLog};
use rumqttd::local::LinkTx;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertTarget;
use crate::config::{IngestMode, IngestSettings};
use crate::decode::Decoder;
use crate::error::IngestError;
use crate::gate::MqttGate;
use crate::pipeline::Ingestor;
use crate::{EmbeddedBroker, MqttListeners, run_embedded, run_external};

/// Running MQTT ingest: positions go into the processor's queue until its
/// token is cancelled; then it drains what the broker already acknowledged
/// and stops.
pub struct MqttIngest {
    task: JoinHandle<Result<(), IngestError>>,
    /// The ingest link's sending half: dropping it would close the link.
    _link_tx: Option<LinkTx>,
    alerts: Option<AlertTarget>,
}

impl MqttIngest {
    /// Starts the embedded broker (waiting until it accepts connections) or
    /// connects to the external one, and the ingest task feeding `output`.
    /// Rejected input goes to `rejections`. `listeners` says which of the
    /// embedded broker's listeners open (unused in external mode).
    ///
    /// The embedded broker admits only what `access` verifies (see
    /// [`MqttGate`]); in external mode that broker authenticates devices.
    pub async fn start(
        settings: &IngestSettings,
        access: Arc<Access>,
        rejections: Arc<RejectionLog>,
        listeners: &MqttListeners,
        output: mpsc::Sender<Vec<PositionReport>>,
        cancel: CancellationToken,
    ) -> Result<Self, IngestError> {
        let ingestor = Ingestor::new(
            Decoder::new(settings.limits.clone()),
            Arc::clone(&rejections),
        );
        Ok(match &settings.mode {
            IngestMode::Embedded => {
                let gate = Arc::new(MqttGate::new(access, rejections, settings.rate));
                let broker =
                    EmbeddedBroker::start(&settings.broker, listeners, gate, cancel.child_token())
                        .await?;
                let (alerts_tx, alerts_rx) = broker.alerts_link;
                Self {
                    task: tokio::spawn(run_embedded(broker.link_rx, ingestor, output, cancel)),
                    _link_tx: Some(broker.link_tx),
                    alerts: Some(AlertTarget::Embedded(alerts_tx, alerts_rx)),
                }
            }
            IngestMode::External(external) => Self {
                task: tokio::spawn(run_external(external.clone(), ingestor, output, cancel)),
                _link_tx: None,
                alerts: Some(AlertTarget::External(external.clone())),
            },
        })
    }

    /// Where alerts go out: through this broker (once; `None` after).
    pub fn take_alert_target(&mut self) -> Option<AlertTarget> {
        self.alerts.take()
    }

    /// Waits until the ingest task has drained and stopped.
    pub async fn join(self) -> Result<(), IngestError> {
        self.task
            .await
            .map_err(|e| IngestError::Broker(format!("ingest task failed: {e}")))?
    }
}
