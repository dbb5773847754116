//! [`MqttIngest`]: MQTT ingest as one stage, whichever the mode: the
//! embedded broker (whose gate appends to the journal), or the client of an
//! external broker.

use std::sync::Arc;

use fleetd_auth::Access;
use fleetd_journal::Journal;
use fleetd_schemas::RejectionLog;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertTarget;
use crate::config::{IngestMode, IngestSettings};
use crate::decode::Decoder;
use crate::error::IngestError;
use crate::gate::MqttGate;
use crate::pipeline::Ingestor;
use crate::{EmbeddedBroker, MqttListeners, run_external};

/// Running MQTT ingest: positions go into the journal until its token is
/// cancelled (the embedded broker then stops accepting connections; the
/// external client disconnects, leaving what it did not acknowledge with
/// the broker).
pub struct MqttIngest {
    /// The external broker client; the embedded broker has no ingest task
    /// (its connections append themselves).
    task: Option<JoinHandle<Result<(), IngestError>>>,
    alerts: Option<AlertTarget>,
}

impl MqttIngest {
    /// Starts the embedded broker (waiting until it accepts connections) or
    /// connects to the external one, appending positions to `journal`.
    /// Rejected input goes to `rejections`. `listeners` says which of the
    /// embedded broker's listeners open (unused in external mode).
    ///
    /// The embedded broker admits only what `access` verifies (see
    /// [`MqttGate`]); in external mode that broker authenticates devices.
    pub async fn start(
        settings: &IngestSettings,
        access: Arc<Access>,
        rejections: Arc<RejectionLog>,
        journal: Journal,
        listeners: &MqttListeners,
        cancel: CancellationToken,
    ) -> Result<Self, IngestError> {
        let decoder = Decoder::new(settings.limits.clone());
        Ok(match &settings.mode {
            IngestMode::Embedded => {
                let gate = Arc::new(MqttGate::new(
                    access,
                    rejections,
                    settings.rate,
                    decoder,
                    journal,
                ));
                let broker =
                    EmbeddedBroker::start(&settings.broker, listeners, gate, cancel.child_token())
                        .await?;
                let (alerts_tx, alerts_rx) = broker.alerts_link;
                Self {
                    task: None,
                    alerts: Some(AlertTarget::Embedded(alerts_tx, alerts_rx)),
                }
            }
            IngestMode::External(external) => {
                let ingestor = Ingestor::new(decoder, rejections);
                Self {
                    task: Some(tokio::spawn(run_external(
                        external.clone(),
                        ingestor,
                        journal,
                        cancel,
                    ))),
                    alerts: Some(AlertTarget::External(external.clone())),
                }
            }
        })
    }

    /// Where alerts go out: through this broker (once; `None` after).
    pub fn take_alert_target(&mut self) -> Option<AlertTarget> {
        self.alerts.take()
    }

    /// Waits until the external broker client has stopped.
    pub async fn join(self) -> Result<(), IngestError> {
        match self.task {
            Some(task) => task
                .await
                .map_err(|e| IngestError::Broker(format!("ingest task failed: {e}")))?,
            None => Ok(()),
        }
    }
}
