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
//! Delivery: subscriptions are QoS 1 on a persistent session
//! (`clean_session = false` under a client id that stays the same across
//! restarts), and a publish is acknowledged only once the journal holds it
//! durably (rumqttc's manual acknowledgements). After a crash the broker
//! redelivers what was not acknowledged; the processor stores a (device,
//! `ts_ms`) once, so a redelivery moves nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetd_journal::{Journal, Pending};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::pipeline::{Ingestor, MAX_CHUNK};

/// How long a partial chunk may wait for more publishes before it is
/// appended: short against the 1 s batch window, long enough to batch a
/// burst into one journal append.
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
    /// MQTT client id; must differ between fleetd instances and stay the
    /// same across restarts of one (its persistent session holds what was
    /// not acknowledged).
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

/// Publishes read but not yet acknowledged: the journal appends holding
/// them, in read order, and the connection they came on.
struct Unacked {
    publishes: Vec<Publish>,
    pending: Pending,
    connection: u64,
}

/// Runs ingest from an external broker until `cancel`.
///
/// Connection failures are logged and counted
/// (`fleetd_external_broker_errors_total`) and the client reconnects; they
/// never end ingest. Backpressure: appends wait for room in the journal,
/// during which the client reads nothing; the broker holds the publishes
/// (at most `max_inflight` unacknowledged ones are in flight to fleetd).
pub async fn run_external(
    settings: ExternalBrokerSettings,
    mut ingestor: Ingestor,
    journal: Journal,
    cancel: CancellationToken,
) -> Result<(), IngestError> {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(settings.keep_alive);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_inflight(settings.max_inflight.max(1));
    options.set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Which connection is current: a packet id belongs to the connection
    // it came on, so acknowledgements of an older one are not sent (the
    // broker redelivers those publishes on the new connection).
    let connection = Arc::new(AtomicU64::new(0));
    let (unacked_tx, unacked_rx) = mpsc::channel(usize::from(settings.max_inflight.max(1)));
    let acks = tokio::spawn(acknowledge(
        client.clone(),
        unacked_rx,
        Arc::clone(&connection),
    ));
    let filters = settings.filters();
    let mut chunk = Vec::with_capacity(MAX_CHUNK);
    let mut publishes = Vec::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = flush.tick(), if !publishes.is_empty() => {
                if !append(&journal, &unacked_tx, &mut chunk, &mut publishes, &connection).await {
                    break;
                }
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection.fetch_add(1, Ordering::Relaxed);
                // What was read on the old connection and not yet appended
                // is redelivered by the broker: forget it.
                chunk.clear();
                publishes.clear();
                if ack.session_present {
                    tracing::info!(client_id = %settings.client_id, "external broker kept the session");
                    continue;
                }
                // try_ never waits on the request channel, which only this
                // loop drains.
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
                // Every publish is acknowledged after the append that holds
                // the positions read before it: a rejected one with them.
                publishes.push(publish);
                if (chunk.len() >= MAX_CHUNK || publishes.len() >= MAX_CHUNK)
                    && !append(
                        &journal,
                        &unacked_tx,
                        &mut chunk,
                        &mut publishes,
                        &connection,
                    )
                    .await
                {
                    break;
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
    // Read but not appended: not acknowledged, the broker keeps them.
    drop(unacked_tx);
    // Let the acknowledgements of what the journal holds go out while the
    // event loop still runs, then disconnect.
    let mut acks = acks;
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                _ = &mut acks => break,
                event = eventloop.poll() => if event.is_err() { break },
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "external broker: acknowledgements still pending at shutdown; the broker will redeliver them"
        );
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    tracing::info!("external ingest stopped");
    Ok(())
}

/// Appends the chunk's positions to the journal (waiting for room) and
/// hands its publishes to the acknowledging task. Returns false when the
/// journal is closed.
async fn append(
    journal: &Journal,
    unacked: &mpsc::Sender<Unacked>,
    chunk: &mut Vec<fleetd_schemas::PositionReport>,
    publishes: &mut Vec<Publish>,
    connection: &AtomicU64,
) -> bool {
    let started = std::time::Instant::now();
    let positions = std::mem::replace(chunk, Vec::with_capacity(MAX_CHUNK));
    let pending = match journal.append(positions).await {
        Ok(pending) => pending,
        Err(_) => return false,
    };
    let waited = started.elapsed();
    if waited >= Duration::from_millis(1) {
        metrics::histogram!("fleetd_ingest_blocked_seconds").record(waited.as_secs_f64());
    }
    unacked
        .send(Unacked {
            publishes: std::mem::take(publishes),
            pending,
            connection: connection.load(Ordering::Relaxed),
        })
        .await
        .is_ok()
}

/// Acknowledges publishes in read order once the journal holds them.
async fn acknowledge(
    client: AsyncClient,
    mut unacked: mpsc::Receiver<Unacked>,
    connection: Arc<AtomicU64>,
) {
    while let Some(batch) = unacked.recv().await {
        if batch.pending.durable().await.is_err() {
            // The journal closed before writing them: not acknowledged.
            return;
        }
        if batch.connection != connection.load(Ordering::Relaxed) {
            metrics::counter!("fleetd_external_acks_skipped_total")
                .increment(batch.publishes.len() as u64);
            continue;
        }
        for publish in &batch.publishes {
            if client.ack(publish).await.is_err() {
                return;
            }
        }
    }
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
