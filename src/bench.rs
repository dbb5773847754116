//! `fleetd bench`: an end-to-end load test. It starts fleetd as a child
//! process on loopback (or targets a running one), publishes a simulated
//! fleet at a fixed rate over a few multiplexed MQTT connections, measures
//! publish→queryable latency with probe vehicles polled over HTTP, and
//! reports throughput, loss, latency percentiles and the server's CPU/RSS.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use fleetd_schemas::proto;
use fleetd_simulator::{CityGrid, Vehicle};
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;

use crate::simulate::parse_duration;

/// Flags of `fleetd bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Simulated vehicles (device ids `bench-{n}`).
    #[arg(long, default_value_t = 10_000)]
    pub vehicles: usize,
    /// Target positions per second, all connections together.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// How long to publish, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// MQTT connections the vehicles are multiplexed over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// MQTT QoS (0 or 1).
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Concurrent latency probes (each publishes, then polls until visible).
    #[arg(long, default_value_t = 4)]
    pub probes: usize,
    /// Micro-batch window of the fleetd the bench starts.
    #[arg(long, default_value_t = 1000)]
    pub window_ms: u64,
    /// Bench a running fleetd: its MQTT address (needs --http too).
    #[arg(long, requires = "http")]
    pub broker: Option<String>,
    /// Bench a running fleetd: its HTTP base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "broker")]
    pub http: Option<String>,
    /// Also hold this many Server-Sent Events clients on /v1/stream and
    /// report their delivery latency (publish → client read).
    #[arg(long, default_value_t = 0)]
    pub sse_clients: usize,
    /// bbox filter of the SSE clients (minLon,minLat,maxLon,maxLat); default
    /// none: every client receives every position.
    #[arg(long, requires = "sse_clients")]
    pub sse_bbox: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The bench result.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub vehicles: usize,
    pub target_rate: u64,
    pub connections: usize,
    pub qos: u8,
    pub window_ms: Option<u64>,
    pub duration_s: f64,
    /// Positions handed to the MQTT clients (probes included).
    pub published: u64,
    pub publish_rate: f64,
    /// Positions the server stored during the run (from its metrics).
    pub stored: u64,
    /// Stored per second, from the first publish until the last store.
    pub stored_rate: f64,
    /// published - stored (negative would mean double counting).
    pub lost: i64,
    pub rejected: u64,
    /// Publishes the broker dropped because ingest fell behind (server metric).
    pub broker_dropped: u64,
    pub latency_ms: Option<Latency>,
    /// Probes that never became visible within 10 s.
    pub probes_timed_out: u64,
    /// Server CPU over the run, in cores (1.0 = one core busy).
    pub server_cpu_cores: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    /// This bench process's own CPU, in cores: it shares the machine.
    pub client_cpu_cores: Option<f64>,
    /// Live stream clients (`--sse-clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::bench_live::LiveReport>,
}

/// Publish→queryable latency percentiles, milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// A fleetd the bench started; killed if the bench fails.
struct ChildServer {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the bench and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.vehicles == 0 || args.rate == 0 || args.connections == 0 {
        bail!("--vehicles, --rate and --connections must be > 0");
    }
    let qos = match args.qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        q => bail!("--qos must be 0 or 1, got {q}"),
    };
    let (broker, http, server) = match (&args.broker, &args.http) {
        (Some(b), Some(h)) => (b.clone(), h.trim_end_matches('/').to_owned(), None),
        _ => {
            let (b, h, s) = start_server(args.window_ms).await?;
            (b, h, Some(s))
        }
    };
    let pid = server.as_ref().map(|s| s.child.id());
    let http_client = reqwest::Client::new();
    let stored_before = scrape(&http_client, &http, "fleetd_positions_stored_total").await?;
    let rejected_before = rejected_total(&http_client, &http).await?;
    let dropped_before = scrape(&http_client, &http, "fleetd_broker_dropped_total").await?;
    let live = match args.sse_clients {
        0 => None,
        n => Some(crate::bench_live::start(&http, n, args.sse_bbox.as_deref()).await?),
    };
    let cpu_before = pid.and_then(cpu_seconds);
    let self_cpu_before = cpu_seconds_self();

    let progress = indicatif::ProgressBar::new(args.duration.as_secs());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for c in 0..args.connections {
        let client = connect(&broker, &format!("bench-pub-{c}"), qos).await?;
        let vehicles: Vec<u64> = (c as u64..args.vehicles as u64)
            .step_by(args.connections)
            .collect();
        let rate = args.rate as f64 / args.connections as f64;
        publishers.push(tokio::spawn(publish_loop(
            client,
            vehicles,
            rate,
            qos,
            Arc::clone(&published),
            Arc::clone(&stop),
        )));
    }
    let latencies = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
    ));
    let timed_out = Arc::new(AtomicU64::new(0));
    let mut probes = Vec::new();
    for p in 0..args.probes {
        let client = connect(
            &broker,
            &format!("bench-probe-client-{p}"),
            rumqttc::QoS::AtLeastOnce,
        )
        .await?;
        probes.push(tokio::spawn(probe_loop(
            p,
            client,
            http_client.clone(),
            http.clone(),
            Arc::clone(&latencies),
            Arc::clone(&timed_out),
            Arc::clone(&published),
            Arc::clone(&stop),
        )));
    }

    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = published.load(Ordering::Relaxed);
        progress.set_position(started.elapsed().as_secs());
        progress.set_message(format!(
            "published {n} ({:.0}/s)",
            n as f64 / started.elapsed().as_secs_f64()
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let publish_elapsed = started.elapsed();
    for p in publishers.into_iter().chain(probes) {
        p.await.context("bench task")?;
    }
    let published = published.load(Ordering::Relaxed);
    progress.finish_and_clear();

    // Wait until the server has stored everything, or stops making progress.
    let mut stored = 0;
    let mut last_change = Instant::now();
    let mut stored_at = Instant::now();
    while last_change.elapsed() < Duration::from_secs(5) {
        let now =
            scrape(&http_client, &http, "fleetd_positions_stored_total").await? - stored_before;
        if now != stored {
            stored = now;
            last_change = Instant::now();
            stored_at = Instant::now();
        }
        if stored >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed_total = stored_at.duration_since(started);
    let cores = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => Some((a - b) / elapsed_total.as_secs_f64()),
        _ => None,
    };
    let (rss, peak) = pid.map(memory_mb).unwrap_or((None, None));
    let latency = {
        let h = latencies.lock().unwrap_or_else(|e| e.into_inner());
        (!h.is_empty()).then(|| Latency {
            samples: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            p90: h.value_at_quantile(0.9) as f64 / 1000.0,
            p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            p999: h.value_at_quantile(0.999) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
        })
    };
    let live = match live {
        Some(clients) => {
            let dropped = scrape(
                &http_client,
                &http,
                "fleetd_live_dropped_clients_total{transport=\"sse\",reason=\"slow\"}",
            )
            .await?;
            Some(clients.finish(dropped).await?)
        }
        None => None,
    };
    let report = BenchReport {
        vehicles: args.vehicles,
        target_rate: args.rate,
        connections: args.connections,
        qos: args.qos,
        window_ms: server.as_ref().map(|_| args.window_ms),
        duration_s: publish_elapsed.as_secs_f64(),
        published,
        publish_rate: published as f64 / publish_elapsed.as_secs_f64(),
        stored,
        stored_rate: stored as f64 / elapsed_total.as_secs_f64(),
        lost: published as i64 - stored as i64,
        rejected: rejected_total(&http_client, &http).await? - rejected_before,
        broker_dropped: scrape(&http_client, &http, "fleetd_broker_dropped_total").await?
            - dropped_before,
        latency_ms: latency,
        probes_timed_out: timed_out.load(Ordering::Relaxed),
        server_cpu_cores: cores(cpu_before, pid.and_then(cpu_seconds)),
        server_rss_mb: rss,
        server_peak_rss_mb: peak,
        client_cpu_cores: cores(self_cpu_before, cpu_seconds_self()),
        live,
    };
    drop(server);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn print_human(r: &BenchReport) {
    println!(
        "fleetd bench: {} vehicles, target {}/s over {} connections, QoS {}",
        r.vehicles, r.target_rate, r.connections, r.qos
    );
    println!(
        "  published  {:>10}  ({:.0}/s over {:.1} s)",
        r.published, r.publish_rate, r.duration_s
    );
    println!("  stored     {:>10}  ({:.0}/s)", r.stored, r.stored_rate);
    println!(
        "  lost       {:>10}   (broker dropped {}, rejected {})",
        r.lost, r.broker_dropped, r.rejected
    );
    match &r.latency_ms {
        Some(l) => println!(
            "  publish→queryable ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} probes, {} timed out)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.samples, r.probes_timed_out
        ),
        None => println!("  publish→queryable: no probe samples"),
    }
    if let (Some(cpu), Some(rss), Some(peak)) =
        (r.server_cpu_cores, r.server_rss_mb, r.server_peak_rss_mb)
    {
        println!("  server: {cpu:.2} cores, RSS {rss:.0} MB (peak {peak:.0} MB)");
    }
    if let Some(cpu) = r.client_cpu_cores {
        println!("  bench client: {cpu:.2} cores (same machine)");
    }
    if let Some(live) = &r.live {
        println!(
            "  live: {} SSE clients ({} connected, {} ended early, {} dropped as slow), {} events, {:.0} events/s per client",
            live.clients,
            live.connected,
            live.ended_early,
            live.server_dropped_slow,
            live.events,
            live.events_per_client_s
        );
        if let Some(l) = &live.delivery_ms {
            println!(
                "  publish→client ms: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} events)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            );
        }
    }
}

/// Starts `fleetd serve` (this executable) on free loopback ports.
async fn start_server(window_ms: u64) -> anyhow::Result<(String, String, ChildServer)> {
    let data = tempfile::tempdir().context("temporary data directory")?;
    let port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (mqtt, http) = (
        format!("127.0.0.1:{}", port()?),
        format!("127.0.0.1:{}", port()?),
    );
    let exe: PathBuf = std::env::current_exe().context("own executable")?;
    let child = Command::new(exe)
        .args([
            "serve",
            "--mqtt",
            &mqtt,
            "--http",
            &http,
            "--window-ms",
            &window_ms.to_string(),
        ])
        .arg("--data")
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start fleetd serve")?;
    let server = ChildServer { child, _data: data };
    let url = format!("http://{http}");
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok((mqtt, url, server));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("fleetd did not become ready within 20 s")
}

async fn connect(
    broker: &str,
    id: &str,
    _qos: rumqttc::QoS,
) -> anyhow::Result<rumqttc::AsyncClient> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {broker:?} is not host:port"))?;
    let mut options = rumqttc::MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(1000);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
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

/// Publishes `rate` positions/s round-robin over `vehicles`, in 10 ms slices.
async fn publish_loop(
    client: rumqttc::AsyncClient,
    vehicles: Vec<u64>,
    rate: f64,
    qos: rumqttc::QoS,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let grid = CityGrid::new(52.52, 13.405);
    let mut fleet: Vec<(String, Vehicle, i64, u64)> = vehicles
        .iter()
        .map(|&i| (format!("bench-{i}"), Vehicle::new(grid, 1, i), 0, 0))
        .collect();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) && !fleet.is_empty() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let (id, vehicle, last_ts, seq) = &mut fleet[next];
            next = (next + 1) % vehicles.len();
            let now = fleetd_schemas::now_ms();
            let ts = now.max(*last_ts + 1);
            if *last_ts > 0 {
                vehicle.advance(Duration::from_millis((ts - *last_ts) as u64));
            }
            *last_ts = ts;
            let position = vehicle.fix().to_position(id, ts, *seq);
            *seq += 1;
            let topic = format!("fleet/{id}/pos");
            if client
                .publish(topic, qos, false, position.encode_to_vec())
                .await
                .is_err()
            {
                return;
            }
            sent += 1;
            published.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Let the event loop flush what is queued before the task ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Publishes one probe position at a time and polls the API until it is
/// visible, recording the latency (µs).
#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    index: usize,
    client: rumqttc::AsyncClient,
    http: reqwest::Client,
    base: String,
    latencies: Arc<std::sync::Mutex<Histogram<u64>>>,
    timed_out: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let id = format!("bench-probe-{index}");
    let url = format!("{base}/v1/vehicles/{id}");
    let mut last_ts = 0;
    // Stagger the probes across the window.
    tokio::time::sleep(Duration::from_millis(137 * index as u64 % 1000)).await;
    while !stop.load(Ordering::Relaxed) {
        let ts = fleetd_schemas::now_ms().max(last_ts + 1);
        last_ts = ts;
        let position = proto::Position {
            ts_ms: ts,
            lat: 52.5 + index as f64 * 1e-3,
            lon: 13.4,
            ..Default::default()
        };
        let sent = Instant::now();
        if client
            .publish(
                format!("fleet/{id}/pos"),
                rumqttc::QoS::AtLeastOnce,
                false,
                position.encode_to_vec(),
            )
            .await
            .is_err()
        {
            return;
        }
        published.fetch_add(1, Ordering::Relaxed);
        let mut seen = false;
        while sent.elapsed() < Duration::from_secs(10) {
            if let Ok(r) = http.get(&url).send().await
                && let Ok(body) = r.json::<serde_json::Value>().await
                && body["ts_ms"].as_i64() == Some(ts)
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if seen {
            let us = sent.elapsed().as_micros() as u64;
            let mut h = latencies.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.record(us.max(1));
        } else {
            timed_out.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(client: &reqwest::Client, base: &str, series: &str) -> anyhow::Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0) as u64)
}

async fn rejected_total(client: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .context("GET /metrics")?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("fleetd_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// User + system CPU seconds of a process, from /proc (Linux; USER_HZ=100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn cpu_seconds_self() -> Option<f64> {
    cpu_from_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn cpu_from_stat(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Current and peak RSS of a process in MB, from /proc (Linux).
fn memory_mb(pid: u32) -> (Option<f64>, Option<f64>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (fleetd serve) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_from_stat(stat), Some(3.0));
    }
}
