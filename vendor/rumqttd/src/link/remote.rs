use crate::hooks::{
    AckOutcome, BoxFuture, ConnectInfo, ConnectRefusal, ConnectionHooks, ConnectionMeta,
    DisconnectReason, IncomingPublish, PublishVerdict, SessionHooks,
};
use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::local::LinkBuilder;
use crate::protocol::{
    self, ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Protocol, Publish, PublishProperties, QoS,
    SubscribeReasonCode,
};
use crate::router::{Event, Notification};
use crate::{ConnectionId, ConnectionSettings};

use flume::{RecvError, SendError, Sender, TrySendError};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use std::cmp::min;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{debug, trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Zero keep alive")]
    ZeroKeepAlive,
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
    #[error("Connection refused by hook: {0:?}")]
    Refused(ConnectRefusal),
    #[error("Connection closed by hook")]
    ClosedByHook,
    #[error("Protocol violation: {0}")]
    Protocol(&'static str),
}

impl Error {
    /// Classifies why a running session ended. `client_disconnected` says
    /// whether the client sent DISCONNECT (the router then drops the link,
    /// which surfaces as a link error).
    pub(crate) fn disconnect_reason(&self, client_disconnected: bool) -> DisconnectReason {
        match self {
            Error::Link(_) | Error::Send(_) | Error::Recv(_) | Error::TrySend(_)
                if client_disconnected =>
            {
                DisconnectReason::ClientDisconnect
            }
            Error::Link(_) | Error::Send(_) | Error::Recv(_) | Error::TrySend(_) => {
                DisconnectReason::ClosedByBroker
            }
            Error::Network(network::Error::KeepAlive(_)) | Error::Timeout(_) => {
                DisconnectReason::KeepAliveTimeout
            }
            Error::Network(network::Error::Protocol(_)) | Error::Protocol(_) => {
                DisconnectReason::ProtocolError
            }
            Error::Io(e) | Error::Network(network::Error::Io(e))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                DisconnectReason::ProtocolError
            }
            Error::ClosedByHook | Error::Refused(_) => DisconnectReason::ClosedByHook,
            _ => DisconnectReason::NetworkClosed,
        }
    }
}

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
    /// Set once a DISCONNECT from the client was handed to the router: the
    /// router then removes the connection itself.
    pub(crate) client_disconnected: bool,
    /// Hook state, when the listener has [`ConnectionHooks`].
    hooked: Option<Hooked>,
}

/// A consumed or forwarded QoS > 0 publish (or a QoS 0 one with an ack
/// future) waiting for its acknowledgement, in arrival order.
struct AckDone {
    pkid: u16,
    kind: AckKind,
    outcome: AckOutcome,
}

#[derive(Clone, Copy)]
enum AckKind {
    /// QoS 0: nothing to write.
    Nothing,
    PubAck,
    /// `consumed`: the router never saw this QoS 2 publish, so the link
    /// answers its PUBREL itself.
    PubRec { consumed: bool },
}

/// A publish whose `on_publish` verdict is still pending.
struct PendingPublish {
    publish: Publish,
    properties: Option<PublishProperties>,
    verdict: BoxFuture<'static, PublishVerdict>,
}

/// Per-connection state of a link with [`SessionHooks`].
struct Hooked {
    session: Box<dyn SessionHooks>,
    close_signal: BoxFuture<'static, ()>,
    pending_publish: Option<PendingPublish>,
    acks: FuturesOrdered<BoxFuture<'static, AckDone>>,
    /// Forwarded QoS 1/2 publishes whose PUBACK/PUBREC the router will send,
    /// in order; the router's ack resolves the slot in `acks`.
    router_acks: VecDeque<(u16, oneshot::Sender<()>)>,
    /// SUBSCRIBEs with denied filters: pkid and, per original filter,
    /// whether it was allowed.
    subacks: VecDeque<(u16, Vec<bool>)>,
    /// Consumed QoS 2 packet ids that were PUBREC'd and await PUBREL.
    consumed_qos2: HashSet<u16>,
    /// MQTT 5 topic aliases set by the client (alias -> topic).
    topic_aliases: HashMap<u16, bytes::Bytes>,
    /// Pending acks at which the link stops reading from the network.
    max_pending: usize,
    /// Packets were pushed to the router since the last notify.
    notify_router: bool,
    /// Packets the link answers itself (PUBCOMP for consumed QoS 2).
    local_out: VecDeque<Packet>,
}

impl<P: Protocol> RemoteLink<P> {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        assigned_client_id: Option<String>,
        session: Option<Box<dyn SessionHooks>>,
        max_pending_acks: usize,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = assigned_client_id.as_ref().unwrap_or(&connect.client_id);
        let clean_session = connect.clean_session;

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        let registered = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .build_async()
            .await;

        let (link_tx, link_rx, notification) = match registered {
            Ok(link) => link,
            Err(e) => {
                // The router refused the connection (e.g. its connection
                // limit): tell the client instead of just closing.
                let code = refusal_code(ConnectRefusal::ServerUnavailable, &network);
                let ack = ConnAck {
                    session_present: false,
                    code,
                };
                network.write(Packet::ConnAck(ack, None)).await.ok();
                return Err(e.into());
            }
        };

        let id = link_rx.id();
        Span::current().record("connection_id", id);

        if let Some(mut packet) = notification.into() {
            if let Packet::ConnAck(_ack, props) = &mut packet {
                let mut new_props = props.clone().unwrap_or_default();
                new_props.assigned_client_identifier = assigned_client_id;
                *props = Some(new_props);
                network.write(packet).await?;
            }
        }

        let hooked = session.map(|mut session| {
            let close_signal = session.closed();
            Hooked {
                session,
                close_signal,
                pending_publish: None,
                acks: FuturesOrdered::new(),
                router_acks: VecDeque::new(),
                subacks: VecDeque::new(),
                consumed_qos2: HashSet::new(),
                topic_aliases: HashMap::new(),
                max_pending: max_pending_acks.max(1),
                notify_router: false,
                local_out: VecDeque::new(),
            }
        });

        Ok(RemoteLink {
            connect,
            connection_id: id,
            network,
            link_tx,
            link_rx,
            notifications: VecDeque::new(),
            will_delay_interval,
            client_disconnected: false,
            hooked,
        })
    }

    /// Whether the router still holds this connection (it drops its end of
    /// the link when it removes the connection).
    pub(crate) fn router_dropped(&self) -> bool {
        self.link_rx.router_dropped()
    }

    /// Runs the session until it ends, then tells the session hooks why.
    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);
        let Some(mut hooked) = self.hooked.take() else {
            return self.run_plain().await;
        };
        let result = self.run_hooked(&mut hooked).await;
        // Drop unresolved acks before telling the session: their publishes
        // were not acknowledged.
        hooked.pending_publish = None;
        hooked.acks = FuturesOrdered::new();
        hooked.router_acks.clear();
        let reason = match &result {
            Ok(()) => DisconnectReason::NetworkClosed,
            Err(e) => e.disconnect_reason(self.client_disconnected),
        };
        hooked.session.on_disconnect(reason);
        result
    }

    /// The link without hooks: upstream rumqttd's loop.
    async fn run_plain(&mut self) -> Result<(), Error> {
        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            select! {
                o = self.network.read() => {
                    let packet = o?;
                    let len = {
                        let mut buffer = self.link_tx.buffer();
                        buffer.push_back(packet);
                        self.network.readv(&mut buffer)?;
                        if buffer.iter().any(|p| matches!(p, Packet::Disconnect(..))) {
                            self.client_disconnected = true;
                        }
                        buffer.len()
                    };

                    trace!("Packets read from network, count = {}", len);
                    self.link_tx.notify().await?;
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    let mut packets = VecDeque::new();
                    let mut unscheduled = false;

                    for notif in self.notifications.drain(..) {
                        if let Some(packet) = notif.into() {
                            packets.push_back(packet);
                        } else {
                            unscheduled = true;
                        }

                    }
                    self.network.writev(packets).await?;
                    if unscheduled {
                        self.link_rx.wake().await?;
                    }
                }
            }
        }
    }

    /// The link with session hooks. Besides the plain loop's two branches it
    /// polls the close signal, a pending `on_publish` verdict and the
    /// pending acks, and it stops reading from the network while a verdict
    /// is pending or `max_pending` acks are outstanding.
    async fn run_hooked(&mut self, h: &mut Hooked) -> Result<(), Error> {
        loop {
            let can_read = h.pending_publish.is_none() && h.acks.len() < h.max_pending;
            select! {
                _ = &mut h.close_signal => {
                    debug!("session closed by hook");
                    return Err(Error::ClosedByHook);
                }
                verdict = pending_verdict(&mut h.pending_publish) => {
                    if let Some(pending) = h.pending_publish.take() {
                        self.apply_verdict(h, pending.publish, pending.properties, verdict)?;
                    }
                    self.handle_buffered(h).await?;
                }
                Some(done) = h.acks.next(), if !h.acks.is_empty() => {
                    self.write_acks(h, done).await?;
                }
                o = self.network.read(), if can_read => {
                    let packet = o?;
                    self.handle_packet(h, packet).await?;
                    self.handle_buffered(h).await?;
                }
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    self.write_notifications(h).await?;
                }
            }
        }
    }

    /// Handles packets already framed in the read buffer (no socket reads)
    /// while the link may read, then flushes what the link answered itself
    /// and wakes the router for what it forwarded.
    async fn handle_buffered(&mut self, h: &mut Hooked) -> Result<(), Error> {
        while h.pending_publish.is_none() && h.acks.len() < h.max_pending {
            match self.network.try_read()? {
                Some(packet) => self.handle_packet(h, packet).await?,
                None => break,
            }
        }
        if !h.local_out.is_empty() {
            let packets = std::mem::take(&mut h.local_out);
            self.network.writev(packets).await?;
        }
        if h.notify_router {
            h.notify_router = false;
            self.link_tx.notify().await?;
        }
        Ok(())
    }

    async fn handle_packet(&mut self, h: &mut Hooked, packet: Packet) -> Result<(), Error> {
        match packet {
            Packet::Publish(mut publish, properties) => {
                // MQTT 5 topic alias: resolve it so that the hook sees the
                // topic, and so that the router sees the mapping even when
                // the publish that set it was consumed.
                if let Some(alias) = properties.as_ref().and_then(|p| p.topic_alias) {
                    if publish.topic.is_empty() {
                        match h.topic_aliases.get(&alias) {
                            Some(topic) => publish.topic = topic.clone(),
                            None => return Err(Error::Protocol("unknown topic alias")),
                        }
                    } else {
                        h.topic_aliases.insert(alias, publish.topic.clone());
                    }
                }
                if std::str::from_utf8(&publish.topic).is_err() {
                    return Err(Error::Protocol("publish topic is not UTF-8"));
                }
                let view = IncomingPublish::new(
                    publish.topic.clone(),
                    publish.payload.clone(),
                    publish.qos,
                    publish.pkid,
                    publish.retain,
                    publish.dup,
                );
                let mut verdict = h.session.on_publish(&view);
                // Poll once with this task's context: most hooks answer at
                // once, and a pending one has registered our waker.
                let polled = std::future::poll_fn(|cx| Poll::Ready(verdict.as_mut().poll(cx))).await;
                match polled {
                    Poll::Ready(verdict) => self.apply_verdict(h, publish, properties, verdict)?,
                    Poll::Pending => {
                        h.pending_publish = Some(PendingPublish {
                            publish,
                            properties,
                            verdict,
                        })
                    }
                }
            }
            Packet::PubRel(pubrel, props) => {
                if h.consumed_qos2.remove(&pubrel.pkid) {
                    let pubcomp = PubComp {
                        pkid: pubrel.pkid,
                        reason: PubCompReason::Success,
                    };
                    h.local_out.push_back(Packet::PubComp(pubcomp, None));
                } else {
                    self.forward(h, Packet::PubRel(pubrel, props));
                }
            }
            Packet::Subscribe(mut subscribe, props) => {
                let mut allowed = Vec::with_capacity(subscribe.filters.len());
                let session = &mut h.session;
                subscribe.filters.retain(|f| {
                    let ok = session.on_subscribe(&f.path, f.qos);
                    allowed.push(ok);
                    ok
                });
                if allowed.iter().any(|ok| !ok) {
                    h.subacks.push_back((subscribe.pkid, allowed));
                }
                // Even with every filter denied the (empty) SUBSCRIBE goes to
                // the router, so that its SUBACK keeps its place among the
                // router's other acks.
                self.forward(h, Packet::Subscribe(subscribe, props));
            }
            Packet::Disconnect(disconnect, props) => {
                self.client_disconnected = true;
                self.forward(h, Packet::Disconnect(disconnect, props));
            }
            packet => self.forward(h, packet),
        }
        Ok(())
    }

    fn forward(&mut self, h: &mut Hooked, packet: Packet) {
        self.link_tx.buffer().push_back(packet);
        h.notify_router = true;
    }

    fn apply_verdict(
        &mut self,
        h: &mut Hooked,
        publish: Publish,
        properties: Option<PublishProperties>,
        verdict: PublishVerdict,
    ) -> Result<(), Error> {
        let pkid = publish.pkid;
        let qos = publish.qos;
        match verdict {
            PublishVerdict::Forward => {
                let kind = match qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(AckKind::PubAck),
                    QoS::ExactlyOnce => Some(AckKind::PubRec { consumed: false }),
                };
                if let Some(kind) = kind {
                    let (tx, rx) = oneshot::channel();
                    h.router_acks.push_back((pkid, tx));
                    h.acks.push_back(Box::pin(async move {
                        let outcome = match rx.await {
                            Ok(()) => AckOutcome::Ack,
                            Err(_) => AckOutcome::Close,
                        };
                        AckDone {
                            pkid,
                            kind,
                            outcome,
                        }
                    }));
                }
                self.forward(h, Packet::Publish(publish, properties));
            }
            PublishVerdict::Drop => {
                trace!(pkid, "publish dropped by hook");
            }
            PublishVerdict::Disconnect => return Err(Error::ClosedByHook),
            PublishVerdict::Consume(ack) => {
                let kind = match qos {
                    QoS::AtMostOnce => AckKind::Nothing,
                    QoS::AtLeastOnce => AckKind::PubAck,
                    QoS::ExactlyOnce => AckKind::PubRec { consumed: true },
                };
                match ack {
                    None if qos == QoS::AtMostOnce => {}
                    None => h.acks.push_back(Box::pin(std::future::ready(AckDone {
                        pkid,
                        kind,
                        outcome: AckOutcome::Ack,
                    }))),
                    Some(ack) => h.acks.push_back(Box::pin(async move {
                        AckDone {
                            pkid,
                            kind,
                            outcome: ack.await,
                        }
                    })),
                }
            }
        }
        Ok(())
    }

    /// Writes the ack `first` and every further ack that is already
    /// resolved, in order, as one write. An ack that says "close" ends the
    /// connection after the acks before it were written.
    async fn write_acks(&mut self, h: &mut Hooked, first: AckDone) -> Result<(), Error> {
        let mut packets = VecDeque::new();
        let mut next = Some(first);
        let mut close = false;
        while let Some(done) = next.take() {
            if done.outcome == AckOutcome::Close {
                close = true;
                break;
            }
            match done.kind {
                AckKind::Nothing => {}
                AckKind::PubAck => {
                    let ack = PubAck {
                        pkid: done.pkid,
                        reason: PubAckReason::Success,
                    };
                    packets.push_back(Packet::PubAck(ack, None));
                }
                AckKind::PubRec { consumed } => {
                    if consumed {
                        h.consumed_qos2.insert(done.pkid);
                    }
                    let rec = PubRec {
                        pkid: done.pkid,
                        reason: PubRecReason::Success,
                    };
                    packets.push_back(Packet::PubRec(rec, None));
                }
            }
            next = h.acks.next().now_or_never().flatten();
        }
        if !packets.is_empty() {
            self.network.writev(packets).await?;
        }
        if close {
            debug!("ack future asked to close the connection");
            return Err(Error::ClosedByHook);
        }
        // Room for more pending acks: frame what is already buffered.
        self.handle_buffered(h).await
    }

    /// Writes the router's notifications; with hooks, holds back the
    /// router's PUBACK/PUBREC of forwarded publishes (they resolve their
    /// slot in the ordered ack queue) and puts denied filters back into
    /// SUBACKs.
    async fn write_notifications(&mut self, h: &mut Hooked) -> Result<(), Error> {
        let mut packets = VecDeque::new();
        let mut unscheduled = false;
        for notif in self.notifications.drain(..) {
            let Some(packet) = notif.into() else {
                unscheduled = true;
                continue;
            };
            let pkid = match &packet {
                Packet::PubAck(ack, _) => Some(ack.pkid),
                Packet::PubRec(rec, _) => Some(rec.pkid),
                _ => None,
            };
            if let Some(pkid) = pkid {
                if h.router_acks.front().is_some_and(|(p, _)| *p == pkid) {
                    if let Some((_, tx)) = h.router_acks.pop_front() {
                        tx.send(()).ok();
                    }
                    continue;
                }
            }
            let packet = match packet {
                Packet::SubAck(mut suback, props)
                    if h.subacks.front().is_some_and(|(p, _)| *p == suback.pkid) =>
                {
                    if let Some((_, allowed)) = h.subacks.pop_front() {
                        let mut granted = suback.return_codes.into_iter();
                        suback.return_codes = allowed
                            .into_iter()
                            .map(|ok| match ok {
                                true => granted.next().unwrap_or(SubscribeReasonCode::Failure),
                                false if self.network.protocol_level() == 5 => {
                                    SubscribeReasonCode::NotAuthorized
                                }
                                false => SubscribeReasonCode::Failure,
                            })
                            .collect();
                    }
                    Packet::SubAck(suback, props)
                }
                packet => packet,
            };
            packets.push_back(packet);
        }
        if !packets.is_empty() {
            self.network.writev(packets).await?;
        }
        if unscheduled {
            self.link_rx.wake().await?;
        }
        Ok(())
    }
}

/// The verdict of a pending `on_publish`, or never.
async fn pending_verdict(pending: &mut Option<PendingPublish>) -> PublishVerdict {
    match pending {
        Some(p) => p.verdict.as_mut().await,
        None => std::future::pending().await,
    }
}

/// CONNACK return code for a refusal, in the connection's protocol version.
fn refusal_code<P: Protocol>(refusal: ConnectRefusal, network: &Network<P>) -> ConnectReturnCode {
    let v5 = network.protocol_level() == 5;
    match refusal {
        ConnectRefusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
        ConnectRefusal::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
        ConnectRefusal::ServerUnavailable if v5 => ConnectReturnCode::ServerUnavailable,
        ConnectRefusal::ServerUnavailable => ConnectReturnCode::ServiceUnavailable,
    }
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here. With `hooks`, the hook decides
/// instead of the configured authentication and returns the session hooks.
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    hooks: Option<&Arc<dyn ConnectionHooks>>,
    meta: ConnectionMeta,
    network: &mut Network<P>,
) -> Result<(Packet, Option<Box<dyn SessionHooks>>), Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let read = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await?;
    let packet = match read {
        Ok(packet) => packet,
        Err(network::Error::Protocol(protocol::Error::InvalidProtocolLevel(level))) => {
            // MQTT 3.1.1 §3.1.2.2: answer an unsupported level with 0x01.
            let code = match network.protocol_level() {
                5 => ConnectReturnCode::UnsupportedProtocolVersion,
                _ => ConnectReturnCode::RefusedProtocolVersion,
            };
            let ack = ConnAck {
                session_present: false,
                code,
            };
            network.write(Packet::ConnAck(ack, None)).await.ok();
            return Err(network::Error::Protocol(protocol::Error::InvalidProtocolLevel(level)).into());
        }
        Err(e) => return Err(e.into()),
    };

    let (connect, login) = match packet {
        Packet::Connect(ref connect, _, _, _, ref login) => (connect, login),
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    Span::current().record("client_id", &connect.client_id);

    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;

    if empty_client_id && !clean_session {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ClientIdentifierNotValid,
        };

        let packet = Packet::ConnAck(ack, None);
        network.write(packet).await?;

        return Err(Error::InvalidClientId);
    }

    let session = match hooks {
        Some(hooks) => {
            let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let info = ConnectInfo {
                client_id: connect.client_id.clone(),
                username: login.as_ref().and_then(|l| nonempty(&l.username)),
                password: login.as_ref().and_then(|l| nonempty(&l.password)),
                keep_alive: connect.keep_alive,
                clean_session,
                protocol_level: network.protocol_level(),
                meta,
            };
            match hooks.on_connect(&info).await {
                Ok(session) => Some(session),
                Err(refusal) => {
                    let ack = ConnAck {
                        session_present: false,
                        code: refusal_code(refusal, network),
                    };
                    network.write(Packet::ConnAck(ack, None)).await?;
                    return Err(Error::Refused(refusal));
                }
            }
        }
        None => {
            if let Err(e) = handle_auth(config.clone(), login.as_ref(), &connect.client_id).await {
                // Tell the client why instead of just closing (upstream
                // closed without CONNACK).
                let refusal = match login {
                    Some(_) => ConnectRefusal::BadUserNamePassword,
                    None => ConnectRefusal::NotAuthorized,
                };
                let ack = ConnAck {
                    session_present: false,
                    code: refusal_code(refusal, network),
                };
                network.write(Packet::ConnAck(ack, None)).await.ok();
                return Err(e);
            }
            None
        }
    };

    // Keep-alive 0 turns keep-alive off (MQTT 3.1.1 §3.1.2.10, MQTT 5
    // §3.1.2.10): accepted, and `Network::set_keepalive(0)` then reads
    // without a timeout. (Upstream refused it with `Error::ZeroKeepAlive`.)

    Ok((packet, session))
}

async fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        if !auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        )
        .await
        {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    if let Some(pairs) = &config.auth {
        if let Some(stored_password) = pairs.get(username) {
            if stored_password.as_bytes().ct_eq(password.as_bytes()).into() {
                return Ok(());
            }
        }

        return Err(Error::InvalidAuth);
    }

    Err(Error::InvalidAuth)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[tokio::test]
    async fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "").await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| async { false };
        async fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.set_auth_handler(closure);
        cfg.set_auth_handler(fnptr);
    }
}
