//! `fleetd serve`: wires ingest → processor → store → API and runs them
//! until a shutdown signal, then drains in data-flow order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetd_api::{ApiState, LiveApi};
use fleetd_ingest::{Decoder, EmbeddedBroker, Ingestor};
use fleetd_processor::live::LiveHub;
use fleetd_processor::{Processor, Registry};
use fleetd_schemas::RejectionLog;
use fleetd_store::{FjallStore, ScyllaStore, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{IngestMode, ServeSettings, StoreBackend};

/// Shutdown must finish within this; past it fleetd exits non-zero and logs
/// which stage was late.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Runs fleetd until SIGINT/SIGTERM.
pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install_metrics()?;
    let store = open_store(&settings.store).await?;
    let rejections = Arc::new(RejectionLog::new(settings.rejection_samples));
    let ready = Arc::new(AtomicBool::new(false));
    let registry = Arc::new(Registry::new(settings.class_speed_limits_kmh.clone()));
    registry.replace_all(
        store
            .all_devices()
            .await
            .context("cannot load the device registry from the store")?,
    );
    // Processor → streams: the hub's broadcast is lossy by design (a lagging
    // stream resumes from the replay buffer); publishing never waits.
    let hub = LiveHub::new(settings.live.clone());

    // The API comes up first so /healthz and /readyz answer during start-up.
    let http = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", settings.http))?;
    let api_state = ApiState::new(
        Arc::clone(&store),
        Arc::clone(&rejections),
        metrics,
        Arc::clone(&ready),
    )
    .with_registry(Arc::clone(&registry))
    .with_request_timeout(settings.request_timeout)
    .with_live(LiveApi::new(
        hub.clone(),
        settings.streams.clone(),
        &settings.map,
    ));
    let api_cancel = CancellationToken::new();
    let api = tokio::spawn(fleetd_api::serve(http, api_state, api_cancel.clone()));

    // Backpressure policy of this queue: ingest awaits when it is full (see
    // fleetd_ingest::run_embedded); its size bounds the memory in between.
    let (queue_tx, queue_rx) = mpsc::channel(settings.processor.queue_chunks);
    let processor = Processor::start(
        settings.processor.clone(),
        Arc::clone(&store),
        Arc::clone(&registry),
        Arc::clone(&rejections),
        queue_rx,
        hub,
    )
    .await
    .context("cannot restore processor state from the store")?;
    let refresh_cancel = CancellationToken::new();
    let refresh = tokio::spawn(refresh_registry(
        Arc::clone(&store),
        Arc::clone(&registry),
        settings.registry_refresh,
        refresh_cancel.clone(),
    ));

    let ingestor = Ingestor::new(
        Decoder::new(settings.limits.clone()),
        Arc::clone(&rejections),
    );
    let ingest_cancel = CancellationToken::new();
    // Kept for fleetd's own publishes (alerts); dropping it would close the link.
    let mut _link_tx = None;
    let ingest = match &settings.ingest_mode {
        IngestMode::Embedded => {
            let broker = EmbeddedBroker::start(&settings.broker)
                .await
                .context("cannot start the embedded MQTT broker")?;
            _link_tx = Some(broker.link_tx);
            tokio::spawn(fleetd_ingest::run_embedded(
                broker.link_rx,
                ingestor,
                queue_tx,
                ingest_cancel.clone(),
            ))
        }
        IngestMode::External(external) => tokio::spawn(fleetd_ingest::run_external(
            external.clone(),
            ingestor,
            queue_tx,
            ingest_cancel.clone(),
        )),
    };

    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        mqtt = %settings.broker.listen,
        http = %settings.http,
        restored_devices = processor.restored_devices(),
        "fleetd ready"
    );

    let demo_cancel = CancellationToken::new();
    let demo = (settings.demo_vehicles > 0).then(|| {
        let broker_addr = match &settings.ingest_mode {
            IngestMode::External(external) => format!("{}:{}", external.host, external.port),
            IngestMode::Embedded => {
                let mut addr = settings.broker.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                addr.to_string()
            }
        };
        let config = fleetd_simulator::SimConfig {
            broker: broker_addr,
            vehicles: settings.demo_vehicles,
            rate_hz: settings.demo_rate_hz,
            duration: None,
            id_prefix: "demo-".into(),
            ..Default::default()
        };
        tracing::info!(vehicles = settings.demo_vehicles, "demo fleet starting");
        tokio::spawn(fleetd_simulator::run(config, demo_cancel.clone()))
    });

    shutdown_signal().await;
    tracing::info!("shutting down: demo, ingest, processor, store, api");
    ready.store(false, Ordering::SeqCst);
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        if let Some(demo) = demo {
            demo_cancel.cancel();
            match demo.await {
                Ok(Ok(report)) => {
                    tracing::info!(published = report.published, "demo fleet stopped")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "demo fleet failed"),
                Err(e) => tracing::warn!(error = %e, "demo fleet task failed"),
            }
        }
        ingest_cancel.cancel();
        match ingest.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "ingest failed"),
            Err(e) => tracing::error!(error = %e, "ingest task failed"),
        }
        tracing::info!("processor flushing");
        processor.join().await;
        refresh_cancel.cancel();
        if let Err(e) = refresh.await {
            tracing::warn!(error = %e, "registry refresh task failed");
        }
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "store flush failed");
        }
        tracing::info!("store flushed");
        api_cancel.cancel();
        match api.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "http api failed"),
            Err(e) => tracing::error!(error = %e, "http api task failed"),
        }
    })
    .await;
    if drained.is_err() {
        bail!("shutdown did not finish within {SHUTDOWN_DEADLINE:?}");
    }
    tracing::info!("fleetd stopped");
    Ok(())
}

async fn open_store(backend: &StoreBackend) -> anyhow::Result<Arc<dyn Store>> {
    match backend {
        StoreBackend::Fjall(dir) => {
            let dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || {
                FjallStore::open(&dir)
                    .with_context(|| format!("cannot open the embedded store in {}", dir.display()))
            })
            .await
            .context("store open task failed")??;
            Ok(Arc::new(store))
        }
        StoreBackend::Scylla { settings, migrate } => {
            let points = settings.contact_points.join(",");
            let store = ScyllaStore::connect(settings.clone(), *migrate)
                .await
                .with_context(|| format!("cannot open the ScyllaDB store at {points}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// Reloads the registry cache from the store every `every`, so changes made
/// through other fleetd nodes reach this node's processor; a failed reload
/// keeps the current cache and is retried at the next tick.
async fn refresh_registry(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.all_devices().await {
            Ok(entries) => {
                metrics::gauge!("fleetd_registry_devices").set(entries.len() as f64);
                registry.replace_all(entries);
            }
            Err(e) => tracing::warn!(error = %e, "registry reload failed; keeping the cache"),
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
