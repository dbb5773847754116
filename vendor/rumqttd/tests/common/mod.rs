//! Test helpers: a broker on loopback (acceptor or config-driven listener),
//! a raw MQTT 3.1.1 client that shows the exact bytes the broker writes, and
//! configurable hooks that report what they saw.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::hooks::BoxFuture;
use rumqttd::{
    AckFuture, AckOutcome, Broker, Config, ConnectInfo, ConnectRefusal, ConnectionHooks,
    ConnectionMeta, ConnectionSettings, DisconnectReason, IncomingPublish, PublishVerdict,
    RouterConfig, ServerSettings, SessionHooks, StreamAcceptor,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn settings() -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 64 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

fn router() -> RouterConfig {
    RouterConfig {
        max_connections: 100,
        max_outgoing_packet_count: 200,
        max_segment_size: 64 * 1024,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

/// A broker without config listeners and an acceptor for it.
pub fn acceptor(hooks: Option<Arc<dyn ConnectionHooks>>) -> (Broker, StreamAcceptor) {
    acceptor_with(hooks, settings())
}

pub fn acceptor_with(
    hooks: Option<Arc<dyn ConnectionHooks>>,
    settings: ConnectionSettings,
) -> (Broker, StreamAcceptor) {
    let broker = Broker::new(Config {
        id: 0,
        router: router(),
        ..Default::default()
    });
    let mut acceptor = broker.acceptor(settings);
    if let Some(hooks) = hooks {
        acceptor = acceptor.with_hooks(hooks);
    }
    (broker, acceptor)
}

/// Listens on 127.0.0.1:0 and serves every accepted stream with
/// `acceptor`; each `serve` result is sent to the returned receiver.
pub async fn listen(
    acceptor: StreamAcceptor,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Result<(), rumqttd::ConnectionError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let r = acceptor.serve(stream, ConnectionMeta::new(Some(peer))).await;
                tx.send(r).ok();
            });
        }
    });
    (addr, rx)
}

/// rumqttd's own `[v4]` listener on a free loopback port, started on its
/// own thread (`Broker::start` blocks).
pub fn config_listener(settings: ConnectionSettings) -> SocketAddr {
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let server = ServerSettings {
        name: "test".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: settings,
    };
    let mut broker = Broker::new(Config {
        id: 0,
        router: router(),
        v4: Some(HashMap::from([("test".to_owned(), server)])),
        ..Default::default()
    });
    std::thread::spawn(move || {
        let _ = broker.start();
    });
    for _ in 0..200 {
        if std::net::TcpStream::connect(listen).is_ok() {
            return listen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("config listener on {listen} did not come up");
}

// ---------------------------------------------------------------- raw client

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![header];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn connect_packet(client_id: &str, keep_alive: u16, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut flags = 0x02; // clean session
    if login.is_some() {
        flags |= 0xC0;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    if let Some((user, pass)) = login {
        string(user.as_bytes(), &mut body);
        string(pass.as_bytes(), &mut body);
    }
    packet(0x10, &body)
}

pub fn publish_packet(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

pub fn subscribe_packet(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        string(filter.as_bytes(), &mut body);
        body.push(*qos);
    }
    packet(0x82, &body)
}

pub fn unsubscribe_packet(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        string(filter.as_bytes(), &mut body);
    }
    packet(0xA2, &body)
}

pub fn pubrel_packet(pkid: u16) -> Vec<u8> {
    packet(0x62, &pkid.to_be_bytes())
}

pub fn puback_packet(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

pub const PINGREQ: [u8; 2] = [0xC0, 0];
pub const PINGRESP: [u8; 2] = [0xD0, 0];
pub const DISCONNECT: [u8; 2] = [0xE0, 0];

/// What `Raw::next` saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// One whole packet, fixed header included.
    Packet(Vec<u8>),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the wait.
    Nothing,
}

/// A raw MQTT client over TCP: writes given bytes, reads whole packets.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK bytes.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> (Raw, Read) {
        Self::connect_with(addr, client_id, 30, None).await
    }

    pub async fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        login: Option<(&str, &str)>,
    ) -> (Raw, Read) {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect_packet(client_id, keep_alive, login)).await;
        let connack = raw.next(WAIT).await;
        (raw, connack)
    }

    /// Connects and asserts CONNACK "accepted".
    pub async fn connected(addr: SocketAddr, client_id: &str) -> Raw {
        let (raw, connack) = Self::connect(addr, client_id).await;
        assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 0]), "CONNACK of {client_id}");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    fn frame(&mut self) -> Option<Vec<u8>> {
        let mut len = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            let byte = *self.buf.get(i)?;
            len += (byte & 0x7f) as usize * mult;
            mult *= 128;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + len {
            return None;
        }
        Some(self.buf.drain(..i + len).collect())
    }

    /// The next packet, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.frame() {
                return Read::Packet(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Asserts that the next packet is exactly `expected`.
    pub async fn expect(&mut self, expected: &[u8], what: &str) {
        assert_eq!(self.next(WAIT).await, Read::Packet(expected.to_vec()), "{what}");
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_nothing(&mut self, what: &str) {
        assert_eq!(self.next(QUIET).await, Read::Nothing, "{what}");
    }

    /// Asserts that the broker closes the connection (possibly after
    /// packets, which are returned).
    pub async fn expect_closed(&mut self, what: &str) -> Vec<Vec<u8>> {
        let mut before = Vec::new();
        loop {
            match self.next(WAIT).await {
                Read::Closed => return before,
                Read::Packet(p) => before.push(p),
                Read::Nothing => panic!("{what}: connection still open"),
            }
        }
    }

    /// A PINGREQ is answered (the connection is alive and served).
    pub async fn ping(&mut self, what: &str) {
        self.send(&PINGREQ).await;
        self.expect(&PINGRESP, what).await;
    }
}

pub fn puback(pkid: u16) -> Vec<u8> {
    let p = pkid.to_be_bytes();
    vec![0x40, 2, p[0], p[1]]
}

pub fn pubrec(pkid: u16) -> Vec<u8> {
    let p = pkid.to_be_bytes();
    vec![0x50, 2, p[0], p[1]]
}

pub fn pubcomp(pkid: u16) -> Vec<u8> {
    let p = pkid.to_be_bytes();
    vec![0x70, 2, p[0], p[1]]
}

// -------------------------------------------------------------------- hooks

/// What the test hooks report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connect {
        client_id: String,
        username: Option<String>,
        password: Option<String>,
        keep_alive: u16,
        peer: bool,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        pkid: u16,
    },
    Subscribe(String),
    Disconnect(DisconnectReason),
}

pub type OnPublish =
    Arc<dyn Fn(&IncomingPublish) -> BoxFuture<'static, PublishVerdict> + Send + Sync>;

/// Hooks driven by the test.
#[derive(Clone)]
pub struct TestHooks {
    pub refuse: Option<ConnectRefusal>,
    pub on_publish: OnPublish,
    /// Filters starting with this are denied.
    pub deny_prefix: Option<String>,
    /// Notified ⇒ the session's close signal resolves.
    pub close: Option<Arc<Notify>>,
    pub seen: mpsc::UnboundedSender<Seen>,
}

impl TestHooks {
    pub fn new(
        on_publish: impl Fn(&IncomingPublish) -> PublishVerdict + Send + Sync + 'static,
    ) -> (TestHooks, mpsc::UnboundedReceiver<Seen>) {
        let (seen, rx) = mpsc::unbounded_channel();
        let on_publish = Arc::new(on_publish);
        let hooks = TestHooks {
            refuse: None,
            on_publish: Arc::new(move |p: &IncomingPublish| {
                let v = on_publish(p);
                Box::pin(std::future::ready(v)) as BoxFuture<'static, PublishVerdict>
            }),
            deny_prefix: None,
            close: None,
            seen,
        };
        (hooks, rx)
    }

    pub fn arc(self) -> Arc<dyn ConnectionHooks> {
        Arc::new(self)
    }
}

struct TestSession {
    hooks: TestHooks,
}

impl ConnectionHooks for TestHooks {
    fn on_connect<'a>(
        &'a self,
        info: &'a ConnectInfo,
    ) -> BoxFuture<'a, Result<Box<dyn SessionHooks>, ConnectRefusal>> {
        Box::pin(async move {
            self.seen
                .send(Seen::Connect {
                    client_id: info.client_id.clone(),
                    username: info.username.clone(),
                    password: info.password.clone(),
                    keep_alive: info.keep_alive,
                    peer: info.meta.peer_addr.is_some(),
                })
                .ok();
            match self.refuse {
                Some(r) => Err(r),
                None => Ok(Box::new(TestSession {
                    hooks: self.clone(),
                }) as Box<dyn SessionHooks>),
            }
        })
    }
}

impl SessionHooks for TestSession {
    fn on_publish(&mut self, publish: &IncomingPublish) -> BoxFuture<'static, PublishVerdict> {
        self.hooks
            .seen
            .send(Seen::Publish {
                topic: publish.topic().to_owned(),
                payload: publish.payload().to_vec(),
                qos: publish.qos() as u8,
                pkid: publish.pkid(),
            })
            .ok();
        (self.hooks.on_publish)(publish)
    }

    fn on_subscribe(&mut self, filter: &str, _qos: rumqttd::protocol::QoS) -> bool {
        self.hooks.seen.send(Seen::Subscribe(filter.to_owned())).ok();
        match &self.hooks.deny_prefix {
            Some(prefix) => !filter.starts_with(prefix.as_str()),
            None => true,
        }
    }

    fn closed(&mut self) -> BoxFuture<'static, ()> {
        match self.hooks.close.clone() {
            Some(notify) => Box::pin(async move { notify.notified().await }),
            None => Box::pin(std::future::pending()),
        }
    }

    fn on_disconnect(&mut self, reason: DisconnectReason) {
        self.hooks.seen.send(Seen::Disconnect(reason)).ok();
    }
}

/// Ack futures handed out in order; the test resolves them by index.
#[derive(Clone, Default)]
pub struct AckGate {
    senders: Arc<Mutex<VecDeque<Option<oneshot::Sender<AckOutcome>>>>>,
}

impl AckGate {
    /// A new pending ack future (as a `Consume` verdict).
    pub fn consume(&self) -> PublishVerdict {
        let (tx, rx) = oneshot::channel();
        self.senders.lock().unwrap().push_back(Some(tx));
        let ack: AckFuture = Box::pin(async move { rx.await.unwrap_or(AckOutcome::Close) });
        PublishVerdict::Consume(Some(ack))
    }

    /// Resolves the `i`-th handed-out future.
    pub fn resolve(&self, i: usize, outcome: AckOutcome) {
        let tx = self.senders.lock().unwrap()[i].take().expect("resolved twice");
        tx.send(outcome).ok();
    }

    pub fn handed_out(&self) -> usize {
        self.senders.lock().unwrap().len()
    }
}

/// Next hook report, within `WAIT`.
pub async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("hook report in time")
        .expect("hooks alive")
}

/// Next hook report that is not a Connect.
pub async fn seen_after_connect(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        match seen(rx).await {
            Seen::Connect { .. } => continue,
            other => return other,
        }
    }
}

/// Next Publish hook report.
pub async fn next_publish(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    loop {
        match seen(rx).await {
            p @ Seen::Publish { .. } => return p,
            _ => continue,
        }
    }
}
