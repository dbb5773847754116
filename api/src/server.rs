//! The HTTP serve loop: accepts connections up to a cap, turns each into a
//! byte stream through a [`Handshake`] (plain TCP here; TLS plugs in at the
//! same seam), serves HTTP/1.1 on it with hyper, and closes connections that
//! are idle or slow to send a request head.
//!
//! axum's own `serve` has no per-connection timeouts and no connection cap:
//! idle sockets pile up until the process runs out of file descriptors, and
//! a client sending its headers one byte at a time holds a connection
//! forever. This loop gives every connection a [`Clock`] and every listener
//! a semaphore of [`ConnectionLimits::max_connections`] permits.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::conn::{Clock, Conn, Expiry, KillableStream, TrackedBody};

/// Bounds on the connections of one HTTP listener (`[api]` in fleetd.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A new connection must send a complete request head within this (a
    /// TLS handshake, where there is one, counts towards it), and so must a
    /// next request on a kept-alive connection, counted from its first
    /// byte. Closes slowloris clients and sockets that never send.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in flight is closed after
    /// this long without a new request.
    pub idle_timeout: Duration,
    /// Connections open at once; one over is closed at accept. Keep it
    /// below the process's file-descriptor limit.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Turns an accepted TCP connection into the stream HTTP is served on:
/// [`PlainTcp`] as it is, or a TLS session.
///
/// The handshake runs in the connection's own task, within the connection's
/// header-read timeout, so a slow handshake delays nobody else.
pub trait Handshake: Send + Sync + 'static {
    /// The stream HTTP is served on.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Performs the handshake (an error closes the connection quietly: it is
    /// the client's).
    fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Stream = TcpStream;

    async fn handshake(&self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// HTTPS: a TLS session (ALPN `http/1.1`) with the certificate in use when
/// the connection came in; a reload on SIGHUP applies to the next one.
#[derive(Debug, Clone)]
pub struct TlsHandshake {
    tls: Arc<fleetd_tls::ServerTls>,
    timeout: Duration,
}

impl TlsHandshake {
    /// Handshakes with `tls`'s HTTPS configuration, each within `timeout`
    /// (the header-read timeout bounds it too).
    pub fn new(tls: Arc<fleetd_tls::ServerTls>, timeout: Duration) -> Self {
        Self { tls, timeout }
    }
}

impl Handshake for TlsHandshake {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> io::Result<Self::Stream> {
        let acceptor = self.tls.http_acceptor();
        fleetd_tls::handshake(&acceptor, tcp, self.timeout, "https")
            .await
            .map_err(|e| {
                tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                io::Error::new(io::ErrorKind::ConnectionAborted, e)
            })
    }
}

/// How often at most the accept loop logs the same trouble (the connection
/// cap reached, out of file descriptors); the counters count every case.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts on `listener` until `shutdown`, serving `app` on each connection
/// through `handshake`; then stops accepting, lets in-flight requests finish
/// (idle connections close at once) and returns when every connection is
/// closed.
///
/// Metrics: `fleetd_http_connections` (gauge, open now),
/// `fleetd_http_connections_refused_total{reason}` (`over_cap`,
/// `accept_error`), `fleetd_http_connections_timed_out_total{reason}`
/// (`header_read`, `idle`).
pub(crate) async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let handshake = Arc::new(handshake);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut over_cap = Throttled::default();
    let mut accept_errors = Throttled::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "HTTP accept failed");
                continue;
            }
            Err(e) => {
                // Out of file descriptors (or memory): refuse by not
                // accepting for a moment instead of spinning on the error.
                metrics::counter!("fleetd_http_connections_refused_total", "reason" => "accept_error")
                    .increment(1);
                if let Some(since) = accept_errors.due() {
                    tracing::warn!(error = %e, failures = since, "HTTP accept failing; pausing accepts 100 ms at a time");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("fleetd_http_connections_refused_total", "reason" => "over_cap")
                .increment(1);
            if let Some(since) = over_cap.due() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = since,
                    "HTTP connection cap reached; closing new connections at accept"
                );
            }
            drop(tcp);
            continue;
        };
        // Live events are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer,
            Arc::clone(&handshake),
            app.clone(),
            limits,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Accept errors that concern one connection only (reset before accept).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// One log line per [`LOG_EVERY`] at most for a recurring condition.
#[derive(Default)]
struct Throttled {
    logged: Option<Instant>,
    since: u64,
}

impl Throttled {
    /// Counts one occurrence; `Some(count since the last line)` when a line
    /// is due.
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.logged = Some(Instant::now());
            Some(std::mem::take(&mut self.since))
        } else {
            None
        }
    }
}

/// Serves one connection until it closes, times out or (after shutdown)
/// finishes its last request.
async fn connection<H: Handshake>(
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: Arc<H>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _open = OpenGauge::new();
    let clock = Arc::new(Clock::new(limits.header_read_timeout, limits.idle_timeout));
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        expiry = clock.expired() => {
            timed_out(expiry);
            return;
        }
        stream = handshake.handshake(tcp, peer) => match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP handshake failed");
                return;
            }
        },
    };
    let kill = CancellationToken::new();
    let io = KillableStream::new(stream, kill.clone(), Arc::clone(&clock));
    let info = ConnectInfo(Conn { peer, kill });
    let requests = Arc::clone(&clock);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        let in_flight = requests.request_started();
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| Body::new(TrackedBody::new(body, in_flight))))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            // Dropping the connection closes the socket.
            expiry = clock.expired() => {
                timed_out(expiry);
                return;
            }
        }
    }
}

fn timed_out(expiry: Expiry) {
    metrics::counter!("fleetd_http_connections_timed_out_total", "reason" => expiry.label())
        .increment(1);
}

/// Keeps `fleetd_http_connections` up to date for one connection.
struct OpenGauge;

impl OpenGauge {
    fn new() -> Self {
        metrics::gauge!("fleetd_http_connections").increment(1.0);
        Self
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("fleetd_http_connections").decrement(1.0);
    }
}
