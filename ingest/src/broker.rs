//! The embedded MQTT broker (rumqttd) and fleetd's link into it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetd_tls::{DeviceCertificate, ServerTls};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{
    Broker, Config, ConnectionHooks, ConnectionMeta, ConnectionSettings, RouterConfig,
    StreamAcceptor, TlsIdentity,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;

/// Settings of the embedded broker (`[ingest]` in fleetd.toml).
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Where MQTT 3.1.1 clients connect.
    pub listen: SocketAddr,
    /// Hard payload limit of the broker: a client sending more is
    /// disconnected by rumqttd. Keep it above ingest's `max_payload_bytes`
    /// so that oversize payloads are counted, not just cut off.
    pub max_packet_bytes: usize,
    /// Bytes per commit-log segment the broker keeps in RAM per filter.
    pub segment_bytes: usize,
    /// Segments kept per filter. `segment_bytes × segment_count` bounds how
    /// far fleetd's ingest may fall behind before the broker drops the
    /// oldest unread data (rumqttd keeps the log in RAM only).
    pub segment_count: usize,
    /// Maximum concurrent client connections.
    pub max_connections: usize,
    /// Maximum unacknowledged QoS 1 publishes per connection.
    pub max_inflight: usize,
    /// A client gets this long to send CONNECT after TCP is up; then the
    /// connection is closed (at most 65,535 ms, rumqttd's bound).
    pub connect_timeout: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_packet_bytes: 2 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            segment_count: 4,
            max_connections: 100_000,
            max_inflight: 256,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The MQTT listeners of the embedded broker: plain MQTT on
/// [`BrokerSettings::listen`] (unless turned off) and MQTT over TLS.
#[derive(Debug, Clone)]
pub struct MqttListeners {
    /// Whether the plain listener opens.
    pub plain: bool,
    /// MQTT over TLS, if on.
    pub tls: Option<MqttTls>,
}

impl Default for MqttListeners {
    fn default() -> Self {
        Self {
            plain: true,
            tls: None,
        }
    }
}

/// The MQTT over TLS listener.
#[derive(Debug, Clone)]
pub struct MqttTls {
    /// Where MQTT over TLS clients connect.
    pub listen: SocketAddr,
    /// The certificates (shared with HTTPS, reloaded on SIGHUP).
    pub tls: Arc<ServerTls>,
    /// Time a client has to finish the TLS handshake; the CONNECT timeout
    /// starts after it.
    pub handshake_timeout: Duration,
}

/// A running embedded broker: the MQTT listeners fleetd itself accepts on,
/// and a link for fleetd's own publishes.
///
/// fleetd binds the listener (so a port in use is a start error, not a log
/// line) and hands each accepted connection to rumqttd's acceptor with the
/// [`MqttGate`] as its hooks; the gate takes positions out of the
/// connections before the router sees them. rumqttd has no stop API: the
/// router thread lives as long as the process. Shutdown stops the accept
/// loop; once the journal closes, open connections are refused their
/// publishes.
///
/// [`MqttGate`]: crate::MqttGate
pub struct EmbeddedBroker {
    /// A second link, subscribed to nothing, for fleetd's own publishes
    /// (alerts; see [`crate::alerts::spawn_embedded_publisher`]).
    pub alerts_link: (LinkTx, LinkRx),
    /// The address the plain listener is bound to (the real port when the
    /// setting asked for port 0); `None` when it is off.
    pub local_addr: Option<SocketAddr>,
    /// The address of the MQTT over TLS listener, if on.
    pub tls_addr: Option<SocketAddr>,
}

fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), IngestError> {
    let listener = bind_listener(addr).map_err(|source| IngestError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(IngestError::Io)?;
    Ok((listener, local))
}

impl EmbeddedBroker {
    /// Binds the MQTT listener, starts rumqttd's router and accepts
    /// connections through `gate` until `cancel`.
    pub async fn start(
        settings: &BrokerSettings,
        listeners: &MqttListeners,
        gate: Arc<dyn ConnectionHooks>,
        cancel: CancellationToken,
    ) -> Result<Self, IngestError> {
        let plain = match listeners.plain {
            true => Some(bind(settings.listen)?),
            false => None,
        };
        let tls = match &listeners.tls {
            Some(tls) => Some((bind(tls.listen)?, tls.clone())),
            None => None,
        };
        let broker = Broker::new(router_config(settings));
        let alerts_link = broker
            .link("fleetd-alerts")
            .map_err(|e| IngestError::Broker(format!("cannot create alerts link: {e}")))?;
        let acceptor = broker
            .acceptor(connection_settings(settings))
            .with_hooks(gate);
        // One cap over both listeners: it bounds file descriptors.
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let local_addr = plain.map(|(listener, addr)| {
            tokio::spawn(accept_loop(
                listener,
                acceptor.clone(),
                Arc::clone(&permits),
                settings.max_connections,
                None,
                cancel.clone(),
            ));
            tracing::info!(listen = %addr, "embedded MQTT broker listening");
            addr
        });
        let tls_addr = tls.map(|((listener, addr), tls)| {
            tokio::spawn(accept_loop(
                listener,
                acceptor,
                permits,
                settings.max_connections,
                Some(tls),
                cancel,
            ));
            tracing::info!(listen = %addr, "embedded MQTT broker listening for MQTT over TLS");
            addr
        });
        Ok(Self {
            alerts_link,
            local_addr,
            tls_addr,
        })
    }
}

/// Pending connections the kernel queues before fleetd accepts them (capped
/// by `net.core.somaxconn`). tokio's default of 1,024 overflows in a
/// reconnect storm: the kernel drops SYNs and clients retry after 1, 3,
/// 7 s...
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (every listener
/// of fleetd, MQTT and HTTP).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restart can bind while old
    // connections linger in TIME_WAIT (a live listener still conflicts).
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn connection_settings(settings: &BrokerSettings) -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: u16::try_from(settings.connect_timeout.as_millis())
            .unwrap_or(u16::MAX),
        max_payload_size: settings.max_packet_bytes,
        max_inflight_count: settings.max_inflight,
        // The gate decides; rumqttd's own tables are not consulted.
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

fn router_config(settings: &BrokerSettings) -> Config {
    Config {
        id: 0,
        router: RouterConfig {
            // The accept loop enforces the cap first; the router's bound is
            // the same number so neither refuses what the other admits.
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: settings.segment_bytes,
            max_segment_count: settings.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        ..Default::default()
    }
}

/// Accepts MQTT connections until `cancel`, at most as many at a time as
/// `permits` has: one over the cap is closed at once (counted), so a flood
/// of idle sockets cannot take every file descriptor. Accept errors (out of
/// file descriptors) pause the loop instead of spinning on them. With
/// `tls`, each connection's task runs the TLS handshake first (within its
/// timeout) and hands the broker the decrypted stream and the device
/// certificate's subject.
async fn accept_loop(
    listener: TcpListener,
    acceptor: StreamAcceptor,
    permits: Arc<Semaphore>,
    max_connections: usize,
    tls: Option<MqttTls>,
    cancel: CancellationToken,
) {
    let mut last_error_log: Option<Instant> = None;
    let mut last_cap_log: Option<Instant> = None;
    let mut refused_since_log: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                metrics::counter!("fleetd_mqtt_accept_errors_total").increment(1);
                if last_error_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "MQTT accept failed; pausing accepts");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("fleetd_mqtt_connects_total", "result" => "over_connection_cap")
                .increment(1);
            refused_since_log += 1;
            if last_cap_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections,
                    refused = refused_since_log,
                    "MQTT connection cap reached; closing new connections at accept"
                );
                last_cap_log = Some(Instant::now());
                refused_since_log = 0;
            }
            drop(stream);
            continue;
        };
        // Acks and small publishes must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new();
            let served = match tls {
                None => {
                    acceptor
                        .serve(stream, ConnectionMeta::new(Some(peer)))
                        .await
                }
                Some(tls) => match tls_handshake(&tls, stream, peer).await {
                    Some((stream, meta)) => acceptor.serve(stream, meta).await,
                    None => return,
                },
            };
            match served {
                Ok(()) => {}
                Err(e) if e.is_client_side() => {
                    tracing::debug!(%peer, error = ?e, "MQTT connection ended");
                }
                Err(e) => {
                    tracing::warn!(%peer, error = ?e, "MQTT connection refused by the router")
                }
            }
        });
    }
    tracing::debug!("MQTT accept loop stopped");
}

/// The server side of the TLS handshake of one MQTT connection, and the
/// connection's meta data with the device certificate's subject (if the
/// client sent a certificate, it verified against the client CA).
async fn tls_handshake(
    tls: &MqttTls,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnectionMeta)> {
    let acceptor = tls.tls.mqtt_acceptor();
    match fleetd_tls::handshake(&acceptor, stream, tls.handshake_timeout, "mqtt").await {
        Ok(stream) => {
            let mut meta = ConnectionMeta::new(Some(peer));
            if let Some(cert) = DeviceCertificate::of(stream.get_ref().1) {
                meta = meta.with_tls_identity(TlsIdentity::new(
                    cert.common_name,
                    cert.dns_names,
                    cert.uri_names,
                ));
            }
            Some((stream, meta))
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "MQTT over TLS: handshake failed");
            None
        }
    }
}

/// Keeps `fleetd_mqtt_connections` (TCP connections open, with or without
/// a session yet) up to date for one connection.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!("fleetd_mqtt_connections").increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("fleetd_mqtt_connections").decrement(1.0);
    }
}
