//! Per-connection hooks: authentication, topic ACL and "acknowledged means
//! stored" for embedders.
//!
//! An embedder implements [`ConnectionHooks`] and hands it to the broker with
//! [`StreamAcceptor::with_hooks`](crate::StreamAcceptor::with_hooks) (streams
//! the embedder accepts itself) or [`Broker::set_connection_hooks`]
//! (rumqttd's own config-driven listeners).
//!
//! Every hook is called from the connection's own task (the remote link),
//! never from the router thread, so a slow hook only slows its own
//! connection. Hooks must not block: they return futures.
//!
//! Life of a connection with hooks set:
//!
//! 1. The CONNECT packet is read (within `connection_timeout_ms`).
//! 2. [`ConnectionHooks::on_connect`] decides. A [`ConnectRefusal`] is sent as
//!    a CONNACK with the matching return code and the connection is closed.
//!    When hooks are set, the static `auth` table and the `external_auth`
//!    handler of [`ConnectionSettings`](crate::ConnectionSettings) are not
//!    consulted.
//! 3. The accepted connection is registered with the router (CONNACK 0).
//! 4. Each PUBLISH goes through [`SessionHooks::on_publish`], each SUBSCRIBE
//!    filter through [`SessionHooks::on_subscribe`]. [`SessionHooks::closed`]
//!    is polled for the life of the connection: when it resolves, the broker
//!    closes the connection.
//! 5. When the connection ends, [`SessionHooks::on_disconnect`] is called
//!    once, then the session is dropped.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rumqttd::hooks::BoxFuture;
//! use rumqttd::{AckOutcome, Broker, Config, ConnectInfo, ConnectRefusal, ConnectionHooks,
//!     ConnectionMeta, ConnectionSettings, IncomingPublish, PublishVerdict, SessionHooks};
//!
//! struct Auth; // checks credentials, returns one `Device` per connection
//! struct Device { id: String }
//!
//! impl ConnectionHooks for Auth {
//!     fn on_connect<'a>(&'a self, info: &'a ConnectInfo)
//!         -> BoxFuture<'a, Result<Box<dyn SessionHooks>, ConnectRefusal>> {
//!         Box::pin(async move {
//!             match info.password.as_deref() {
//!                 Some("secret") => Ok(Box::new(Device { id: info.client_id.clone() }) as _),
//!                 _ => Err(ConnectRefusal::BadUserNamePassword),
//!             }
//!         })
//!     }
//! }
//!
//! impl SessionHooks for Device {
//!     fn on_publish(&mut self, p: &IncomingPublish) -> BoxFuture<'static, PublishVerdict> {
//!         if p.topic() != format!("fleet/{}/pos", self.id) {
//!             return Box::pin(async { PublishVerdict::Drop });
//!         }
//!         let payload = p.payload().clone(); // no copy
//!         Box::pin(async move {
//!             // Queue `payload` for the durable log; ack once it is written.
//!             let written = async move { let _ = payload; AckOutcome::Ack };
//!             PublishVerdict::Consume(Some(Box::pin(written)))
//!         })
//!     }
//!     fn on_subscribe(&mut self, filter: &str, _qos: rumqttd::protocol::QoS) -> bool {
//!         filter == format!("fleet/{}/cmd", self.id)
//!     }
//! }
//!
//! # async fn run(config: Config, settings: ConnectionSettings, listener: tokio::net::TcpListener) {
//! // `config.router` as today; no [v4] listener needed, no `start()` needed.
//! let broker = Broker::new(config);
//! let acceptor = broker.acceptor(settings).with_hooks(Arc::new(Auth));
//! loop {
//!     let Ok((stream, peer)) = listener.accept().await else { continue };
//!     let acceptor = acceptor.clone();
//!     tokio::spawn(async move {
//!         let _ = acceptor.serve(stream, ConnectionMeta::new(Some(peer))).await;
//!     });
//! }
//! # }
//! ```
//!
//! [`Broker::set_connection_hooks`]: crate::Broker::set_connection_hooks

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;

use crate::protocol::QoS;

/// A boxed, `Send` future, as returned by the hooks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves when a consumed publish may be acknowledged (or the connection
/// must be closed instead). See [`PublishVerdict::Consume`].
pub type AckFuture = BoxFuture<'static, AckOutcome>;

/// What the embedder knows about a connection before MQTT starts on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionMeta {
    /// Address of the remote peer, if the transport has one.
    pub peer_addr: Option<SocketAddr>,
    /// Identity from the client's TLS certificate, if the transport is TLS
    /// with client authentication and the embedder extracted it.
    pub tls_identity: Option<TlsIdentity>,
}

impl ConnectionMeta {
    /// Meta data of a connection from `peer_addr`, without TLS identity.
    pub fn new(peer_addr: Option<SocketAddr>) -> Self {
        Self {
            peer_addr,
            tls_identity: None,
        }
    }

    /// Sets the TLS client identity.
    pub fn with_tls_identity(mut self, identity: TlsIdentity) -> Self {
        self.tls_identity = Some(identity);
        self
    }
}

/// Identity taken from a verified TLS client certificate.
///
/// rumqttd does not fill this for streams handed to
/// [`StreamAcceptor::serve`](crate::StreamAcceptor::serve): the embedder that
/// ran the TLS handshake does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsIdentity {
    /// The subject's common name (CN), if present.
    pub common_name: Option<String>,
    /// Subject alternative names of type DNS.
    pub dns_names: Vec<String>,
    /// Subject alternative names of type URI.
    pub uri_names: Vec<String>,
}

impl TlsIdentity {
    /// An identity with the given common name and SAN entries.
    pub fn new(common_name: Option<String>, dns_names: Vec<String>, uri_names: Vec<String>) -> Self {
        Self {
            common_name,
            dns_names,
            uri_names,
        }
    }
}

/// The CONNECT packet as seen by [`ConnectionHooks::on_connect`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// Client identifier as sent by the client (may be empty; the broker
    /// then assigns one after the hook accepted the connection).
    pub client_id: String,
    /// User name, if the client sent one.
    pub username: Option<String>,
    /// Password, if the client sent one.
    pub password: Option<String>,
    /// Keep-alive interval in seconds; 0 means keep-alive is off.
    pub keep_alive: u16,
    /// Clean session (v4) / clean start (v5) flag.
    pub clean_session: bool,
    /// MQTT protocol level: 4 for MQTT 3.1.1, 5 for MQTT 5.
    pub protocol_level: u8,
    /// What the embedder (or rumqttd's listener) knows about the transport.
    pub meta: ConnectionMeta,
}

impl fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("protocol_level", &self.protocol_level)
            .field("meta", &self.meta)
            .finish()
    }
}

/// Why [`ConnectionHooks::on_connect`] refuses a connection. Sent to the
/// client as the CONNACK return code, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectRefusal {
    /// v4 return code 5 "not authorized" (v5 reason 0x87).
    NotAuthorized,
    /// v4 return code 4 "bad user name or password" (v5 reason 0x86).
    BadUserNamePassword,
    /// v4 return code 3 "server unavailable" (v5 reason 0x88): for
    /// transient conditions such as an unreachable credential store.
    ServerUnavailable,
}

/// A PUBLISH received from the client, as seen by [`SessionHooks::on_publish`].
///
/// Topic and payload are reference-counted [`Bytes`] into the read buffer:
/// cloning them does not copy.
#[derive(Debug, Clone)]
pub struct IncomingPublish {
    topic: Bytes,
    payload: Bytes,
    qos: QoS,
    pkid: u16,
    retain: bool,
    dup: bool,
}

impl IncomingPublish {
    /// The caller guarantees that `topic` is valid UTF-8.
    pub(crate) fn new(
        topic: Bytes,
        payload: Bytes,
        qos: QoS,
        pkid: u16,
        retain: bool,
        dup: bool,
    ) -> Self {
        Self {
            topic,
            payload,
            qos,
            pkid,
            retain,
            dup,
        }
    }

    /// Topic name. Always valid UTF-8: a PUBLISH with a non-UTF-8 topic
    /// closes the connection before any hook sees it. With MQTT 5 topic
    /// aliases, this is the resolved topic.
    pub fn topic(&self) -> &str {
        // Checked in `new`'s caller; never panics and never copies.
        std::str::from_utf8(&self.topic).unwrap_or_default()
    }

    /// Topic name as bytes (cheap to clone and keep).
    pub fn topic_bytes(&self) -> &Bytes {
        &self.topic
    }

    /// Application payload (cheap to clone and keep).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Quality of service the client published with.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// Packet identifier (0 for QoS 0).
    pub fn pkid(&self) -> u16 {
        self.pkid
    }

    /// Retain flag.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// DUP flag: the client says this may be a redelivery.
    pub fn dup(&self) -> bool {
        self.dup
    }
}

/// What to do with a PUBLISH; returned by [`SessionHooks::on_publish`].
pub enum PublishVerdict {
    /// Hand the publish to the router as without hooks: it is appended to
    /// the commit log and delivered to subscribers. For QoS 1/2 the router's
    /// PUBACK/PUBREC is written (kept in order with the acks of consumed
    /// publishes of the same connection).
    Forward,
    /// Discard the publish: it is not routed and, whatever its QoS, not
    /// acknowledged (no PUBACK / PUBREC). A QoS 1/2 client keeps it in flight
    /// and normally resends it after it reconnects.
    Drop,
    /// The hook took the message; the router never sees it (no commit-log
    /// append, no per-topic state in the router).
    ///
    /// * QoS 1: the link writes PUBACK for this packet id once the
    ///   [`AckFuture`] resolves to [`AckOutcome::Ack`] (`None` means "ack
    ///   now"). [`AckOutcome::Close`] closes the connection without that
    ///   PUBACK. PUBACKs go out in the order the PUBLISHes arrived.
    /// * QoS 2: the same with PUBREC; the link answers the client's PUBREL
    ///   with PUBCOMP itself.
    /// * QoS 0: nothing is written; a given future still counts towards the
    ///   connection's pending acks and `Close` still closes the connection.
    ///
    /// While `max_inflight_count` acks are pending, the link stops reading
    /// from the network (the connection's backpressure) but keeps writing
    /// (router deliveries, PINGRESPs already read, acks).
    Consume(Option<AckFuture>),
    /// Close the connection (e.g. a publish on a topic the client may never
    /// use). Nothing is acknowledged.
    Disconnect,
}

impl fmt::Debug for PublishVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishVerdict::Forward => f.write_str("Forward"),
            PublishVerdict::Drop => f.write_str("Drop"),
            PublishVerdict::Consume(ack) => {
                write!(f, "Consume({})", if ack.is_some() { "future" } else { "now" })
            }
            PublishVerdict::Disconnect => f.write_str("Disconnect"),
        }
    }
}

/// How a consumed publish's [`AckFuture`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Acknowledge the publish (PUBACK for QoS 1, PUBREC for QoS 2).
    Ack,
    /// Do not acknowledge; close the connection so that the client resends
    /// after reconnecting.
    Close,
}

/// Why a connection ended; passed to [`SessionHooks::on_disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The peer closed or reset the transport, or an I/O error occurred.
    NetworkClosed,
    /// Nothing arrived within 1.5 × the keep-alive interval.
    KeepAliveTimeout,
    /// The client broke the protocol (malformed packet, oversize packet, ...).
    ProtocolError,
    /// [`SessionHooks::closed`] resolved, a verdict said
    /// [`PublishVerdict::Disconnect`], or an [`AckFuture`] said
    /// [`AckOutcome::Close`].
    ClosedByHook,
    /// The router dropped the connection (another connection took over the
    /// client id, the router refused a packet, or the broker is stopping).
    ClosedByBroker,
}

/// Connection-level hooks, shared by all connections of a listener or
/// acceptor.
pub trait ConnectionHooks: Send + Sync + 'static {
    /// Called once the CONNECT packet is read, before the connection is
    /// registered with the router. `Ok` accepts it and returns the hooks for
    /// this session; `Err` refuses it with the given CONNACK code.
    ///
    /// The connection's CONNECT timeout does not cover this future: bound
    /// slow back ends in the hook itself.
    fn on_connect<'a>(
        &'a self,
        info: &'a ConnectInfo,
    ) -> BoxFuture<'a, Result<Box<dyn SessionHooks>, ConnectRefusal>>;
}

/// Hooks of one accepted connection, owned by that connection's task.
pub trait SessionHooks: Send + 'static {
    /// Called for every PUBLISH the client sends (after UTF-8 validation of
    /// the topic), in arrival order. While the returned future is pending,
    /// the link reads no further packets from this client (a PINGREQ behind
    /// it waits too: keep the future short, or answer with `Consume` and a
    /// pending [`AckFuture`] instead), but keeps writing to it.
    fn on_publish(&mut self, publish: &IncomingPublish) -> BoxFuture<'static, PublishVerdict>;

    /// Called for every filter of a SUBSCRIBE, in order. `false` denies the
    /// filter: its SUBACK return code is failure (0x80) while the other
    /// filters of the same SUBSCRIBE subscribe normally. The default allows
    /// every filter.
    fn on_subscribe(&mut self, filter: &str, qos: QoS) -> bool {
        let _ = (filter, qos);
        true
    }

    /// Called once, right after the connection was accepted. When the
    /// returned future resolves, the broker closes the connection (e.g. the
    /// client's credentials were revoked). The default never resolves.
    fn closed(&mut self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    /// Called once when the connection ends, for whatever reason. Pending
    /// [`AckFuture`]s are dropped before this call: their publishes were not
    /// acknowledged. The default does nothing.
    fn on_disconnect(&mut self, reason: DisconnectReason) {
        let _ = reason;
    }
}
