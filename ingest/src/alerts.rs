//! Alerts out over MQTT: `fleet/{device_id}/alerts` (the alert JSON) for
//! every alert, and an OwnTracks `_type: transition` on
//! `owntracks/{user}/{device}/event` when an OwnTracks device enters or
//! leaves a geofence.
//!
//! [`AlertPublisher`] follows the live hub's alerts (a
//! [`fleetd_live::Follower`], so a publisher that falls behind resumes from
//! the replay buffer and counts what it cannot get) and hands them, in
//! order, to the MQTT side over a bounded queue: it never slows a worker.
//!
//! Delivery is at most once: through the embedded broker the publishes are
//! QoS 0 (rumqttd's local link publishes at QoS 0), through an external
//! broker QoS 1 to the broker. The stored alert history
//! (`GET /v1/alerts`) is the record; MQTT is the notification.

use std::sync::Arc;
use std::time::Duration;

use fleetd_live::{Follower, KindSet, LiveEvent, LiveHub, SeqEvent, Step};
use fleetd_schemas::{Alert, AlertKind};
use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use rumqttd::local::{LinkRx, LinkTx};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::external::ExternalBrokerSettings;

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMessage {
    /// The topic.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// The messages an alert becomes: the alert JSON on
/// `fleet/{device_id}/alerts`, plus, for an OwnTracks device (id
/// `user/device`) entering or leaving a fence, an OwnTracks transition on
/// `owntracks/{user}/{device}/event`.
///
/// OwnTracks fields: `event` is `enter` or `leave`, `desc` the fence name
/// (else its id), `lat`/`lon`/`tst` the causing fix, `acc` its accuracy
/// when it had one, `t: "c"` (a region), and `wtst` (the waypoint's
/// creation time, which fleetd does not track) is the transition time.
pub fn alert_messages(alert: &Alert) -> Vec<AlertMessage> {
    let device = alert.device_id.as_str();
    let mut out = Vec::with_capacity(2);
    // Alert is plain data with string keys: serializing cannot fail.
    let payload = serde_json::to_vec(alert).unwrap_or_default();
    out.push(AlertMessage {
        topic: format!("fleet/{device}/alerts"),
        payload,
    });
    let event = match alert.kind {
        AlertKind::Enter => "enter",
        AlertKind::Exit => "leave",
        _ => return out,
    };
    if let (Some((user, dev)), Some(fence)) = (device.split_once('/'), &alert.geofence_id) {
        let tst = alert.ts_ms.div_euclid(1000);
        let mut transition = json!({
            "_type": "transition",
            "event": event,
            "desc": alert.detail.geofence_name.as_deref().unwrap_or(fence.as_str()),
            "lat": alert.lat,
            "lon": alert.lon,
            "tst": tst,
            "wtst": tst,
            "t": "c",
        });
        if let Some(acc) = alert.detail.accuracy_m {
            transition["acc"] = json!(acc.round() as i64);
        }
        out.push(AlertMessage {
            topic: format!("owntracks/{user}/{dev}/event"),
            payload: transition.to_string().into_bytes(),
        });
    }
    out
}

fn count(result: &'static str, n: usize) {
    metrics::counter!("fleetd_alerts_published_total", "result" => result).increment(n as u64);
}

/// Alerts on their way from the hub to the MQTT side. Alerts are rare next
/// to positions; the bound only matters if the broker stalls, and then the
/// follower waits (and resumes from the hub's replay buffer if it falls
/// behind the broadcast).
const ALERT_QUEUE: usize = 4096;

/// Where alerts are published.
pub enum AlertTarget {
    /// The embedded broker, through a local link of its own (see
    /// [`crate::EmbeddedBroker::alerts_link`]).
    Embedded(LinkTx, LinkRx),
    /// An external broker, from a client connection of its own.
    External(ExternalBrokerSettings),
}

/// Publishes the hub's alerts over MQTT, from the moment it is started
/// until shutdown.
pub struct AlertPublisher {
    follower: tokio::task::JoinHandle<()>,
    sender: Sender,
}

/// The MQTT end: a thread beside the embedded broker's blocking link, or a
/// task with its own client for an external broker.
enum Sender {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<Result<(), IngestError>>),
}

impl AlertPublisher {
    /// Subscribes to the hub's alerts now, so that no alert published after
    /// this call goes unseen, and starts publishing them to `target`. When
    /// `shutdown` is cancelled it publishes what the hub has already sent
    /// it and stops; cancel it once no more alerts can be raised (after the
    /// processor has flushed), then [`AlertPublisher::join`].
    pub fn start(
        hub: &LiveHub,
        target: AlertTarget,
        shutdown: CancellationToken,
    ) -> Result<Self, IngestError> {
        let follower = Follower::new(hub, None, ALERT_KINDS);
        let (tx, rx) = mpsc::channel(ALERT_QUEUE);
        let sender = match target {
            AlertTarget::Embedded(link_tx, link_rx) => {
                Sender::Thread(spawn_embedded_publisher(link_tx, link_rx, rx)?)
            }
            AlertTarget::External(settings) => {
                Sender::Task(tokio::spawn(run_external_publisher(settings, rx)))
            }
        };
        let follower = tokio::spawn(follow(follower, tx, shutdown));
        Ok(Self { follower, sender })
    }

    /// Waits until every alert handed over has been published (or failed).
    pub async fn join(self) {
        if let Err(e) = self.follower.await {
            tracing::warn!(error = %e, "alert follower failed");
        }
        match self.sender {
            Sender::Thread(thread) => {
                if tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_or(true, |joined| joined.is_err())
                {
                    tracing::warn!("alert publisher thread failed");
                }
            }
            Sender::Task(task) => match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "alert publisher failed"),
                Err(e) => tracing::warn!(error = %e, "alert publisher task failed"),
            },
        }
    }
}

/// What the alert follower reads of the hub.
const ALERT_KINDS: KindSet = KindSet {
    positions: false,
    alerts: true,
};

/// Hands the hub's alerts to the MQTT side in order. Alerts it can no
/// longer get are counted (`fleetd_alerts_published_total{result="missed"}`)
/// and logged: they stay in the stored alert history. On `shutdown` it
/// hands over what the hub has already sent, then returns, which closes the
/// queue and so ends the MQTT side once that has published the rest.
async fn follow(
    mut follower: Follower,
    tx: mpsc::Sender<Arc<SeqEvent>>,
    shutdown: CancellationToken,
) {
    loop {
        let step = tokio::select! {
            _ = shutdown.cancelled() => break,
            step = follower.next() => step,
        };
        if !hand_over(step, &tx).await {
            return;
        }
    }
    while let Some(step) = follower.try_next() {
        if !hand_over(step, &tx).await {
            return;
        }
    }
}

/// Reports a step's gaps and queues its alerts; `false` when the MQTT side
/// is gone.
async fn hand_over(step: Step, tx: &mpsc::Sender<Arc<SeqEvent>>) -> bool {
    for gap in &step.gaps {
        let missed = gap.to_seq.saturating_sub(gap.from_seq) + 1;
        count("missed", missed as usize);
        tracing::warn!(
            from_seq = gap.from_seq,
            to_seq = gap.to_seq,
            reason = gap.reason.code(),
            "alert publisher fell behind; alerts not published over MQTT"
        );
    }
    for event in step.events() {
        if matches!(event.event, LiveEvent::Alert(_)) && tx.send(Arc::clone(event)).await.is_err() {
            return false;
        }
    }
    true
}

/// The alert of a queued event (the follower queues alerts only).
fn alert_of(event: &SeqEvent) -> Option<&Alert> {
    match &event.event {
        LiveEvent::Alert(alert) => Some(alert),
        LiveEvent::Position(_) => None,
    }
}

/// Publishes alerts through the embedded broker on a dedicated OS thread,
/// until `alerts` closes.
///
/// rumqttd's local link hands a publish to its router over a bounded
/// channel with a blocking send, which must not run on the async runtime.
/// `link_rx` is the link's receiving half: it is kept (never read; the link
/// subscribes to nothing) so the router keeps the link open.
fn spawn_embedded_publisher(
    mut link_tx: LinkTx,
    link_rx: LinkRx,
    mut alerts: mpsc::Receiver<Arc<SeqEvent>>,
) -> Result<std::thread::JoinHandle<()>, IngestError> {
    let thread = std::thread::Builder::new()
        .name("mqtt-alerts".into())
        .spawn(move || {
            let _link_rx = link_rx;
            while let Some(event) = alerts.blocking_recv() {
                let Some(alert) = alert_of(&event) else { continue };
                for message in alert_messages(alert) {
                    match link_tx.publish(message.topic, message.payload) {
                        Ok(_) => count("published", 1),
                        Err(e) => {
                            count("failed", 1);
                            tracing::warn!(error = %e, "cannot publish an alert to the embedded broker");
                        }
                    }
                }
            }
            tracing::debug!("alert publisher stopped");
        })?;
    Ok(thread)
}

/// Publishes alerts to an external broker (QoS 1) from its own client
/// connection (`{client_id}-alerts`), until `alerts` closes.
/// Connection failures are logged and the client reconnects; alerts
/// arriving meanwhile wait in the client's bounded request queue, and
/// `alerts` pushes back on the sender when that is full.
async fn run_external_publisher(
    settings: ExternalBrokerSettings,
    mut alerts: mpsc::Receiver<Arc<SeqEvent>>,
) -> Result<(), IngestError> {
    let mut options = MqttOptions::new(
        format!("{}-alerts", settings.client_id),
        &settings.host,
        settings.port,
    );
    options.set_keep_alive(settings.keep_alive);
    options.set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    // The event loop must be polled for publishes to leave; it runs beside
    // the loop that feeds it.
    let poll_cancel = CancellationToken::new();
    let poller = tokio::spawn({
        let cancel = poll_cancel.clone();
        async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(_)) | Ok(Event::Outgoing(_)) => {}
                        Err(e) => {
                            metrics::counter!("fleetd_external_broker_errors_total").increment(1);
                            tracing::warn!(error = %e, "alert publisher connection failed; reconnecting");
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }
            }
        }
    });
    while let Some(event) = alerts.recv().await {
        let Some(alert) = alert_of(&event) else {
            continue;
        };
        for message in alert_messages(alert) {
            match client
                .publish(message.topic, QoS::AtLeastOnce, false, message.payload)
                .await
            {
                Ok(()) => count("published", 1),
                Err(e) => {
                    count("failed", 1);
                    tracing::warn!(error = %e, "cannot queue an alert for the external broker");
                }
            }
        }
    }
    // Give queued publishes a moment to leave before disconnecting.
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    poll_cancel.cancel();
    let _ = poller.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleetd_schemas::{AlertDetail, DeviceId, GeofenceId};

    use super::*;

    fn alert(kind: AlertKind, device: &str, accuracy_m: Option<f32>) -> Alert {
        Alert::new(
            kind,
            DeviceId::parse(device).expect("id"),
            Some(GeofenceId::parse("depot").expect("id")),
            1_700_000_123_456,
            (52.5, 13.4),
            AlertDetail {
                geofence_name: Some("Depot".into()),
                accuracy_m,
                ..AlertDetail::default()
            },
        )
    }

    #[test]
    fn fleet_devices_get_the_alert_json() {
        let a = alert(AlertKind::Enter, "truck-1", None);
        let messages = alert_messages(&a);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].topic, "fleet/truck-1/alerts");
        let back: Alert = serde_json::from_slice(&messages[0].payload).expect("alert json");
        assert_eq!(back, a);
    }

    #[test]
    fn owntracks_devices_also_get_a_transition() {
        let messages = alert_messages(&alert(AlertKind::Exit, "alice/phone", Some(12.4)));
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].topic, "owntracks/alice/phone/event");
        let t: serde_json::Value = serde_json::from_slice(&messages[1].payload).expect("json");
        assert_eq!(t["_type"], "transition");
        assert_eq!(t["event"], "leave");
        assert_eq!(t["desc"], "Depot");
        assert_eq!(t["tst"], 1_700_000_123);
        assert_eq!(t["acc"], 12);
        assert_eq!(t["lat"], 52.5);
        // Dwell and overspeed are not OwnTracks transitions.
        let dwell = alert_messages(&alert(AlertKind::Dwell, "alice/phone", None));
        assert_eq!(dwell.len(), 1);
    }
}
