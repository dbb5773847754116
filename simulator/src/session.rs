//! One MQTT connection of one vehicle: a rumqttc client whose event loop is
//! polled in its own task, reporting writes and acknowledgements to the
//! vehicle's ledger.
//!
//! A session is never reconnected in place: when the connection drops, the
//! event loop (and every request still queued in it) is discarded and the
//! vehicle opens a new session. rumqttc would otherwise drop or re-send
//! queued publishes on reconnect in ways the ledger could not follow.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Qos;
use crate::ledger::{Ledger, SharedLedger};
use crate::phone::Outgoing as Message;
use crate::progress::Counters;

/// Requests a vehicle's own client may queue before `try_publish` refuses:
/// seconds of positions at ordinary rates, so a refusal means the
/// connection is stuck.
pub(crate) const REQUEST_CAPACITY: usize = 64;

/// Unacknowledged QoS 1 publishes per vehicle connection; small, since each
/// vehicle publishes a few per second at most and every slot costs memory
/// per client.
pub(crate) const MAX_INFLIGHT: u16 = 32;

/// How long a clean disconnect may take once the drain is over.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Where and how every vehicle connects.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) qos: Qos,
    pub(crate) keep_alive: Duration,
    pub(crate) connect_timeout: Duration,
    /// Unacknowledged QoS 1 publishes allowed per connection.
    pub(crate) inflight: u16,
    /// Requests the client queues before publishing waits or refuses.
    pub(crate) request_capacity: usize,
    /// What each connection logs in with.
    pub(crate) credentials: crate::Credentials,
}

/// State of a session's connection, published by its event-loop task.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    /// TCP and CONNECT in progress.
    Connecting,
    /// CONNACK received.
    Up,
    /// The connection failed or dropped, with the reason.
    Down(String),
    /// Closed on purpose (DISCONNECT sent, or the session was discarded).
    Closed,
}

/// A live MQTT connection of one vehicle.
pub(crate) struct Session {
    client: AsyncClient,
    qos: rumqttc::QoS,
    link: watch::Receiver<Link>,
    driver: JoinHandle<()>,
    kill: CancellationToken,
    /// Stops the event-loop task if the session is dropped without closing.
    _kill_on_drop: DropGuard,
}

impl Session {
    /// Connects as `device_id` and waits for the broker's CONNACK, at most
    /// `endpoint.connect_timeout`. The error is a human-readable reason.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        device_id: &str,
        ledger: Arc<SharedLedger>,
        counters: Arc<Counters>,
    ) -> Result<Self, String> {
        let mut options = MqttOptions::new(device_id, endpoint.host.clone(), endpoint.port);
        options
            .set_clean_session(true)
            .set_keep_alive(endpoint.keep_alive)
            .set_inflight(endpoint.inflight)
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        if let Some((username, password)) = endpoint.credentials.login(device_id) {
            options.set_credentials(username, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, endpoint.request_capacity);
        eventloop
            .network_options
            .set_connection_timeout(endpoint.connect_timeout.as_secs().max(1));
        let (link_tx, mut link) = watch::channel(Link::Connecting);
        let kill = CancellationToken::new();
        let driver = tokio::spawn(drive(eventloop, ledger, link_tx, kill.clone(), counters));

        let outcome = tokio::time::timeout(
            endpoint.connect_timeout,
            link.wait_for(|state| *state != Link::Connecting),
        )
        .await
        .map(|state| state.map(|s| s.clone()));
        let session = Self {
            client,
            qos: endpoint.qos.to_mqtt(),
            link,
            driver,
            _kill_on_drop: kill.clone().drop_guard(),
            kill,
        };
        match outcome {
            Ok(Ok(Link::Up)) => Ok(session),
            Ok(Ok(Link::Down(reason))) => Err(reason),
            Ok(Ok(_)) | Ok(Err(_)) => Err("connection task ended".to_owned()),
            Err(_) => Err(format!(
                "no connack within {} ms",
                endpoint.connect_timeout.as_millis()
            )),
        }
    }

    /// Hands `outgoing` to the client for `topic`, recording it in the
    /// ledger first; a full request queue counts it as failed at once.
    pub(crate) fn submit(&self, ledger: &SharedLedger, topic: &str, outgoing: Message) {
        let Message { payload, unit, .. } = outgoing;
        ledger.update(|l| {
            l.queued(unit);
            if self
                .client
                .try_publish(topic, self.qos, false, payload)
                .is_err()
            {
                l.refused();
            }
        });
    }

    /// Like [`Session::submit`], but waits while the client's request queue
    /// is full instead of counting the publish as failed: for a connection
    /// shared by many vehicles, whose queue fills in bursts.
    pub(crate) async fn submit_waiting(
        &self,
        ledger: &SharedLedger,
        topic: &str,
        outgoing: Message,
    ) {
        let Message { payload, unit, .. } = outgoing;
        ledger.update(|l| l.queued(unit));
        if self
            .client
            .publish(topic, self.qos, false, payload)
            .await
            .is_err()
        {
            ledger.update(Ledger::refused);
        }
    }

    /// Resolves when the connection drops, with the reason.
    pub(crate) async fn lost(&mut self) -> String {
        match self
            .link
            .wait_for(|state| matches!(state, Link::Down(_) | Link::Closed))
            .await
        {
            Ok(state) => match &*state {
                Link::Down(reason) => reason.clone(),
                _ => "connection closed".to_owned(),
            },
            Err(_) => "connection task ended".to_owned(),
        }
    }

    /// Ends the session cleanly: waits until every publish is written (and,
    /// for QoS 1, acknowledged) or `drain_deadline` passes, sends DISCONNECT,
    /// and counts whatever is still unconfirmed as failed.
    pub(crate) async fn close(mut self, ledger: &SharedLedger, drain_deadline: Instant) {
        tokio::select! {
            _ = ledger.settled() => {}
            _ = tokio::time::sleep_until(drain_deadline) => {
                let pending = ledger.read(|l| !l.is_settled());
                tracing::debug!(pending, "drain deadline passed");
            }
            _ = self.lost() => {}
        }
        // DISCONNECT queues behind any publish still waiting, so the broker
        // sees it last.
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(DISCONNECT_GRACE, self.lost()).await;
        }
        self.discard(ledger).await;
    }

    /// Drops the connection at once; whatever is unconfirmed counts as failed.
    pub(crate) async fn discard(self, ledger: &SharedLedger) {
        self.kill.cancel();
        let _ = self.driver.await;
        ledger.update(Ledger::abandon);
    }
}

/// The event-loop task: polls until the connection ends, feeding the ledger.
async fn drive(
    mut eventloop: EventLoop,
    ledger: Arc<SharedLedger>,
    link: watch::Sender<Link>,
    kill: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut up = false;
    let end = loop {
        let event = tokio::select! {
            // Dropping a half-done poll is fine here: the event loop is
            // thrown away with it.
            _ = kill.cancelled() => break Link::Closed,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) if !up => {
                up = true;
                counters.connection_up();
                link.send_replace(Link::Up);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => ledger.update(|l| l.acked(ack.pkid)),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => ledger.update(|l| l.written(pkid)),
            Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => ledger.update(Ledger::held_back),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break Link::Closed,
            Ok(_) => {}
            Err(err) => break Link::Down(err.to_string()),
        }
    };
    if up {
        counters.connection_down();
    }
    link.send_replace(end);
}
