//! Logging and the Prometheus metrics recorder.

use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Logs to stderr; `RUST_LOG` overrides the level chosen by `-v`.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        // The store engine reports its flushes and compactions at INFO.
        0 => "info,rumqttd=warn,lsm_tree=warn,fjall=warn",
        1 => "debug,rumqttd=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // rumqttd opens an error-level span per publish with its topic
    // Debug-formatted; the fmt layer records every span's fields eagerly,
    // which cost ~15% of the server's CPU under load. Its events still log.
    let no_broker_spans =
        filter_fn(|meta| !(meta.is_span() && meta.target().starts_with("rumqttd")));
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(no_broker_spans),
        )
        .init();
}

/// Installs the global metrics recorder and returns the handle `/metrics`
/// renders. Latencies are Prometheus histograms (aggregatable across
/// instances), with buckets from 1 ms to 60 s.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
        10.0, 30.0, 60.0,
    ];
    const POSITIONS: &[f64] = &[
        1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .context("metric buckets")?
        .set_buckets_for_metric(Matcher::Suffix("_positions".into()), POSITIONS)
        .context("metric buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds
/// until `cancel`. The recorder keeps each sample (8 bytes) until an upkeep
/// or a scrape of `/metrics`; the pipeline records two per position, so a
/// fleetd that nobody scrapes would otherwise grow by ~1 MB/s at 50k
/// positions/s (`install_recorder` leaves this to the caller).
pub async fn metrics_upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}
