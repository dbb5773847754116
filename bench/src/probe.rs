//! Publish→queryable latency: probe devices publish one position at a time
//! (QoS 1) and poll `GET /v1/vehicles/{id}` until that exact position shows,
//! and area-query load: many `near` queries at once, timed one by one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetd_schemas::proto;
use hdrhistogram::Histogram;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// How often a probe polls while waiting for its position.
const POLL: Duration = Duration::from_millis(5);
/// A probe position not visible after this counts as timed out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Observations.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// A histogram of microseconds (1 µs to 60 s, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    // Fixed, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a microsecond histogram, in ms; `None` if empty.
pub(crate) fn latency(h: &Histogram<u64>) -> Option<Latency> {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (!h.is_empty()).then(|| Latency {
        samples: h.len(),
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    })
}

/// What the probes share.
pub(crate) struct Probes {
    /// Publish→visible latencies, µs.
    pub latencies: Mutex<Histogram<u64>>,
    /// Probe positions never seen within [`PROBE_TIMEOUT`].
    pub timed_out: AtomicU64,
    /// Probe positions published (acknowledged QoS 1).
    pub published: AtomicU64,
    /// Set to stop the probes.
    pub stop: AtomicBool,
}

impl Probes {
    /// Empty counters.
    pub(crate) fn new() -> Arc<Probes> {
        Arc::new(Probes {
            latencies: Mutex::new(histogram()),
            timed_out: AtomicU64::new(0),
            published: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }
}

/// A connected rumqttc client (event loop in a task), after its CONNACK.
pub(crate) async fn connect(
    broker: &str,
    id: &str,
    token: Option<&str>,
) -> anyhow::Result<rumqttc::AsyncClient> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {broker:?} is not host:port"))?;
    let mut options = rumqttc::MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(token) = token {
        options.set_credentials("fleetd-bench", token);
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Err(e));
                    }
                    break;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("MQTT connect timed out")?
        .context("MQTT event loop ended")?
        .with_context(|| format!("cannot connect to {broker}"))?;
    Ok(client)
}

/// Probe number `index`: publishes a position at (`lat`, `lon`) with a
/// fresh `ts_ms`, polls until the API returns exactly it, records the
/// latency, pauses, repeats until stopped.
pub(crate) async fn run_probe(
    index: usize,
    client: rumqttc::AsyncClient,
    http: reqwest::Client,
    base: String,
    (lat, lon): (f64, f64),
    probes: Arc<Probes>,
) {
    let id = format!("bench-probe-{index}");
    let url = format!("{base}/v1/vehicles/{id}");
    let mut last_ts = 0;
    // Stagger the probes across the window.
    tokio::time::sleep(Duration::from_millis(137 * index as u64 % 1000)).await;
    while !probes.stop.load(Ordering::Relaxed) {
        let ts = fleetd_schemas::now_ms().max(last_ts + 1);
        last_ts = ts;
        let position = proto::Position {
            ts_ms: ts,
            lat: lat + index as f64 * 1e-4,
            lon,
            ..Default::default()
        };
        let sent = Instant::now();
        let topic = format!("fleet/{id}/pos");
        let payload = position.encode_to_vec();
        if client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            return;
        }
        probes.published.fetch_add(1, Ordering::Relaxed);
        let mut seen = false;
        while sent.elapsed() < PROBE_TIMEOUT {
            if let Ok(r) = http.get(&url).send().await
                && let Ok(body) = r.json::<serde_json::Value>().await
                && body["ts_ms"].as_i64() == Some(ts)
            {
                seen = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if seen {
            let us = sent.elapsed().as_micros() as u64;
            let mut h = probes.latencies.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.record(us.max(1));
        } else {
            probes.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcome of a burst of area queries.
#[derive(Debug, Clone, Serialize)]
pub struct QueryLoad {
    /// Queries answered 200.
    pub queries: u64,
    /// Queries that failed (non-200 or transport error).
    pub errors: u64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Answered queries per second.
    pub per_s: f64,
    /// Mean vehicles per answer.
    pub mean_results: f64,
    /// Latency of one query, ms.
    pub latency_ms: Option<Latency>,
}

/// Runs `total` `near` queries of `radius_m` at random points of the box
/// `(min_lat, min_lon, max_lat, max_lon)`, `concurrency` at a time, and times
/// each. `limit` is the API's page size for each answer.
pub(crate) async fn near_queries(
    http: &reqwest::Client,
    base: &str,
    area: (f64, f64, f64, f64),
    radius_m: f64,
    total: u64,
    concurrency: usize,
    limit: usize,
) -> QueryLoad {
    let done = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let results = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (http, base) = (http.clone(), base.to_owned());
        let (done, hist, errors, results) =
            (done.clone(), hist.clone(), errors.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64);
            while done.fetch_add(1, Ordering::Relaxed) < total {
                let lat = rng.random_range(area.0..area.2);
                let lon = rng.random_range(area.1..area.3);
                let url = format!(
                    "{base}/v1/vehicles?near={lat:.6},{lon:.6}&radius_m={radius_m}&limit={limit}"
                );
                let t = Instant::now();
                let answer = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
                    _ => None,
                };
                match answer {
                    Some(body) => {
                        let us = t.elapsed().as_micros() as u64;
                        let _ = hist
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(us.max(1));
                        results.fetch_add(body["count"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let queries = h.len();
    QueryLoad {
        queries,
        errors: errors.load(Ordering::Relaxed),
        concurrency,
        per_s: queries as f64 / elapsed.max(1e-9),
        mean_results: results.load(Ordering::Relaxed) as f64 / (queries.max(1) as f64),
        latency_ms: latency(&h),
    }
}
