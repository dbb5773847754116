//! `fleetd simulate`: the command-line front-end of the fleet simulator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fleetd_simulator::{Chaos, Outages, Qos, RoadMap, SimConfig};
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
}

/// Parses `90`, `90s`, `250ms`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 60s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Loads `--map` (off the async runtime: parsing a large extract takes a
/// while).
pub fn load_map(map: Option<&str>) -> anyhow::Result<Option<Arc<RoadMap>>> {
    let Some(name) = map else {
        return Ok(None);
    };
    let roads = RoadMap::named(name).with_context(|| format!("--map {name}"))?;
    tracing::info!(
        map = name,
        nodes = roads.node_count(),
        segments = roads.edge_count(),
        km = roads.total_length_m() / 1000.0,
        "road map loaded"
    );
    Ok(Some(Arc::new(roads)))
}

/// Runs the simulator until the duration passes or Ctrl-C.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let map = args.map.clone();
    let roads = tokio::task::spawn_blocking(move || load_map(map.as_deref()))
        .await
        .context("map loading task")??;
    let config = SimConfig {
        broker: args.broker,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
