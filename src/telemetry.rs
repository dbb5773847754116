//! Logging and the Prometheus metrics recorder.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Logs to stderr, as text (coloured only when stderr is a terminal) or
/// JSON lines; `RUST_LOG` overrides the level chosen by `-v`.
pub fn init_logging(verbose: u8, format: crate::cli::LogFormat) {
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
    let layer = match format {
        crate::cli::LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        crate::cli::LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_broker_spans))
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

/// How a series in [`SERIES`] comes to exist at start.
#[derive(Clone, Copy)]
enum Start {
    /// A label-less series at zero (an empty histogram): a node that has
    /// seen nothing yet shows 0, not "No data". Labelled series of the
    /// same name appear beside it as their labels are first used.
    Zero,
    /// Described only: the code that owns it registers it at start with
    /// its labels (every reason of `fleetd_rejected_total`), or it must not
    /// read 0 when unused (a certificate's expiry time without TLS).
    Described,
}

/// What a series in [`SERIES`] is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series that the README, the Grafana dashboard or an operator's
/// alert may name, with its HELP text (`tests/e2e/api.rs` checks the
/// first scrape against the README and the dashboard).
const SERIES: &[(&str, Kind, Start, &str)] = &[
    // Ingest.
    (
        "fleetd_received_total",
        Kind::Counter,
        Start::Zero,
        "Positions decoded from MQTT and HTTP ingest.",
    ),
    (
        "fleetd_rejected_total",
        Kind::Counter,
        Start::Described,
        "Publishes and positions refused by ingest validation, by reason code.",
    ),
    (
        "fleetd_ignored_total",
        Kind::Counter,
        Start::Zero,
        "Messages accepted and deliberately ignored (OwnTracks non-location types), by kind.",
    ),
    (
        "fleetd_ingest_blocked_seconds",
        Kind::Histogram,
        Start::Zero,
        "How long an ingest append waited for room in the journal (backpressure).",
    ),
    (
        "fleetd_ingest_refused_total",
        Kind::Counter,
        Start::Zero,
        "Publishes and requests refused unacknowledged (overloaded, shutting down, wrong protocol), by transport and reason.",
    ),
    (
        "fleetd_mqtt_connections",
        Kind::Gauge,
        Start::Zero,
        "MQTT TCP connections open now, with or without a session.",
    ),
    (
        "fleetd_mqtt_connects_total",
        Kind::Counter,
        Start::Zero,
        "MQTT CONNECTs, by result.",
    ),
    (
        "fleetd_auth_logins_total",
        Kind::Counter,
        Start::Zero,
        "MQTT and HTTP logins, by result.",
    ),
    // Journal.
    (
        "fleetd_journal_positions_total",
        Kind::Counter,
        Start::Zero,
        "Positions appended to the ingest journal.",
    ),
    (
        "fleetd_journal_commit_seconds",
        Kind::Histogram,
        Start::Zero,
        "Duration of one journal group commit (write, and fdatasync with durability power).",
    ),
    (
        "fleetd_journal_group_positions",
        Kind::Histogram,
        Start::Zero,
        "Positions in one journal group commit.",
    ),
    (
        "fleetd_journal_segments",
        Kind::Gauge,
        Start::Zero,
        "Journal segment files on disk now.",
    ),
    (
        "fleetd_journal_write_errors_total",
        Kind::Counter,
        Start::Zero,
        "Failed journal writes (retried; nothing is acknowledged meanwhile).",
    ),
    (
        "fleetd_journal_replayed_positions_total",
        Kind::Counter,
        Start::Zero,
        "Positions replayed from the journal at start.",
    ),
    // Processor.
    (
        "fleetd_queue_depth",
        Kind::Gauge,
        Start::Zero,
        "Chunks waiting in the journal to processor queue.",
    ),
    (
        "fleetd_batch_positions",
        Kind::Histogram,
        Start::Zero,
        "Positions in one micro-batch.",
    ),
    (
        "fleetd_batch_duration_seconds",
        Kind::Histogram,
        Start::Zero,
        "Time to enrich and store one micro-batch.",
    ),
    (
        "fleetd_batch_process_seconds",
        Kind::Histogram,
        Start::Zero,
        "Time to enrich one micro-batch, before the store write.",
    ),
    (
        "fleetd_ingest_to_store_seconds",
        Kind::Histogram,
        Start::Zero,
        "From a position's receipt to its batch being stored.",
    ),
    (
        "fleetd_event_lag_seconds",
        Kind::Histogram,
        Start::Zero,
        "From a position's device time to its batch being stored.",
    ),
    (
        "fleetd_positions_stored_total",
        Kind::Counter,
        Start::Zero,
        "Positions written to the history.",
    ),
    (
        "fleetd_filtered_total",
        Kind::Counter,
        Start::Described,
        "Fixes dropped by the data-quality filters, by reason.",
    ),
    (
        "fleetd_duplicates_total",
        Kind::Counter,
        Start::Zero,
        "Positions dropped as a repeat of a stored (device, ts_ms).",
    ),
    (
        "fleetd_replay_already_stored_total",
        Kind::Counter,
        Start::Zero,
        "Journal-replayed positions dropped because they were already stored.",
    ),
    (
        "fleetd_late_positions_total",
        Kind::Counter,
        Start::Zero,
        "Positions older than their device's latest, by kind.",
    ),
    (
        "fleetd_trips_closed_total",
        Kind::Counter,
        Start::Zero,
        "Trips closed.",
    ),
    (
        "fleetd_store_disk_bytes",
        Kind::Gauge,
        Start::Described,
        "Bytes on disk of each embedded-store keyspace's tables (not yet compacted data included), by keyspace.",
    ),
    (
        "fleetd_store_maintenance_seconds",
        Kind::Histogram,
        Start::Zero,
        "Duration of one embedded-store maintenance pass (history compaction, retention).",
    ),
    (
        "fleetd_store_maintenance_errors_total",
        Kind::Counter,
        Start::Zero,
        "Embedded-store maintenance passes that failed (retried at the next pass).",
    ),
    (
        "fleetd_store_history_maintained_total",
        Kind::Counter,
        Start::Described,
        "History maintenance work: buckets_compacted, rows_compacted, blocks_written, rows_expired, days_dropped.",
    ),
    (
        "fleetd_alerts_total",
        Kind::Counter,
        Start::Zero,
        "Alerts raised (enter, exit, dwell, overspeed), by kind.",
    ),
    (
        "fleetd_geofences",
        Kind::Gauge,
        Start::Described,
        "Geofences loaded now.",
    ),
    (
        "fleetd_store_write_retries_total",
        Kind::Counter,
        Start::Zero,
        "Store writes of a batch retried after a failure.",
    ),
    // Store.
    (
        "fleetd_store_write_seconds",
        Kind::Histogram,
        Start::Zero,
        "Duration of one batch write to the store.",
    ),
    (
        "fleetd_store_latest_devices",
        Kind::Gauge,
        Start::Zero,
        "Devices in the embedded store's in-memory latest index.",
    ),
    (
        "fleetd_scylla_statement_seconds",
        Kind::Histogram,
        Start::Zero,
        "ScyllaDB statement duration, by statement.",
    ),
    (
        "fleetd_scylla_retries_total",
        Kind::Counter,
        Start::Zero,
        "ScyllaDB statements retried, by statement.",
    ),
    (
        "fleetd_scylla_errors_total",
        Kind::Counter,
        Start::Zero,
        "ScyllaDB statement errors, by statement and kind.",
    ),
    // HTTP.
    (
        "fleetd_http_requests_total",
        Kind::Counter,
        Start::Zero,
        "HTTP requests answered, by route and status.",
    ),
    (
        "fleetd_http_request_seconds",
        Kind::Histogram,
        Start::Zero,
        "HTTP request duration, by route.",
    ),
    (
        "fleetd_http_connections",
        Kind::Gauge,
        Start::Zero,
        "HTTP connections open now.",
    ),
    (
        "fleetd_http_connections_refused_total",
        Kind::Counter,
        Start::Zero,
        "HTTP connections refused, by reason (over_cap, accept_error).",
    ),
    (
        "fleetd_http_connections_timed_out_total",
        Kind::Counter,
        Start::Zero,
        "HTTP connections closed by a timeout, by reason (header_read, idle).",
    ),
    // TLS.
    (
        "fleetd_tls_handshakes_total",
        Kind::Counter,
        Start::Zero,
        "TLS handshakes, by listener and result.",
    ),
    (
        "fleetd_tls_reloads_total",
        Kind::Counter,
        Start::Zero,
        "Certificate reloads, by result.",
    ),
    (
        "fleetd_tls_certificate_not_after_seconds",
        Kind::Gauge,
        Start::Described,
        "Expiry of the served certificate, Unix seconds (only with TLS on).",
    ),
    // Live delivery.
    (
        "fleetd_live_clients",
        Kind::Gauge,
        Start::Zero,
        "Connected live-stream clients, by transport.",
    ),
    (
        "fleetd_live_events_sent_total",
        Kind::Counter,
        Start::Zero,
        "Live events handed to clients, by transport.",
    ),
    (
        "fleetd_live_dropped_clients_total",
        Kind::Counter,
        Start::Zero,
        "Live clients disconnected by fleetd, by transport and reason.",
    ),
    (
        "fleetd_live_delivery_seconds",
        Kind::Histogram,
        Start::Zero,
        "From an event's publish to its hand-off to a connection, by transport.",
    ),
    (
        "fleetd_live_lagged_total",
        Kind::Counter,
        Start::Zero,
        "Times a live client fell behind the hub, by transport.",
    ),
    (
        "fleetd_live_replay_hits_total",
        Kind::Counter,
        Start::Zero,
        "Stream resumes served from the replay buffer.",
    ),
    (
        "fleetd_live_replay_gaps_total",
        Kind::Counter,
        Start::Zero,
        "Stream resumes that asked for events older than the replay buffer.",
    ),
    (
        "fleetd_live_replayed_events_total",
        Kind::Counter,
        Start::Zero,
        "Events sent from the replay buffer.",
    ),
    (
        "fleetd_live_published_total",
        Kind::Counter,
        Start::Zero,
        "Events published to the live hub, by kind.",
    ),
    (
        "fleetd_live_replay_events",
        Kind::Gauge,
        Start::Zero,
        "Events in the replay buffer now, by kind.",
    ),
    // Webhooks: per hook, so label-less totals at zero until a hook exists.
    (
        "fleetd_webhook_deliveries_total",
        Kind::Counter,
        Start::Zero,
        "Webhook delivery attempts, by hook and result (delivered, failed).",
    ),
    (
        "fleetd_webhook_dead_letters_total",
        Kind::Counter,
        Start::Zero,
        "Alerts a hook gave up on, by hook and reason (failed: every attempt failed; queue_full: its pending list was full).",
    ),
    (
        "fleetd_webhook_pending",
        Kind::Gauge,
        Start::Zero,
        "Alerts waiting for delivery on this node, by hook.",
    ),
    (
        "fleetd_webhook_delivery_seconds",
        Kind::Histogram,
        Start::Zero,
        "Time from an alert being queued to its delivery (2xx), by hook.",
    ),
    (
        "fleetd_webhook_request_seconds",
        Kind::Histogram,
        Start::Zero,
        "Time one delivery attempt took, by hook.",
    ),
];

/// Describes every series of [`SERIES`] and creates the ones that start at
/// zero, and takes the first reading of the standard `process_*` series
/// (CPU, memory, file descriptors, threads), whose collector it returns for
/// [`metrics_upkeep`]. Call once, right after [`install_metrics`].
pub fn register_series() -> metrics_process::Collector {
    for &(name, kind, start, help) in SERIES {
        let zero = matches!(start, Start::Zero);
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                if zero {
                    metrics::counter!(name).absolute(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                if zero {
                    metrics::gauge!(name).set(0.0);
                }
            }
            Kind::Histogram => {
                metrics::describe_histogram!(name, help);
                if zero {
                    // A registered histogram renders its (empty) buckets.
                    let _ = metrics::histogram!(name);
                }
            }
        }
    }
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
    process
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every few seconds
/// until `cancel`. The recorder keeps each sample (8 bytes) until an upkeep
/// or a scrape of `/metrics`; the pipeline records two per position, so a
/// fleetd that nobody scrapes would otherwise grow by ~1 MB/s at 50k
/// positions/s (`install_recorder` leaves this to the caller).
///
/// Each round also reads the `process_*` series again (`process`).
pub async fn metrics_upkeep(
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                handle.run_upkeep();
                // A few reads of /proc/self: cheap enough every 5 s.
                process.collect();
            }
        }
    }
}
