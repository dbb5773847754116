//! External-broker ingest: fleetd as an MQTT client of a broker cluster
//! (EMQX, Mosquitto, ...), sharing the device topics with other fleetd
//! instances through a shared subscription.
//!
//! Each publish goes through the same [`Ingestor::handle`] as the embedded
//! link's, and chunks go to the processor over the same bounded channel.
//! With a shared subscription (`$share/{group}/fleet/+/pos`) the broker
//! delivers each publish to one member of the group, so N fleetd instances
//! split the stream between them without duplicates.
//!
//! Delivery: subscriptions are QoS 1 and the client acknowledges a publish
//! when it has read it, not when it is stored; a crash loses what was
//! read but not yet written, as with the embedded broker.

use std::time::Duration;

use fleetd_schemas::PositionReport;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::pipeline::{Ingestor, MAX_CHUNK};

/// How long a partial chunk may wait for more publishes before it is sent:
/// short against the 1 s batch window, long enough to batch a burst.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Delay before reconnecting after the broker connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where and how to subscribe.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalBrokerSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker MQTT port.
    pub port: u16,
    /// MQTT client id; must differ between fleetd instances.
    pub client_id: String,
    /// Shared-subscription group: instances with the same group split the
    /// stream; an empty group subscribes plainly (every instance gets all).
    pub share_group: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Publishes the client may have in flight from the broker (QoS 1).
    pub max_inflight: u16,
    /// Largest packet accepted from the broker, bytes.
    pub max_packet_bytes: usize,
}

impl ExternalBrokerSettings {
    /// The topic filters subscribed, with the shared-subscription prefix.
    pub fn filters(&self) -> Vec<String> {
        let prefix = if self.share_group.is_empty() {
            String::new()
        } else {
            format!("$share/{}/", self.share_group)
        };
        ["fleet/+/pos", "fleet/+/pos/batch", "owntracks/+/+"]
            .iter()
            .map(|f| format!("{prefix}{f}"))
            .collect()
    }
}

/// Runs ingest from an external broker until `cancel`; dropping `output`
/// on return tells the processor to flush.
///
/// Connection failures are logged and counted
/// (`fleetd_external_broker_errors_total`) and the client reconnects and
/// subscribes again; they never end ingest. Backpressure: `output` is
/// bounded and sends are awaited, during which the client reads nothing
/// and the broker holds (or, past its limits, drops) the publishes.
pub async fn run_external(
    settings: ExternalBrokerSettings,
    mut ingestor: Ingestor,
    output: mpsc::Sender<Vec<PositionReport>>,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(settings.keep_alive);
    options.set_clean_session(true);
    options.set_inflight(settings.max_inflight.max(1));
    options.set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let filters = settings.filters();
    let mut chunk = Vec::with_capacity(MAX_CHUNK);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = flush.tick(), if !chunk.is_empty() => {
                if !send_chunk(&output, &mut chunk).await {
                    return Ok(());
                }
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session forgets subscriptions: subscribe on every
                // (re)connect. try_ never waits on the request channel, which
                // only this loop drains.
                for filter in &filters {
                    client
                        .try_subscribe(filter.as_str(), QoS::AtLeastOnce)
                        .map_err(|e| {
                            IngestError::Broker(format!("cannot subscribe {filter}: {e}"))
                        })?;
                }
                tracing::info!(
                    broker = %format_args!("{}:{}", settings.host, settings.port),
                    client_id = %settings.client_id,
                    filters = ?filters,
                    "subscribed to the external broker"
                );
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                ingestor.handle(publish.topic.as_bytes(), &publish.payload, &mut chunk);
                if chunk.len() >= MAX_CHUNK && !send_chunk(&output, &mut chunk).await {
                    return Ok(());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!("the external broker refused a subscription");
                }
            }
            Ok(_) => {}
            Err(err) => {
                metrics::counter!("fleetd_external_broker_errors_total").increment(1);
                tracing::warn!(error = %err, "external broker connection failed; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
    if !chunk.is_empty() {
        send_chunk(&output, &mut chunk).await;
    }
    tracing::info!("external ingest stopped");
    Ok(())
}

/// Sends the chunk, measuring time spent blocked by a full queue (the same
/// policy and metric as the embedded link's). Returns false when the
/// processor is gone.
async fn send_chunk(
    output: &mpsc::Sender<Vec<PositionReport>>,
    chunk: &mut Vec<PositionReport>,
) -> bool {
    let full = std::mem::replace(chunk, Vec::with_capacity(MAX_CHUNK));
    let started = std::time::Instant::now();
    let sent = match output.try_send(full) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(full)) => {
            let sent = output.send(full).await.is_ok();
            metrics::histogram!("fleetd_ingest_blocked_seconds")
                .record(started.elapsed().as_secs_f64());
            sent
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    };
    if !sent {
        tracing::warn!("processor queue closed; ingest stops");
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_share_or_not() {
        let mut s = ExternalBrokerSettings {
            host: "b".into(),
            port: 1883,
            client_id: "x".into(),
            share_group: "fleetd".into(),
            keep_alive: Duration::from_secs(30),
            max_inflight: 100,
            max_packet_bytes: 1 << 20,
        };
        assert_eq!(
            s.filters(),
            [
                "$share/fleetd/fleet/+/pos",
                "$share/fleetd/fleet/+/pos/batch",
                "$share/fleetd/owntracks/+/+"
            ]
        );
        s.share_group.clear();
        assert_eq!(s.filters()[0], "fleet/+/pos");
    }
}
