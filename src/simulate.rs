//! `fleetd simulate`: the command-line front-end of the fleet simulator.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use std::sync::Arc;

use fleetd_simulator::{Chaos, Credentials, Outages, Qos, RoadMap, SimConfig, parse_duration};
use tokio_util::sync::CancellationToken;

/// Flags of `fleetd simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// MQTT broker to publish to.
    #[arg(long, default_value = "127.0.0.1:1883", env = "FLEETD_SIM_BROKER")]
    pub broker: String,
    /// Number of vehicles.
    #[arg(long, default_value_t = 1000)]
    pub vehicles: usize,
    /// Share N MQTT connections among the vehicles instead of one each
    /// (for fleets larger than the machine's connection limits).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Drive a real road network: `helsinki` (the embedded OpenStreetMap
    /// extract) or a `.osm.pbf` file. Default: a synthetic city grid.
    #[arg(long)]
    pub map: Option<String>,
    /// Deliberate faults per publish: one rate for all (`0.01`) or
    /// `malformed=R,duplicate=R,late=R,out_of_order=R`.
    #[arg(long, default_value = "0")]
    pub chaos: Chaos,
    /// Phones going offline: outages per vehicle per hour (10 s to 2 min
    /// each, buffered and flushed as pos/batch on reconnect).
    #[arg(long, default_value_t = 0.0)]
    pub offline_per_hour: f64,
    /// Positions per second per vehicle.
    #[arg(long, default_value_t = 1.0)]
    pub rate_hz: f64,
    /// How long to run, e.g. 60s, 5m, 1h (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// MQTT QoS of the publishes (0 or 1).
    #[arg(long, default_value = "1")]
    pub qos: Qos,
    /// Random seed: the same seed drives the same routes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prefix of the device ids (`{prefix}{n}`).
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// MQTT user name of every connection (with --password).
    #[arg(long, env = "FLEETD_SIM_USERNAME", default_value = "fleetd-simulator")]
    pub username: String,
    /// MQTT password of every connection: for fleetd an API token with
    /// `write` scope (`fleetd token create --scope write`). Prefer the
    /// environment variable to the flag.
    #[arg(long, env = "FLEETD_SIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Per-device secrets, as `fleetd credentials issue --format json`
    /// prints them: each vehicle logs in as its own device (ids
    /// `{prefix}{n}`; vehicles without an entry connect without one).
    #[arg(long, conflicts_with = "password")]
    pub credentials: Option<std::path::PathBuf>,
}

/// Reads a `fleetd credentials issue --format json` answer: device id →
/// secret.
fn read_credentials(path: &std::path::Path) -> anyhow::Result<Credentials> {
    #[derive(serde::Deserialize)]
    struct Issued {
        username: String,
        password: String,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let issued: Vec<Issued> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected the JSON list `fleetd credentials issue --format json` prints",
            path.display()
        )
    })?;
    Ok(Credentials::PerDevice(Arc::new(
        issued
            .into_iter()
            .map(|c| (c.username, c.password))
            .collect(),
    )))
}

/// Runs the simulator until the duration passes or Ctrl-C.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let map = args.map.clone();
    let roads = tokio::task::spawn_blocking(move || RoadMap::load(map.as_deref()))
        .await
        .context("map loading task")?
        .with_context(|| format!("--map {}", args.map.as_deref().unwrap_or_default()))?;
    let credentials = match (&args.password, &args.credentials) {
        (Some(password), _) => Credentials::Shared {
            username: args.username.clone(),
            password: password.clone(),
        },
        (None, Some(path)) => read_credentials(path)?,
        (None, None) => Credentials::Anonymous,
    };
    let config = SimConfig {
        broker: args.broker,
        credentials,
        vehicles: args.vehicles,
        connections: args.connections,
        roads,
        chaos: args.chaos,
        outages: Outages {
            per_hour: args.offline_per_hour,
            ..SimConfig::default().outages
        },
        rate_hz: args.rate_hz,
        duration: args.duration,
        qos: args.qos,
        seed: args.seed,
        id_prefix: args.id_prefix,
        show_progress: true,
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let report = fleetd_simulator::run(config, cancel)
        .await
        .context("simulation failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!("{}", report.summary());
    }
    Ok(())
}
