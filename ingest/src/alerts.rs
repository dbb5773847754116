//! Alerts out over MQTT: `fleet/{device_id}/alerts` (the alert JSON) for
//! every alert, and an OwnTracks `_type: transition` on
//! `owntracks/{user}/{device}/event` when an OwnTracks device enters or
//! leaves a geofence.
//!
//! Delivery is at most once: through the embedded broker the publishes are
//! QoS 0 (rumqttd's local link publishes at QoS 0), through an external
//! broker QoS 1 to the broker. The stored alert history
//! (`GET /v1/alerts`) is the record; MQTT is the notification.

use std::time::Duration;

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

/// Publishes alerts through the embedded broker on a dedicated OS thread,
/// until `alerts` closes.
///
/// rumqttd's local link hands a publish to its router over a bounded
/// channel with a blocking send, which must not run on the async runtime.
/// `link_rx` is the link's receiving half: it is kept (never read; the link
/// subscribes to nothing) so the router keeps the link open.
pub fn spawn_embedded_publisher(
    mut link_tx: LinkTx,
    link_rx: LinkRx,
    mut alerts: mpsc::Receiver<Alert>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("mqtt-alerts".into())
        .spawn(move || {
            let _link_rx = link_rx;
            while let Some(alert) = alerts.blocking_recv() {
                for message in alert_messages(&alert) {
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
        })
}

/// Publishes alerts to an external broker (QoS 1) from its own client
/// connection (`{client_id}-alerts`), until `alerts` closes or `cancel`.
/// Connection failures are logged and the client reconnects; alerts
/// arriving meanwhile wait in the client's bounded request queue, and
/// `alerts` pushes back on the sender when that is full.
pub async fn run_external_publisher(
    settings: ExternalBrokerSettings,
    mut alerts: mpsc::Receiver<Alert>,
    cancel: CancellationToken,
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
    let poll_cancel = cancel.child_token();
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
    loop {
        let alert = tokio::select! {
            _ = cancel.cancelled() => break,
            alert = alerts.recv() => match alert {
                Some(alert) => alert,
                None => break,
            },
        };
        for message in alert_messages(&alert) {
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
