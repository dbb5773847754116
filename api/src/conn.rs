//! One HTTP connection: its kill switch, handed to handlers as connect
//! info, and its clock, which the serve loop reads to close connections
//! that are idle or slow to send a request head.
//!
//! A streaming response to a client that stops reading blocks hyper in a
//! write that never completes; hyper then no longer polls the response body,
//! so ending the body cannot close the connection. The kill switch can: once
//! cancelled, every read and write of the connection fails, hyper drops it
//! and the socket closes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The connect info of a request: peer address and the connection's kill
/// switch (cancel it to close the connection).
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) kill: CancellationToken,
}

/// A stream that fails every operation once its token is cancelled, and
/// tells the connection's [`Clock`] when bytes arrive.
pub(crate) struct KillableStream<S> {
    inner: S,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
    clock: Arc<Clock>,
}

impl<S> KillableStream<S> {
    pub(crate) fn new(inner: S, kill: CancellationToken, clock: Arc<Clock>) -> Self {
        Self {
            inner,
            killed: Box::pin(kill.cancelled_owned()),
            dead: false,
            clock,
        }
    }

    /// Whether the kill switch fired; registers the waker so that a
    /// connection parked in a blocked write wakes up when it does.
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by fleetd",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for KillableStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KillableStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a connection's clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No complete request head within the header-read timeout of the
    /// connection's start or of the head's first byte.
    HeaderRead,
    /// Nothing sent for the idle timeout after a response (keep-alive).
    Idle,
}

impl Expiry {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Expiry::HeaderRead => "header_read",
            Expiry::Idle => "idle",
        }
    }
}

/// The deadlines of one connection.
///
/// A new connection must deliver a complete request head within the
/// header-read timeout. While a request is in flight (from its head until
/// its response body is written), nothing is timed here: the request
/// timeout bounds handlers, and live streams have their own limits. After
/// the last response, the connection may sit idle for the idle timeout; the
/// first byte of a next request starts the header-read timeout again.
#[derive(Debug)]
pub(crate) struct Clock {
    header_read: Duration,
    idle: Duration,
    state: Mutex<ClockState>,
    /// Wakes the serve loop's timer when a deadline moved earlier or
    /// appeared (a request ended, a head started).
    changed: Notify,
}

#[derive(Debug)]
struct ClockState {
    in_flight: usize,
    /// The current deadline's start and kind; `None` while requests are in
    /// flight.
    since: Option<(Instant, Expiry)>,
}

impl Clock {
    /// A clock for a connection accepted now.
    pub(crate) fn new(header_read: Duration, idle: Duration) -> Self {
        Self {
            header_read,
            idle,
            state: Mutex::new(ClockState {
                in_flight: 0,
                since: Some((Instant::now(), Expiry::HeaderRead)),
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ClockState> {
        // The state is plain data; a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the connection is to be closed if nothing changes, and why.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        let since = self.state().since;
        since.map(|(at, expiry)| match expiry {
            Expiry::HeaderRead => (at + self.header_read, expiry),
            Expiry::Idle => (at + self.idle, expiry),
        })
    }

    /// Resolves once the connection's deadline passes (never while a
    /// request is in flight).
    pub(crate) async fn expired(&self) -> Expiry {
        loop {
            // Registered before the deadline is read, so a change in
            // between still wakes this loop.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline() {
                Some((at, expiry)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            // The state may have moved on while asleep.
                            if self.deadline().is_some_and(|(now_at, _)| now_at <= Instant::now()) {
                                return expiry;
                            }
                        }
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Bytes came in: on an idle connection this is a new request's head,
    /// which now has the header-read timeout to complete.
    fn bytes_arrived(&self) {
        let mut state = self.state();
        if let Some((_, Expiry::Idle)) = state.since {
            state.since = Some((Instant::now(), Expiry::HeaderRead));
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request head was read: no deadline until its response is written.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.since = None;
        InFlight(Arc::clone(self))
    }
}

/// A request in flight; dropped when its response body has been written
/// (or abandoned).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.since = Some((Instant::now(), Expiry::Idle));
            drop(state);
            self.0.changed.notify_one();
        }
    }
}

/// A response body that keeps its request [`InFlight`] until hyper has
/// written it to the end and dropped it.
pub(crate) struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl TrackedBody {
    pub(crate) fn new(inner: Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_requests() {
        let clock = Arc::new(Clock::new(Duration::from_secs(10), Duration::from_secs(60)));
        let started = Instant::now();
        // A new connection: header-read timeout from accept.
        assert_eq!(clock.expired().await, Expiry::HeaderRead);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        // In flight: never expires.
        let request = clock.request_started();
        let waited = tokio::time::timeout(Duration::from_secs(600), clock.expired()).await;
        assert!(waited.is_err(), "a request in flight must not expire");

        // After the response: the idle timeout...
        drop(request);
        let idle_from = Instant::now();
        assert_eq!(clock.expired().await, Expiry::Idle);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(60));

        // ...until a byte of the next head arrives: then the header-read
        // timeout from that byte, also when the clock is already waiting.
        let waiter = {
            let clock = Arc::clone(&clock);
            tokio::spawn(async move { clock.expired().await })
        };
        let _second = clock.request_started();
        drop(_second);
        tokio::time::sleep(Duration::from_secs(5)).await;
        clock.bytes_arrived();
        let byte_at = Instant::now();
        assert_eq!(waiter.await.expect("join"), Expiry::HeaderRead);
        assert_eq!(byte_at.elapsed(), Duration::from_secs(10));
    }
}
