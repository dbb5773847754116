//! Serving connections on streams the embedder accepted itself, and the
//! per-connection driver shared with rumqttd's own listeners.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flume::Sender;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, field, warn, Instrument};
use uuid::Uuid;

use crate::hooks::{ConnectRefusal, ConnectionHooks, ConnectionMeta, DisconnectReason};
use crate::link::network::{self, Network, N};
use crate::link::remote::{self, mqtt_connect, RemoteLink};
use crate::protocol::v4::V4;
use crate::protocol::v5::V5;
use crate::protocol::{Packet, Protocol};
use crate::router::Event;
use crate::{ConnectionId, ConnectionSettings};

/// Pending will messages of disconnected clients, by client id. Shared by
/// all connections of one listener or acceptor.
pub(crate) type WillHandlers = Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>;

#[derive(PartialEq)]
pub(crate) enum AwaitingWill {
    Cancel,
    Fire,
}

/// MQTT protocol version a [`StreamAcceptor`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why [`StreamAcceptor::serve`] ended with an error. A client that
/// disconnects normally (DISCONNECT packet, or closing/resetting the
/// transport after CONNACK) is not an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectionError {
    /// No complete CONNECT packet within `connection_timeout_ms`.
    ConnectTimeout,
    /// The first packet was not a valid CONNECT (or had an empty client id
    /// without clean session, or an unsupported protocol level).
    InvalidConnect(String),
    /// The hooks (or the configured authentication) refused the client; the
    /// CONNACK with this code was sent.
    Refused(ConnectRefusal),
    /// The router could not take the connection (e.g. `max_connections`
    /// reached); CONNACK "server unavailable" was sent.
    RouterUnavailable,
    /// The transport failed during the handshake.
    Io(io::Error),
    /// The session ended for a reason other than a normal client disconnect.
    Session(DisconnectReason),
}

impl ConnectionError {
    /// True when the error is the client's doing or a routine end (refused
    /// credentials, keep-alive timeout, bad packets, closed transport, a
    /// takeover by a newer connection with the same client id), as opposed
    /// to the broker being unable to take the connection.
    pub fn is_client_side(&self) -> bool {
        !matches!(self, ConnectionError::RouterUnavailable)
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::ConnectTimeout => f.write_str("no CONNECT within the timeout"),
            ConnectionError::InvalidConnect(e) => write!(f, "invalid CONNECT: {e}"),
            ConnectionError::Refused(r) => write!(f, "connection refused: {r:?}"),
            ConnectionError::RouterUnavailable => f.write_str("router refused the connection"),
            ConnectionError::Io(e) => write!(f, "I/O error: {e}"),
            ConnectionError::Session(r) => write!(f, "session ended: {r:?}"),
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Maps a CONNECT-phase error of the link.
fn handshake_error(e: remote::Error) -> ConnectionError {
    match e {
        remote::Error::Timeout(_) => ConnectionError::ConnectTimeout,
        remote::Error::Refused(r) => ConnectionError::Refused(r),
        remote::Error::InvalidAuth => ConnectionError::Refused(ConnectRefusal::BadUserNamePassword),
        remote::Error::Network(network::Error::Io(e)) | remote::Error::Io(e) => {
            ConnectionError::Io(e)
        }
        remote::Error::Network(network::Error::KeepAlive(_)) => ConnectionError::ConnectTimeout,
        remote::Error::Link(_) | remote::Error::Send(_) | remote::Error::Recv(_) => {
            ConnectionError::RouterUnavailable
        }
        e => ConnectionError::InvalidConnect(e.to_string()),
    }
}

/// Hands streams that the embedder accepted (plain TCP, its own TLS, a
/// Unix socket, an in-memory duplex, ...) to the broker, one MQTT connection
/// per stream. Obtained from [`Broker::acceptor`](crate::Broker::acceptor);
/// cheap to clone; usable from any Tokio runtime, before or after
/// [`Broker::start`](crate::Broker::start).
#[derive(Clone)]
pub struct StreamAcceptor {
    settings: Arc<ConnectionSettings>,
    hooks: Option<Arc<dyn ConnectionHooks>>,
    router_tx: Sender<(ConnectionId, Event)>,
    version: MqttVersion,
    will_handlers: WillHandlers,
}

impl fmt::Debug for StreamAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamAcceptor")
            .field("settings", &self.settings)
            .field("hooks", &self.hooks.is_some())
            .field("version", &self.version)
            .finish()
    }
}

impl StreamAcceptor {
    pub(crate) fn new(
        settings: ConnectionSettings,
        router_tx: Sender<(ConnectionId, Event)>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            hooks: None,
            router_tx,
            version: MqttVersion::V4,
            will_handlers: Arc::default(),
        }
    }

    /// Sets the connection hooks: authentication, publish and subscribe
    /// decisions, close signal (see [`crate::hooks`]). Without hooks the
    /// connection behaves as with rumqttd's own listeners.
    pub fn with_hooks(mut self, hooks: Arc<dyn ConnectionHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Sets the protocol version spoken on the streams (default MQTT 3.1.1).
    pub fn with_version(mut self, version: MqttVersion) -> Self {
        self.version = version;
        self
    }

    /// Runs one MQTT connection on `stream` to its end: reads CONNECT (within
    /// `connection_timeout_ms`), authenticates (hooks or configured auth),
    /// registers with the router, then serves the session until the client
    /// or the broker ends it. Returns `Ok(())` when the client disconnected
    /// (DISCONNECT, or it closed the transport).
    ///
    /// Spawn one task per accepted stream; the future is `Send`.
    pub async fn serve<S>(&self, stream: S, meta: ConnectionMeta) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let stream: Box<dyn N> = Box::new(stream);
        let span = tracing::error_span!(
            "remote_link",
            peer = ?meta.peer_addr,
            client_id = field::Empty,
            connection_id = field::Empty,
        );
        let conn = ConnectionTask {
            settings: self.settings.clone(),
            hooks: self.hooks.clone(),
            tenant_id: None,
            router_tx: self.router_tx.clone(),
            will_handlers: self.will_handlers.clone(),
            meta,
        };
        match self.version {
            MqttVersion::V4 => conn.run(stream, V4).instrument(span).await,
            MqttVersion::V5 => conn.run(stream, V5).instrument(span).await,
        }
    }
}

/// Everything one connection needs, for both the acceptor and rumqttd's
/// own listeners.
pub(crate) struct ConnectionTask {
    pub(crate) settings: Arc<ConnectionSettings>,
    pub(crate) hooks: Option<Arc<dyn ConnectionHooks>>,
    pub(crate) tenant_id: Option<String>,
    pub(crate) router_tx: Sender<(ConnectionId, Event)>,
    pub(crate) will_handlers: WillHandlers,
    pub(crate) meta: ConnectionMeta,
}

impl ConnectionTask {
    /// A new network connection waits for its MQTT CONNECT packet, within
    /// the configured connection timeout (so that clients that only open
    /// sockets cannot hold connection slots), then runs the session.
    pub(crate) async fn run<P: Protocol>(
        self,
        stream: Box<dyn N>,
        protocol: P,
    ) -> Result<(), ConnectionError> {
        let ConnectionTask {
            settings: config,
            hooks,
            tenant_id,
            router_tx,
            will_handlers,
            meta,
        } = self;
        let mut network = Network::new(
            stream,
            config.max_payload_size,
            config.max_inflight_count,
            protocol,
        );

        let dynamic_filters = config.dynamic_filters;
        let max_pending_acks = config.max_inflight_count;

        let (connect_packet, session) =
            match mqtt_connect(config, hooks.as_ref(), meta, &mut network).await {
                Ok(p) => p,
                Err(e) => {
                    // A client that never sends CONNECT, sends garbage or
                    // fails authentication is routine, not a broker fault.
                    debug!(error = %e, "MQTT connect failed");
                    return Err(handshake_error(e));
                }
            };

        let (mut client_id, clean_session) = match &connect_packet {
            Packet::Connect(connect, _, _, _, _) => (connect.client_id.clone(), connect.clean_session),
            packet => {
                return Err(ConnectionError::InvalidConnect(format!(
                    "not a CONNECT: {packet:?}"
                )))
            }
        };

        let mut assigned_client_id = None;
        if client_id.is_empty() {
            let uuid = Uuid::new_v4().simple();
            client_id = format!("rumqtt-{uuid}");
            assigned_client_id = Some(client_id.clone());
        }

        if let Some(tenant_id) = &tenant_id {
            // client_id is set to "tenant_id.client_id"
            // this is to make sure we are consistent,
            // as Connection uses this format of client_id
            client_id = format!("{tenant_id}.{client_id}");
        }

        let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
        {
            let mut handlers = will_handlers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sender) = handlers.remove(&client_id) {
                let awaiting_will = if clean_session {
                    AwaitingWill::Fire
                } else {
                    AwaitingWill::Cancel
                };
                // The previous connection may be gone already (upstream
                // unwrapped this and could panic on that race).
                sender.try_send(awaiting_will).ok();
            }
            handlers.insert(client_id.clone(), will_tx.clone());
        }

        // Start the link
        let mut link = match RemoteLink::new(
            router_tx.clone(),
            tenant_id.clone(),
            network,
            connect_packet,
            dynamic_filters,
            assigned_client_id,
            session,
            max_pending_acks,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "router refused the connection");
                remove_will_handler(&will_handlers, &client_id, &will_tx);
                return Err(ConnectionError::RouterUnavailable);
            }
        };

        let connection_id = link.connection_id;
        let will_delay_interval = link.will_delay_interval;

        let result = link.start().await;
        let client_disconnected = link.client_disconnected;
        let reason = match &result {
            Ok(()) => DisconnectReason::NetworkClosed,
            Err(e) => e.disconnect_reason(client_disconnected),
        };
        match (&result, reason) {
            (Err(e), DisconnectReason::ClosedByBroker) => {
                debug!(error = %e, "router dropped the connection");
            }
            (Err(e), _) => debug!(error = %e, ?reason, "disconnected"),
            (Ok(()), _) => debug!("connection stopped"),
        }

        // Tell the router, unless it removed the connection itself (client
        // DISCONNECT, takeover by a new connection with the same client id,
        // router-side error): its id may already belong to another
        // connection then.
        if !client_disconnected && !link.router_dropped() {
            router_tx.send_async((connection_id, Event::Disconnect)).await.ok();
        }

        // this is important to stop the connection
        drop(link);

        let will = WillWait {
            will_rx,
            will_tx,
            will_handlers,
            client_id,
            tenant_id,
            router_tx,
            connection_id,
            will_delay_interval,
        };
        if will_delay_interval == 0 {
            will.run().await;
        } else {
            // Do not hold the caller's connection task for the will delay.
            tokio::spawn(will.run());
        }

        match reason {
            DisconnectReason::ClientDisconnect | DisconnectReason::NetworkClosed => Ok(()),
            reason => Err(ConnectionError::Session(reason)),
        }
    }
}

fn remove_will_handler(handlers: &WillHandlers, client_id: &str, ours: &Sender<AwaitingWill>) {
    let mut handlers = handlers.lock().unwrap_or_else(|e| e.into_inner());
    // Only remove our own entry: a newer connection with the same client id
    // may have replaced it.
    if handlers.get(client_id).is_some_and(|s| s.same_channel(ours)) {
        handlers.remove(client_id);
    }
}

/// Publishing a disconnected client's will after its delay, unless a new
/// connection with the same client id cancels it.
struct WillWait {
    will_rx: flume::Receiver<AwaitingWill>,
    will_tx: Sender<AwaitingWill>,
    will_handlers: WillHandlers,
    client_id: String,
    tenant_id: Option<String>,
    router_tx: Sender<(ConnectionId, Event)>,
    connection_id: ConnectionId,
    will_delay_interval: u32,
}

impl WillWait {
    async fn run(self) {
        let publish_will = match tokio::time::timeout(
            Duration::from_secs(self.will_delay_interval as u64),
            self.will_rx.recv_async(),
        )
        .await
        {
            Ok(w) => w.is_ok_and(|k| k == AwaitingWill::Fire),
            Err(_) => {
                // no need to keep the sender after timeout
                remove_will_handler(&self.will_handlers, &self.client_id, &self.will_tx);
                // as will delay interval has passed, publish the will message
                true
            }
        };

        if publish_will {
            let message = Event::PublishWill((self.client_id, self.tenant_id));
            // The connection id is not used for wills by the router.
            if self
                .router_tx
                .send_async((self.connection_id, message))
                .await
                .is_err()
            {
                warn!("router gone, will message not published");
            }
        }
    }
}
