//! `fleetd serve`: wires ingest → processor → store → API and runs them
//! until a shutdown signal, then drains in data-flow order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetd_api::{ApiState, LiveApi};
use fleetd_ingest::{Decoder, EmbeddedBroker, Ingestor, Submitter};
use fleetd_geofence::{Geofence, Geofences};
use fleetd_live::{KindSet, LiveEvent, LiveHub, SeqEvent, Subscription};
use fleetd_processor::{Processor, ProcessorPorts};
use fleetd_store::Registry;
use fleetd_schemas::{Alert, RejectionLog};
use fleetd_store::{FjallStore, ScyllaStore, Store};
use tokio::sync::{broadcast, mpsc};
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
    let fence_settings = &settings.geofences;
    let geofences = Arc::new(Geofences::new(
        fence_settings.index,
        fence_settings.limits,
        fence_settings.tracking,
    ));
    let loaded = load_geofences(&*store, &geofences)
        .await
        .context("cannot load the geofences from the store")?;
    tracing::info!(geofences = loaded, "geofences loaded");
    // Processor → streams: the hub's broadcast is lossy by design (a lagging
    // stream resumes from the replay buffer); publishing never waits.
    let hub = LiveHub::new(settings.live.clone());

    // Backpressure policy of this queue: MQTT ingest awaits when it is full
    // (see fleetd_ingest::run_embedded), HTTP ingest answers 503 at once
    // (fleetd_ingest::Submitter); its size bounds the memory in between.
    let (queue_tx, queue_rx) = mpsc::channel(settings.processor.queue_chunks);
    let http_ingest = Submitter::new(
        Decoder::new(settings.limits.clone()),
        Arc::clone(&rejections),
        queue_tx.clone(),
    );

    // The API comes up first so /healthz and /readyz answer during start-up.
    let http = tokio::net::TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", settings.http))?;
    let api_state = ApiState::new(
        Arc::clone(&store),
        Arc::clone(&rejections),
        metrics.clone(),
        Arc::clone(&ready),
    )
    .with_registry(Arc::clone(&registry))
    .with_geofences(Arc::clone(&geofences))
    .with_request_timeout(settings.request_timeout)
    .with_ingest(http_ingest.clone())
    .with_live(LiveApi::new(
        hub.clone(),
        settings.streams.clone(),
        &settings.map,
    ));
    let api_cancel = CancellationToken::new();
    let api = tokio::spawn(fleetd_api::serve(http, api_state, api_cancel.clone()));

    let processor = Processor::start(
        settings.processor.clone(),
        Arc::clone(&store),
        ProcessorPorts {
            registry: Arc::clone(&registry),
            geofences: Arc::clone(&geofences),
            rejections: Arc::clone(&rejections),
            live: hub.clone(),
        },
        queue_rx,
    )
    .await
    .context("cannot restore processor state from the store")?;
    let background_cancel = CancellationToken::new();
    let mut background = vec![
        tokio::spawn(refresh_registry(
            Arc::clone(&store),
            Arc::clone(&registry),
            settings.registry_refresh,
            background_cancel.clone(),
        )),
        tokio::spawn(crate::telemetry::metrics_upkeep(
            metrics,
            background_cancel.clone(),
        )),
    ];
    // With a shared store, other nodes change fences too; the embedded
    // store has no other writer than this node's API.
    if matches!(settings.store, StoreBackend::Scylla { .. }) {
        background.push(tokio::spawn(refresh_geofences(
            Arc::clone(&store),
            Arc::clone(&geofences),
            fence_settings.refresh,
            background_cancel.clone(),
        )));
    }

    // Alerts out over MQTT: the forwarder follows the hub (resuming from
    // its replay buffer if it lags) and awaits the publisher's bounded
    // queue, so it never slows the pipeline; the publisher ends when the
    // forwarder drops its sender.
    let (alert_tx, alert_rx) = mpsc::channel(ALERT_QUEUE);
    let alerts_cancel = CancellationToken::new();
    // Subscribed before ingest starts, so no alert is published unseen.
    let alert_sub = hub.subscribe(None, ALERT_KINDS);
    let alert_forwarder = tokio::spawn(forward_alerts(
        hub,
        alert_sub,
        alert_tx,
        alerts_cancel.clone(),
    ));

    let ingestor = Ingestor::new(
        Decoder::new(settings.limits.clone()),
        Arc::clone(&rejections),
    );
    let ingest_cancel = CancellationToken::new();
    // The ingest link's sending half; dropping it would close the link.
    let mut _link_tx = None;
    let (ingest, alert_publisher) = match &settings.ingest_mode {
        IngestMode::Embedded => {
            let broker = EmbeddedBroker::start(&settings.broker)
                .await
                .context("cannot start the embedded MQTT broker")?;
            _link_tx = Some(broker.link_tx);
            let (alerts_tx, alerts_rx) = broker.alerts_link;
            let publisher =
                fleetd_ingest::alerts::spawn_embedded_publisher(alerts_tx, alerts_rx, alert_rx)
                    .context("cannot start the alert publisher thread")?;
            let ingest = tokio::spawn(fleetd_ingest::run_embedded(
                broker.link_rx,
                ingestor,
                queue_tx,
                ingest_cancel.clone(),
            ));
            (ingest, AlertPublisher::Thread(publisher))
        }
        IngestMode::External(external) => {
            let publisher = tokio::spawn(fleetd_ingest::alerts::run_external_publisher(
                external.clone(),
                alert_rx,
                alerts_cancel.child_token(),
            ));
            let ingest = tokio::spawn(fleetd_ingest::run_external(
                external.clone(),
                ingestor,
                queue_tx,
                ingest_cancel.clone(),
            ));
            (ingest, AlertPublisher::Task(publisher))
        }
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
    tracing::info!("shutting down: demo, ingest, processor, alerts, store, api");
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
        // The processor's input closes when its last sender goes.
        http_ingest.close();
        tracing::info!("processor flushing");
        processor.join().await;
        background_cancel.cancel();
        for task in background {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "background task failed");
            }
        }
        // Every alert is in the hub now: forward what is left, then let the
        // publisher drain its queue.
        alerts_cancel.cancel();
        if let Err(e) = alert_forwarder.await {
            tracing::warn!(error = %e, "alert forwarder failed");
        }
        alert_publisher.join().await;
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

/// Alerts waiting for the MQTT publisher. Alerts are rare next to
/// positions; the bound only matters if the broker stalls, and then the
/// forwarder waits (and resumes from the hub's replay buffer if it falls
/// behind the broadcast).
const ALERT_QUEUE: usize = 4096;

/// What the alert forwarder follows.
const ALERT_KINDS: KindSet = KindSet {
    positions: false,
    alerts: true,
};

/// The MQTT alert publisher: a thread beside the embedded broker's blocking
/// link, or a task with its own client for an external broker.
enum AlertPublisher {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<Result<(), fleetd_ingest::IngestError>>),
}

impl AlertPublisher {
    /// Waits until the publisher has sent what it was given.
    async fn join(self) {
        match self {
            Self::Thread(thread) => {
                if tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .map_or(true, |joined| joined.is_err())
                {
                    tracing::warn!("alert publisher thread failed");
                }
            }
            Self::Task(task) => match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "alert publisher failed"),
                Err(e) => tracing::warn!(error = %e, "alert publisher task failed"),
            },
        }
    }
}

/// Follows the hub's alerts and hands them to the MQTT publisher, in order.
/// A lagging forwarder resumes from the replay buffer; alerts it can no
/// longer get are counted (`fleetd_alerts_published_total{result="missed"}`)
/// and logged: they stay in the stored alert history. On `cancel` it
/// forwards what the hub has already sent it, then returns.
async fn forward_alerts(
    hub: LiveHub,
    first: Subscription,
    tx: mpsc::Sender<Alert>,
    cancel: CancellationToken,
) {
    let mut next_sub = Some(first);
    let mut since: Option<u64> = None;
    loop {
        let sub = match next_sub.take() {
            Some(sub) => sub,
            None => hub.subscribe(since, ALERT_KINDS),
        };
        let mut last = since.unwrap_or(sub.last_seq);
        for gap in &sub.gaps {
            let missed = gap.to_seq.saturating_sub(gap.from_seq) + 1;
            metrics::counter!("fleetd_alerts_published_total", "result" => "missed")
                .increment(missed);
            tracing::warn!(
                from_seq = gap.from_seq,
                to_seq = gap.to_seq,
                reason = gap.reason.code(),
                "alert publisher fell behind; alerts not published over MQTT"
            );
        }
        let mut events: Vec<Arc<SeqEvent>> = sub.replay;
        let mut receiver = sub.receiver;
        loop {
            for event in events.drain(..) {
                last = last.max(event.seq);
                if let LiveEvent::Alert(alert) = &event.event
                    && tx.send(alert.clone()).await.is_err()
                {
                    return;
                }
            }
            let stopping = cancel.is_cancelled();
            let next = if stopping {
                match receiver.try_recv() {
                    Ok(batch) => Ok(batch),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        Err(broadcast::error::RecvError::Lagged(0))
                    }
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => continue,
                    batch = receiver.recv() => batch,
                }
            };
            match next {
                Ok(batch) => events.extend(batch.events.iter().cloned()),
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        since = Some(last);
    }
}

/// Loads every stored geofence into `geofences` (parsing and covering them
/// on the blocking pool); returns how many there are. A stored fence that
/// no longer parses is logged and skipped rather than stopping the start.
async fn load_geofences(store: &dyn Store, geofences: &Arc<Geofences>) -> anyhow::Result<usize> {
    let stored = store.all_geofences().await?;
    let geofences = Arc::clone(geofences);
    let n = tokio::task::spawn_blocking(move || {
        let mut fences = Vec::with_capacity(stored.len());
        for row in stored {
            match Geofence::from_stored(row.id.clone(), &row.geojson) {
                Ok(fence) => fences.push(fence),
                Err(e) => {
                    tracing::error!(geofence = %row.id, error = %e, "stored geofence does not parse; skipped")
                }
            }
        }
        let n = fences.len();
        let report = geofences.sync(fences);
        if report.upserted + report.removed > 0 {
            tracing::debug!(
                upserted = report.upserted,
                removed = report.removed,
                "geofences synced"
            );
        }
        metrics::gauge!("fleetd_geofences").set(n as f64);
        n
    })
    .await?;
    Ok(n)
}

/// Reloads the geofences from a shared store every `every` (other nodes'
/// changes); only fences that changed are covered again. A failed reload
/// keeps the current index and is retried at the next tick.
async fn refresh_geofences(
    store: Arc<dyn Store>,
    geofences: Arc<Geofences>,
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
        if let Err(e) = load_geofences(&*store, &geofences).await {
            tracing::warn!(error = %e, "geofence reload failed; keeping the index");
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
