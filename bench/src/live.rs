//! `fleetd bench --sse-clients N`: N concurrent Server-Sent Events clients
//! on `GET /v1/stream` during the bench, measuring delivery latency from the
//! hub's publication (`published_ms` in each position event) to the moment
//! the client reads it, plus what each client received.
//!
//! The clients speak HTTP/1.1 over raw loopback TCP and only scan each
//! `data:` line for `"published_ms":`, so that a thousand of them can run on
//! the same two cores as the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::probe::Latency;

/// What the live clients saw.
#[derive(Debug, Serialize)]
pub struct LiveReport {
    /// Clients asked for.
    pub clients: usize,
    /// Clients whose stream opened (HTTP 200).
    pub connected: u64,
    /// Clients whose stream ended before the bench did (dropped or failed).
    pub ended_early: u64,
    /// Position events received, all clients together.
    pub events: u64,
    /// Events per second per client, averaged.
    pub events_per_client_s: f64,
    /// Publish (hub) → client read, milliseconds (1 ms resolution: both
    /// ends use the wall clock of this machine).
    pub delivery_ms: Option<Latency>,
    /// Clients the server dropped as slow (its metric).
    pub server_dropped_slow: u64,
}

/// Running clients.
pub(crate) struct LiveClients {
    tasks: JoinSet<ClientResult>,
    clients: usize,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicU64>,
    started: std::time::Instant,
}

struct ClientResult {
    histogram: Histogram<u64>,
    events: u64,
    ended_early: bool,
}

/// Opens `n` streams to the fleetd at `http` (`http://host:port`), with an
/// optional `bbox` filter, and waits (up to 30 s) until they are open.
pub(crate) async fn start(
    http: &str,
    token: Option<&str>,
    n: usize,
    bbox: Option<&str>,
) -> anyhow::Result<LiveClients> {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let addr = http
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let path = match bbox {
        Some(b) => format!("/v1/stream?kinds=positions&bbox={b}"),
        None => "/v1/stream?kinds=positions".to_owned(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        tasks.spawn(client(
            addr.clone(),
            path.clone(),
            authorization.clone(),
            Arc::clone(&stop),
            Arc::clone(&connected),
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::Relaxed) < n as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(LiveClients {
        tasks,
        clients: n,
        stop,
        connected,
        started: std::time::Instant::now(),
    })
}

impl LiveClients {
    /// Stops the clients and sums up what they saw.
    pub(crate) async fn finish(mut self, server_dropped_slow: u64) -> anyhow::Result<LiveReport> {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).context("histogram")?;
        let (mut events, mut ended_early) = (0, 0);
        while let Some(result) = self.tasks.join_next().await {
            let r = result.context("live client task")?;
            histogram.add(&r.histogram).context("merge histograms")?;
            events += r.events;
            ended_early += u64::from(r.ended_early);
        }
        let delivery_ms = (!histogram.is_empty()).then(|| Latency {
            samples: histogram.len(),
            // Recorded as ms + 1 (the histogram cannot hold 0).
            p50: (histogram.value_at_quantile(0.5) - 1) as f64,
            p90: (histogram.value_at_quantile(0.9) - 1) as f64,
            p99: (histogram.value_at_quantile(0.99) - 1) as f64,
            p999: (histogram.value_at_quantile(0.999) - 1) as f64,
            max: (histogram.max() - 1) as f64,
        });
        Ok(LiveReport {
            clients: self.clients,
            connected: self.connected.load(Ordering::Relaxed),
            ended_early,
            events,
            events_per_client_s: events as f64 / self.clients.max(1) as f64 / elapsed.max(1e-9),
            delivery_ms,
            server_dropped_slow,
        })
    }
}

async fn client(
    addr: String,
    path: String,
    authorization: String,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicU64>,
) -> ClientResult {
    let mut result = ClientResult {
        histogram: Histogram::new_with_bounds(1, 3_600_000, 3)
            .expect("constant histogram bounds are valid"),
        events: 0,
        ended_early: false,
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
        result.ended_early = true;
        return result;
    };
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{authorization}\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        result.ended_early = true;
        return result;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut opened = false;
    const NEEDLE: &[u8] = b"\"published_ms\":";
    while !stop.load(Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                result.ended_early = true;
                break;
            }
            Ok(Ok(n)) => n,
        };
        let now = fleetd_schemas::now_ms();
        pending.extend_from_slice(&buf[..n]);
        if !opened {
            if pending.starts_with(b"HTTP/1.1 200") {
                opened = true;
                connected.fetch_add(1, Ordering::Relaxed);
            } else if pending.len() >= 12 {
                result.ended_early = true;
                break;
            }
        }
        // Complete lines only; the rest waits for the next read.
        let Some(last_newline) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        for line in pending[..last_newline].split(|b| *b == b'\n') {
            if !line.starts_with(b"data: ") {
                continue;
            }
            let Some(at) = line.windows(NEEDLE.len()).rposition(|w| w == NEEDLE) else {
                continue;
            };
            let digits = &line[at + NEEDLE.len()..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            if let Some(published) = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                result.events += 1;
                let _ = result.histogram.record((now - published).max(0) as u64 + 1);
            }
        }
        pending.drain(..=last_newline);
    }
    result
}
