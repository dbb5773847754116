//! `fleetd bench`: the end-to-end load test, a crate of its own so that the
//! server's crate carries none of its code or dependencies.
//!
//! [`run`] with [`BenchArgs`] (the subcommand's flags) starts fleetd as a
//! child process on loopback (the `fleetd` executable running the bench, or
//! targets a running server), drives the simulator's
//! fleet (multiplexed connections, any map, optional chaos) at a fixed total
//! rate, once per QoS asked for, measures publish→queryable latency with
//! probe vehicles polled over HTTP, optionally loads the `near` query, and
//! reports throughput, loss per QoS, latency percentiles, batch sizes and
//! durations (from the server's `/metrics`) and the server's CPU/RSS.
//!
//! Its scripts (`side-by-side`, `scaling`, `geofence/`) run it against peer
//! systems and write `results/`; it is an application crate, so errors are
//! `anyhow` like the binary's.

mod fences;
mod history;
mod live;
mod probe;
mod scrape;
mod server;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use fleetd_simulator::{Chaos, ChaosCounts, Credentials, Outages, Qos, SimConfig};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::probe::{Latency, Probes, QueryLoad};
use self::scrape::{HistogramDelta, Scrape};
use self::server::{ChildServer, cpu_seconds, memory_mb};
use fleetd_simulator::{RoadMap, parse_duration};

/// Flags of `fleetd bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Simulated vehicles (device ids `bench-q{qos}-{n}`).
    #[arg(long, default_value_t = 10_000)]
    pub vehicles: usize,
    /// Target positions per second, the whole fleet together.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// How long to publish per QoS phase, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// MQTT connections the vehicles are multiplexed over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// MQTT QoS per phase: `0`, `1` or `0,1` (one phase each, in order).
    #[arg(long, default_value = "0", value_delimiter = ',')]
    pub qos: Vec<Qos>,
    /// Concurrent latency probes (each publishes, then polls until visible).
    #[arg(long, default_value_t = 4)]
    pub probes: usize,
    /// Micro-batch window of the fleetd the bench starts.
    #[arg(long, default_value_t = 1000)]
    pub window_ms: u64,
    /// Drive a road network (`helsinki` or a .osm.pbf file) instead of the grid.
    #[arg(long)]
    pub map: Option<String>,
    /// Size of the synthetic grid city, km across (it spreads the fleet:
    /// density matters for area queries).
    #[arg(long, default_value_t = 3.0)]
    pub city_km: f64,
    /// Deliberate faults per publish (see `fleetd simulate --chaos`).
    #[arg(long, default_value = "0")]
    pub chaos: Chaos,
    /// Phones going offline per vehicle per hour (flushing pos/batch on return).
    #[arg(long, default_value_t = 0.0)]
    pub offline_per_hour: f64,
    /// Seed of the fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// After the phases, run this many `near` queries against the stored fleet.
    #[arg(long, default_value_t = 0)]
    pub near_queries: u64,
    /// Concurrent clients of the `near` queries.
    #[arg(long, default_value_t = 8)]
    pub near_concurrency: usize,
    /// Radius of the `near` queries, metres.
    #[arg(long, default_value_t = 1000.0)]
    pub near_radius_m: f64,
    /// Bench a running fleetd: its MQTT address (needs --http too).
    #[arg(long, requires = "http")]
    pub broker: Option<String>,
    /// Bench a running fleetd: its HTTP base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "broker")]
    pub http: Option<String>,
    /// Write the fleet's first positions (`device_id,lat,lon`, as the first
    /// QoS phase publishes them on the grid) to FILE and exit.
    #[arg(long)]
    pub export_fleet: Option<PathBuf>,
    /// Instead of the end-to-end run, write this many rows straight into a
    /// throwaway embedded store and time the write path.
    #[arg(long, default_value_t = 0)]
    pub store_rows: u64,
    /// Rows per store write batch (with --store-rows).
    #[arg(long, default_value_t = 10_000)]
    pub store_batch: usize,
    /// With --store-rows: time the write path with encryption at rest off
    /// and on, side by side (alternating runs, each on a fresh store).
    #[arg(long, requires = "store_rows")]
    pub store_sealed: bool,
    /// With --store-sealed: runs of each kind.
    #[arg(long, default_value_t = 3, requires = "store_sealed")]
    pub store_runs: usize,
    /// Instead of the end-to-end run: the fleet (--vehicles) drives this
    /// many hours at 1 Hz straight into a throwaway embedded store; history
    /// on disk and its read speed are measured as rows, then again after
    /// maintenance merged them into blocks (side by side, same data).
    #[arg(long, default_value_t = 0.0)]
    pub history_hours: f64,
    /// With --history-hours: encrypt the store's values at rest (a fresh
    /// key), as `--store-key` does.
    #[arg(long)]
    pub history_sealed: bool,
    /// With --store-rows: also write the rows as CSV to FILE.
    #[arg(long)]
    pub export_rows: Option<PathBuf>,
    /// Also hold this many Server-Sent Events clients on /v1/stream during
    /// the phases and report their delivery latency (publish → client read).
    #[arg(long, default_value_t = 0)]
    pub sse_clients: usize,
    /// bbox filter of the SSE clients (minLon,minLat,maxLon,maxLat); default
    /// none: every client receives every position.
    #[arg(long, requires = "sse_clients")]
    pub sse_bbox: Option<String>,
    /// Create this many geofences (50-vertex polygons, 100–1000 m, spread
    /// over the grid city) through the API before the phases, so every
    /// position is evaluated against them.
    #[arg(long, default_value_t = 0)]
    pub geofences: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Start fleetd with `--allow-anonymous` (authentication off), to
    /// compare against the default (authentication and topic ACL on).
    #[arg(long, conflicts_with = "broker")]
    pub allow_anonymous: bool,
    /// API token for a running fleetd (with --broker/--http): sent on
    /// every HTTP request and used as the MQTT password of every
    /// connection. Needs `write` scope (`admin` for nothing more). The
    /// bench's own fleetd uses its admin token.
    #[arg(long, env = "FLEETD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An HTTP client that sends `token` as `Authorization: Bearer` on every
/// request.
pub(crate) fn http_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .context("HTTP client")
}

/// The bench result.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Vehicles per phase.
    pub vehicles: usize,
    /// Target positions/s.
    pub target_rate: u64,
    /// MQTT connections of the fleet.
    pub connections: usize,
    /// Window of the server the bench started (`None`: a running one).
    pub window_ms: Option<u64>,
    /// `grid` or the map name.
    pub map: String,
    /// Fault rates injected.
    pub chaos: Chaos,
    /// Cores of this machine (client and server share them).
    pub machine_cores: usize,
    /// One per QoS asked for.
    pub phases: Vec<Phase>,
    /// Geofences created before the phases (`--geofences`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geofences: Option<fences::FenceSetup>,
    /// The `near` query load, if asked for.
    pub near: Option<QueryLoad>,
    /// Live stream clients (`--sse-clients`), over all phases.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<live::LiveReport>,
    /// Server RSS at the end, MB.
    pub server_rss_mb: Option<f64>,
    /// Server peak RSS, MB.
    pub server_peak_rss_mb: Option<f64>,
}

/// One QoS phase.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// QoS of every publish (probes always use 1).
    pub qos: Qos,
    /// Publishing time, s.
    pub duration_s: f64,
    /// Positions confirmed delivered to the broker (probes included).
    pub published: u64,
    /// Published per second.
    pub publish_rate: f64,
    /// Positions the simulator could not deliver (client side).
    pub failed: u64,
    /// Positions the server stored during the phase (its metric).
    pub stored: u64,
    /// Stored per second, from the first publish until the last store.
    pub stored_rate: f64,
    /// published − stored (negative would mean double counting).
    pub lost: i64,
    /// Rejected by the server (malformed chaos is expected here).
    pub rejected: u64,
    /// Publishes the broker dropped because ingest fell behind.
    pub broker_dropped: u64,
    /// Exact duplicates the processor dropped.
    pub duplicates_dropped: u64,
    /// Late positions (history only).
    pub late_positions: u64,
    /// Alerts raised (geofence enter/exit/dwell, overspeed).
    pub alerts: u64,
    /// Offline batches delivered.
    pub offline_batches: u64,
    /// Deliberate faults the fleet injected.
    pub chaos: ChaosCounts,
    /// Publish→queryable latency, ms.
    pub latency_ms: Option<Latency>,
    /// Probes that never became visible within 10 s.
    pub probes_timed_out: u64,
    /// Positions per micro-batch (server histogram).
    pub batch_positions: Option<HistogramDelta>,
    /// Seconds per micro-batch, processing plus store write.
    pub batch_seconds: Option<HistogramDelta>,
    /// Seconds from ingest to stored, per position.
    pub ingest_to_store_seconds: Option<HistogramDelta>,
    /// Server CPU over the phase, cores (1.0 = one core busy).
    pub server_cpu_cores: Option<f64>,
    /// This bench process's CPU, cores: it shares the machine.
    pub client_cpu_cores: Option<f64>,
    /// Server RSS at the end of the phase, MB.
    pub server_rss_mb: Option<f64>,
}

/// Runs the bench and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.vehicles == 0 || args.rate == 0 || args.connections == 0 {
        bail!("--vehicles, --rate and --connections must be > 0");
    }
    if args.connections > args.vehicles {
        bail!("--connections must not exceed --vehicles");
    }
    if args.qos.is_empty() {
        bail!("--qos needs at least one of 0, 1");
    }
    if !(args.city_km.is_finite() && (0.1..=500.0).contains(&args.city_km)) {
        bail!("--city-km must be in 0.1..=500");
    }
    let block_m = 150.0;
    let blocks = ((args.city_km * 1000.0 / block_m).round() as u32).max(1);
    if let Some(path) = &args.export_fleet {
        let (path, vehicles, seed) = (path.clone(), args.vehicles, args.seed);
        tokio::task::spawn_blocking(move || {
            store::export_fleet(&path, &store::fleet(vehicles, blocks, seed))
        })
        .await
        .context("export task")??;
        return Ok(());
    }
    if args.history_hours > 0.0 {
        let run = history::run(
            args.vehicles,
            args.history_hours,
            args.seed,
            args.history_sealed,
        )
        .await?;
        match args.json {
            true => println!("{}", serde_json::to_string_pretty(&run)?),
            false => history::print(&run),
        }
        return Ok(());
    }
    if args.store_rows > 0 && args.store_sealed {
        return store::store_sealed_side_by_side(
            args.vehicles,
            args.store_rows,
            args.store_batch,
            args.store_runs.max(1),
            args.json,
        )
        .await;
    }
    if args.store_rows > 0 {
        let result = store::store_write(
            args.vehicles,
            args.store_rows,
            args.store_batch,
            args.export_rows.as_deref(),
            false,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        } else {
            println!(
                "store write: {} rows in {} batches of {}: {:.0} rows/s (mean {:.1} ms per batch, max {:.1} ms)",
                result.rows,
                result.batches,
                result.batch_rows,
                result.rows_per_s,
                result.mean_batch_ms,
                result.max_batch_ms
            );
        }
        return Ok(());
    }
    let map_name = args.map.clone();
    let roads = tokio::task::spawn_blocking(move || RoadMap::load(map_name.as_deref()))
        .await
        .context("map loading task")?
        .with_context(|| format!("--map {}", args.map.as_deref().unwrap_or_default()))?;
    let server = match (&args.broker, &args.http) {
        (Some(_), Some(_)) => None,
        _ => Some(ChildServer::start(args.window_ms, args.allow_anonymous).await?),
    };
    let token = match &server {
        Some(s) => s.admin_token.clone(),
        None => args.token.clone(),
    };
    let token = token.as_deref();
    let (broker, http) = match (&server, &args.broker, &args.http) {
        (Some(s), _, _) => (s.mqtt.clone(), s.http.clone()),
        (None, Some(b), Some(h)) => (b.clone(), h.trim_end_matches('/').to_owned()),
        _ => bail!("--broker and --http go together"),
    };
    let pid = server.as_ref().map(ChildServer::pid);
    let http_client = http_client(token)?;
    let center = roads.as_ref().map_or((52.52, 13.405), |r| r.center());

    let geofences = match args.geofences {
        0 => None,
        n => {
            if !args.json {
                eprintln!(
                    "geofences: creating {n} over {:.0} km x {:.0} km",
                    args.city_km, args.city_km
                );
            }
            Some(
                fences::create(
                    &http_client,
                    &http,
                    n,
                    center,
                    args.city_km,
                    args.seed,
                    !args.json,
                )
                .await?,
            )
        }
    };
    let sse = match args.sse_clients {
        0 => None,
        n => Some(live::start(&http, token, n, args.sse_bbox.as_deref()).await?),
    };
    let mut phases = Vec::new();
    for (n, &qos) in args.qos.iter().enumerate() {
        let config = SimConfig {
            broker: broker.clone(),
            vehicles: args.vehicles,
            connections: Some(args.connections),
            roads: roads.clone(),
            chaos: args.chaos,
            outages: Outages {
                per_hour: args.offline_per_hour,
                ..SimConfig::default().outages
            },
            rate_hz: args.rate as f64 / args.vehicles as f64,
            duration: Some(args.duration),
            qos,
            seed: args.seed + n as u64,
            center_lat: center.0,
            center_lon: center.1,
            grid_blocks: blocks,
            grid_block_m: block_m,
            id_prefix: format!("bench-q{}-", qos.level()),
            show_progress: !args.json,
            drain_timeout: Duration::from_secs(20),
            credentials: match token {
                Some(t) => Credentials::Shared {
                    username: "fleetd-bench".into(),
                    password: t.to_owned(),
                },
                None => Credentials::Anonymous,
            },
            ..SimConfig::default()
        };
        if !args.json {
            eprintln!(
                "phase {}/{}: QoS {qos}, {} vehicles, {}/s for {:.0} s",
                n + 1,
                args.qos.len(),
                args.vehicles,
                args.rate,
                args.duration.as_secs_f64()
            );
        }
        phases.push(
            run_phase(
                &args,
                config,
                &Target {
                    broker: &broker,
                    http: &http,
                    client: &http_client,
                    token,
                    pid,
                },
                center,
            )
            .await?,
        );
    }

    let live = match sse {
        Some(clients) => {
            let scrape = Scrape::fetch(&http_client, &http).await?;
            let dropped = scrape.total("fleetd_live_dropped_clients_total");
            Some(clients.finish(dropped as u64).await?)
        }
        None => None,
    };
    let near = if args.near_queries > 0 {
        // Half the city across, around its centre: where the fleet drives.
        let (m_lat, m_lon) = (111_200.0, 111_200.0 * center.0.to_radians().cos().max(0.01));
        let half = args.city_km * 1000.0 / 2.0 * 0.8;
        let area = match &roads {
            Some(_) => (
                center.0 - 600.0 / m_lat,
                center.1 - 600.0 / m_lon,
                center.0 + 600.0 / m_lat,
                center.1 + 600.0 / m_lon,
            ),
            None => (
                center.0 - half / m_lat,
                center.1 - half / m_lon,
                center.0 + half / m_lat,
                center.1 + half / m_lon,
            ),
        };
        if !args.json {
            eprintln!(
                "near: {} queries of {} m, {} at a time",
                args.near_queries, args.near_radius_m, args.near_concurrency
            );
        }
        Some(
            probe::near_queries(
                &http_client,
                &http,
                area,
                args.near_radius_m,
                args.near_queries,
                args.near_concurrency.max(1),
                1000,
            )
            .await,
        )
    } else {
        None
    };
    let (rss, peak) = pid.map(|p| memory_mb(Some(p))).unwrap_or((None, None));
    let report = BenchReport {
        vehicles: args.vehicles,
        target_rate: args.rate,
        connections: args.connections,
        window_ms: server.as_ref().map(|_| args.window_ms),
        map: args
            .map
            .clone()
            .unwrap_or_else(|| format!("grid {:.1} km", args.city_km)),
        chaos: args.chaos,
        machine_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        phases,
        geofences,
        near,
        live,
        server_rss_mb: rss,
        server_peak_rss_mb: peak,
    };
    drop(server);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

/// The fleetd under test as a phase talks to it.
struct Target<'a> {
    broker: &'a str,
    http: &'a str,
    client: &'a reqwest::Client,
    /// MQTT password of the probes (an API token), if authentication is on.
    token: Option<&'a str>,
    pid: Option<u32>,
}

async fn run_phase(
    args: &BenchArgs,
    config: SimConfig,
    target: &Target<'_>,
    center: (f64, f64),
) -> anyhow::Result<Phase> {
    let Target {
        broker,
        http,
        client,
        token,
        pid,
    } = *target;
    let qos = config.qos;
    let before = Scrape::fetch(client, http).await?;
    let (cpu_before, self_before) = (pid.and_then(|p| cpu_seconds(Some(p))), cpu_seconds(None));
    let started = Instant::now();

    let probes = Probes::new();
    let mut probe_tasks = Vec::new();
    for p in 0..args.probes {
        let mqtt = probe::connect(
            broker,
            &format!("bench-probe-client-{}-{p}", qos.level()),
            token,
        )
        .await?;
        probe_tasks.push(tokio::spawn(probe::run_probe(
            p,
            mqtt,
            client.clone(),
            http.to_owned(),
            center,
            Arc::clone(&probes),
        )));
    }
    let report = fleetd_simulator::run(config, CancellationToken::new())
        .await
        .context("simulated fleet")?;
    probes.stop.store(true, Ordering::Relaxed);
    for task in probe_tasks {
        task.await.context("probe task")?;
    }
    let published = report.published + probes.published.load(Ordering::Relaxed);

    // Wait until the server has stored everything, or stops making progress.
    let base_stored = before.total("fleetd_positions_stored_total");
    let (mut stored, mut last_change, mut stored_at) = (0u64, Instant::now(), Instant::now());
    let mut after = before.clone();
    while last_change.elapsed() < Duration::from_secs(5) {
        after = Scrape::fetch(client, http).await?;
        let now = (after.total("fleetd_positions_stored_total") - base_stored) as u64;
        if now != stored {
            (stored, last_change, stored_at) = (now, Instant::now(), Instant::now());
        }
        if stored >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = stored_at.duration_since(started).as_secs_f64().max(1e-9);
    let cores = |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| (a - b) / elapsed);
    let delta = |name: &str| (after.total(name) - before.total(name)).max(0.0) as u64;
    let latency = probe::latency(&probes.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Phase {
        qos,
        duration_s: report.elapsed.as_secs_f64(),
        published,
        publish_rate: published as f64 / report.elapsed.as_secs_f64().max(1e-9),
        failed: report.failed,
        stored,
        stored_rate: stored as f64 / elapsed,
        lost: published as i64 - stored as i64,
        rejected: delta("fleetd_rejected_total"),
        broker_dropped: delta("fleetd_broker_dropped_total"),
        duplicates_dropped: delta("fleetd_duplicates_total"),
        late_positions: delta("fleetd_late_positions_total"),
        alerts: delta("fleetd_alerts_total"),
        offline_batches: report.batches,
        chaos: report.chaos,
        latency_ms: latency,
        probes_timed_out: probes.timed_out.load(Ordering::Relaxed),
        batch_positions: after.histogram_since(&before, "fleetd_batch_positions"),
        batch_seconds: after.histogram_since(&before, "fleetd_batch_duration_seconds"),
        ingest_to_store_seconds: after.histogram_since(&before, "fleetd_ingest_to_store_seconds"),
        server_cpu_cores: cores(cpu_before, pid.and_then(|p| cpu_seconds(Some(p)))),
        client_cpu_cores: cores(self_before, cpu_seconds(None)),
        server_rss_mb: pid.and_then(|p| memory_mb(Some(p)).0),
    })
}

fn print_human(r: &BenchReport) {
    println!(
        "fleetd bench: {} vehicles on {}, target {}/s over {} connections, {} cores shared by client and server",
        r.vehicles, r.map, r.target_rate, r.connections, r.machine_cores
    );
    if let Some(g) = &r.geofences {
        println!(
            "geofences: {} created in {:.1} s ({:.0}/s)",
            g.fences, g.seconds, g.per_s
        );
    }
    for p in &r.phases {
        println!("QoS {}:", p.qos);
        println!(
            "  published  {:>10}  ({:.0}/s over {:.1} s; {} failed client-side)",
            p.published, p.publish_rate, p.duration_s, p.failed
        );
        println!("  stored     {:>10}  ({:.0}/s)", p.stored, p.stored_rate);
        if p.alerts > 0 {
            println!("  alerts     {:>10}", p.alerts);
        }
        println!(
            "  lost       {:>10}   (broker dropped {}, rejected {}, duplicates dropped {}, late {})",
            p.lost, p.broker_dropped, p.rejected, p.duplicates_dropped, p.late_positions
        );
        match &p.latency_ms {
            Some(l) => println!(
                "  publish→queryable ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} probes, {} timed out)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples, p.probes_timed_out
            ),
            None => println!("  publish→queryable: no probe samples"),
        }
        if let (Some(b), Some(d)) = (&p.batch_positions, &p.batch_seconds) {
            println!(
                "  batches: {} of mean {:.0} positions (p99 {:.0}), mean {:.1} ms (p99 {:.1} ms)",
                b.count,
                b.mean,
                b.p99,
                d.mean * 1000.0,
                d.p99 * 1000.0
            );
        }
        if let (Some(cpu), Some(rss)) = (p.server_cpu_cores, p.server_rss_mb) {
            println!("  server: {cpu:.2} cores, RSS {rss:.0} MB");
        }
        if let Some(cpu) = p.client_cpu_cores {
            println!("  bench client: {cpu:.2} cores (same machine)");
        }
    }
    if let Some(n) = &r.near {
        match &n.latency_ms {
            Some(l) => println!(
                "near: {} queries ({} errors) at {:.0}/s with {} clients, {:.0} vehicles per answer; ms p50 {:.2} p99 {:.2} max {:.2}",
                n.queries, n.errors, n.per_s, n.concurrency, n.mean_results, l.p50, l.p99, l.max
            ),
            None => println!("near: no query answered ({} errors)", n.errors),
        }
    }
    if let Some(live) = &r.live {
        println!(
            "live: {} SSE clients ({} connected, {} ended early, {} dropped as slow), {} events, {:.0} events/s per client",
            live.clients,
            live.connected,
            live.ended_early,
            live.server_dropped_slow,
            live.events,
            live.events_per_client_s
        );
        if let Some(l) = &live.delivery_ms {
            println!(
                "  delivery ms (hub publish → client read): p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
    }
    if let (Some(rss), Some(peak)) = (r.server_rss_mb, r.server_peak_rss_mb) {
        println!("server RSS {rss:.0} MB at the end (peak {peak:.0} MB)");
    }
}
