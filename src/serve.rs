//! `fleetd serve`: wires ingest → processor → store → API and runs them
//! until a shutdown signal, then drains in data-flow order.
//!
//! Every stage has a child of one root cancellation token and every task
//! runs on one `TaskTracker`. Shutdown cancels the stages one at a time in
//! data-flow order and waits for each, all within [`SHUTDOWN_DEADLINE`];
//! a stage that is late is named in the log and the root is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetd_api::{ApiState, LiveApi};
use fleetd_auth::Access;
use fleetd_geofence::Geofences;
use fleetd_ingest::{
    AlertPublisher, Decoder, IngestMode, MqttIngest, MqttListeners, MqttTls, Submitter,
};
use fleetd_live::LiveHub;
use fleetd_processor::{Processor, ProcessorPorts};
use fleetd_schemas::RejectionLog;
use fleetd_store::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{SHUTDOWN_DEADLINE, ServeSettings};

/// Runs fleetd until SIGINT/SIGTERM.
pub async fn run(mut settings: ServeSettings) -> anyhow::Result<()> {
    fit_connection_caps(&mut settings);
    // A wrong or missing store key stops fleetd before anything in the data
    // directory is created, probed or opened.
    if let fleetd_store::StoreBackend::Fjall { dir, key_file, .. } = &settings.store {
        fleetd_store::seal::check(dir, key_file.as_deref())
            .with_context(|| format!("cannot open the embedded store in {}", dir.display()))?;
    }
    check_data_dir(&settings.data_dir)?;
    if let IngestMode::External(external) = &mut settings.ingest.mode
        && external.client_id.is_empty()
    {
        external.client_id = stable_client_id(&settings.data_dir)?;
    }
    let starting = Instant::now();
    let metrics = crate::telemetry::install_metrics()?;
    let process_metrics = crate::telemetry::register_series();
    // Before the store opens: a certificate that does not load stops fleetd
    // having touched nothing.
    let server_tls = match &settings.tls.files {
        Some(files) => Some(
            fleetd_tls::ServerTls::load(files.clone())
                .context("cannot load the TLS certificate")?,
        ),
        None => None,
    };
    let root = CancellationToken::new();
    let tasks = TaskTracker::new();
    let store =
        fleetd_store::open(&settings.store)
            .await
            .with_context(|| match &settings.store {
                fleetd_store::StoreBackend::Fjall { dir, .. } => {
                    format!("cannot open the embedded store in {}", dir.display())
                }
                fleetd_store::StoreBackend::Scylla { settings, .. } => format!(
                    "cannot open the ScyllaDB store at {}",
                    settings.contact_points.join(",")
                ),
            })?;
    let store_open_s = starting.elapsed().as_secs_f64();
    let access = open_access(&settings, &store).await?;
    let rejections = Arc::new(RejectionLog::new(settings.ingest.rejection_samples));
    let ready = Arc::new(AtomicBool::new(false));
    // The enrichment caches: empty here, loaded by the processor; the API
    // writes through to them.
    let registry = Arc::new(Registry::new(
        settings.processor.class_speed_limits_kmh.clone(),
    ));
    let fences = &settings.geofences;
    let geofences = Arc::new(Geofences::new(fences.index, fences.limits, fences.tracking));
    // Processor → streams and alert publishing: the hub's broadcast is lossy
    // by design (a lagging follower resumes from the replay buffer);
    // publishing never waits.
    let hub = LiveHub::new(settings.live.hub.clone());

    // Ingest → journal → processor. Every position is appended to the
    // journal, and acknowledged only once it is durable there; the journal
    // forwards it into this queue (after replaying what a previous run
    // left). Backpressure: the journal's own bounded queue (MQTT
    // connections wait, HTTP answers 503).
    let (queue_tx, queue_rx) = mpsc::channel(settings.processor.queue_chunks);
    let journal_token = root.child_token();
    let store_to_flush = Arc::clone(&store);
    let flush_store: fleetd_journal::FlushStore = Arc::new(move || {
        let store = Arc::clone(&store_to_flush);
        Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
    });
    let (journal, journal_tasks) = fleetd_journal::Journal::start(
        settings.journal.clone(),
        queue_tx,
        flush_store,
        journal_seal(&settings.store)?,
        journal_token.clone(),
    )
    .await
    .context("cannot open the ingest journal")?;
    tracing::info!(
        dir = %settings.journal.dir.display(),
        durability = settings.journal.durability.name(),
        "ingest journal open"
    );
    let http_ingest = Submitter::new(
        Decoder::new(settings.ingest.limits.clone()),
        Arc::clone(&rejections),
        journal.clone(),
    );

    // The API comes up first so /healthz and /readyz answer during start-up.
    let http_addr = settings.api.http;
    let http = match settings.tls.plain_http {
        true => Some(
            fleetd_ingest::bind_listener(http_addr)
                .with_context(|| format!("cannot listen for HTTP on {http_addr}"))?,
        ),
        false => None,
    };
    let https = match (settings.tls.https, &server_tls) {
        (Some(addr), Some(tls)) => Some((
            fleetd_ingest::bind_listener(addr)
                .with_context(|| format!("cannot listen for HTTPS on {addr}"))?,
            fleetd_api::TlsHandshake::new(Arc::clone(tls), settings.tls.handshake_timeout),
        )),
        _ => None,
    };
    let osmand = match settings.osmand.listen {
        Some(addr) => Some(
            fleetd_ingest::bind_listener(addr)
                .with_context(|| format!("cannot listen for OsmAnd on {addr}"))?,
        ),
        None => None,
    };
    let osmands = match (settings.tls.osmands, &server_tls) {
        (Some(addr), Some(tls)) => Some((
            fleetd_ingest::bind_listener(addr)
                .with_context(|| format!("cannot listen for OsmAnd over TLS on {addr}"))?,
            fleetd_api::TlsHandshake::new(Arc::clone(tls), settings.tls.handshake_timeout),
        )),
        _ => None,
    };
    // Before the processor: every alert it raises goes to the outbox first.
    let webhooks_token = root.child_token();
    let (webhooks, outbox) = match &settings.webhooks {
        Some(ws) => {
            let (hooks, outbox) = fleetd_webhooks::Webhooks::start(
                ws.clone(),
                Arc::clone(&store),
                Arc::clone(&registry),
                store_sealer(&settings.store)?,
                webhooks_token.clone(),
            )
            .await
            .with_context(|| format!("cannot open the webhook queue in {}", ws.dir.display()))?;
            (Some(hooks), Some(outbox))
        }
        None => (None, None),
    };
    let api_state = ApiState::new(
        Arc::clone(&store),
        Arc::clone(&access),
        Arc::clone(&rejections),
        metrics.clone(),
        Arc::clone(&ready),
    )
    .with_registry(Arc::clone(&registry))
    .with_geofences(Arc::clone(&geofences))
    .with_request_timeout(settings.api.request_timeout)
    .with_cors_origins(settings.api.cors_origins.clone())
    .with_metrics_open(settings.api.metrics_open)
    .with_ingest(http_ingest.clone())
    .with_webhooks(webhooks.clone())
    .with_live(LiveApi::new(
        hub.clone(),
        settings.live.streams.clone(),
        &settings.live.map,
    ));
    let api_token = root.child_token();
    let mut apis = Vec::new();
    if let Some(http) = http {
        apis.push(tasks.spawn(fleetd_api::serve(
            http,
            api_state.clone(),
            settings.api.limits,
            api_token.clone(),
        )));
    }
    if let Some(osmand) = osmand {
        apis.push(tasks.spawn(fleetd_api::serve_osmand(
            osmand,
            fleetd_api::PlainTcp,
            api_state.clone(),
            settings.osmand.speed_unit,
            settings.api.limits,
            api_token.clone(),
        )));
    }
    if let Some((osmands, handshake)) = osmands {
        apis.push(tasks.spawn(fleetd_api::serve_osmand(
            osmands,
            handshake,
            api_state.clone(),
            settings.osmand.speed_unit,
            settings.api.limits,
            api_token.clone(),
        )));
    }
    if let Some((https, handshake)) = https {
        apis.push(tasks.spawn(fleetd_api::serve_with(
            https,
            handshake,
            api_state,
            settings.api.limits,
            api_token.clone(),
        )));
    }
    let reload_token = root.child_token();
    if let Some(tls) = &server_tls {
        tasks.spawn(fleetd_tls::reload_on_sighup(
            Arc::clone(tls),
            reload_token.clone(),
        ));
    }

    let restoring = Instant::now();
    let processor = Processor::start(
        settings.processor.clone(),
        Arc::clone(&store),
        ProcessorPorts {
            registry,
            geofences,
            rejections: Arc::clone(&rejections),
            live: hub.clone(),
            webhooks: outbox,
        },
        queue_rx,
    )
    .await
    .context("cannot restore processor state from the store")?;
    // Opening the store (its recovery) and reading the vehicles' state
    // back are the two costs of a restart.
    let restored = processor.restored_devices();
    let seconds = starting.elapsed().as_secs_f64();
    let processor_s = restoring.elapsed().as_secs_f64();
    tracing::info!(
        devices = restored,
        seconds,
        store_open_s,
        processor_s,
        "restored {restored} devices in {seconds:.2} s (store open {store_open_s:.2} s, vehicle state {processor_s:.2} s)"
    );
    let maintenance_token = root.child_token();
    let maintenance = tasks.spawn(store_maintenance(
        Arc::clone(&store),
        settings.store_maintenance,
        maintenance_token.clone(),
    ));
    let upkeep_token = root.child_token();
    let upkeep = tasks.spawn(crate::telemetry::metrics_upkeep(
        metrics,
        process_metrics,
        upkeep_token.clone(),
    ));

    let ingest_token = root.child_token();
    let listeners = MqttListeners {
        plain: settings.tls.plain_mqtt,
        tls: match (settings.tls.mqtts, &server_tls) {
            (Some(listen), Some(tls)) => Some(MqttTls {
                listen,
                tls: Arc::clone(tls),
                handshake_timeout: settings.tls.handshake_timeout,
            }),
            _ => None,
        },
    };
    let mut ingest = MqttIngest::start(
        &settings.ingest,
        Arc::clone(&access),
        Arc::clone(&rejections),
        journal,
        &listeners,
        ingest_token.clone(),
    )
    .await
    .context("cannot start MQTT ingest")?;
    // Subscribed before any device is heard, so no alert goes unpublished.
    let alerts_token = root.child_token();
    let alerts = match ingest.take_alert_target() {
        Some(target) => Some(
            AlertPublisher::start(&hub, target, alerts_token.clone())
                .context("cannot start the alert publisher")?,
        ),
        None => None,
    };

    let refresh_token = root.child_token();
    let refresh = tasks.spawn(refresh_tokens(
        Arc::clone(&access),
        settings.auth.token_refresh,
        refresh_token.clone(),
    ));
    if !access.allow_anonymous() {
        announce_admin_url(&access, &settings).await?;
    }
    print_urls(&settings, access.allow_anonymous());

    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        mqtt = %settings.ingest.broker.listen,
        http = %http_addr,
        mqtts = ?settings.tls.mqtts,
        osmand = ?settings.osmand.listen,
        osmands = ?settings.tls.osmands,
        https = ?settings.tls.https,
        plain_mqtt = settings.tls.plain_mqtt,
        plain_http = settings.tls.plain_http,
        restored_devices = processor.restored_devices(),
        "fleetd ready"
    );

    let demo_token = root.child_token();
    let demo_config = match settings.demo_vehicles {
        0 => None,
        vehicles => Some(demo_fleet(&settings, &access, vehicles).await?),
    };
    let demo = demo_config.map(|config| {
        tracing::info!(vehicles = settings.demo_vehicles, "demo fleet starting");
        tasks.spawn(fleetd_simulator::run(config, demo_token.clone()))
    });

    let store_stopped = tokio::select! {
        () = shutdown_signal() => None,
        why = store_stopped(Arc::clone(&store)) => Some(why),
    };
    if let Some(why) = store_stopped {
        // Draining would wait on batches that cannot be stored any more.
        // Everything acknowledged is in the journal, which a restart
        // replays; so stop at once, and let the supervisor restart fleetd.
        ready.store(false, Ordering::SeqCst);
        root.cancel();
        tracing::error!(
            error = %why,
            "the embedded store stopped taking writes; fleetd stops so that a restart reopens it \
             (nothing acknowledged is lost: the journal keeps it)"
        );
        bail!(
            "{why}; restart fleetd once the disk has room: the positions it acknowledged are \
             replayed from {}",
            settings.journal.dir.display()
        );
    }
    tracing::info!("shutting down: demo, ingest, journal, processor, alerts, webhooks, store, api");
    ready.store(false, Ordering::SeqCst);

    let mut drain = Drain::default();
    drain.then("demo", async move {
        demo_token.cancel();
        if let Some(demo) = demo {
            match demo.await {
                Ok(Ok(report)) => {
                    tracing::info!(published = report.published, "demo fleet stopped")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "demo fleet failed"),
                Err(e) => tracing::warn!(error = %e, "demo fleet task failed"),
            }
        }
    });
    drain.then("ingest", async move {
        ingest_token.cancel();
        if let Err(e) = ingest.join().await {
            tracing::error!(error = %e, "ingest failed");
        }
    });
    // The journal writer writes and forwards what is queued, then closes the
    // processor's input; the processor stores it all and stops; the pruner
    // then deletes the segments that are stored.
    drain.then("journal", async move { journal_token.cancel() });
    drain.then("processor", processor.join());
    drain.then("journal segments", journal_tasks.join());
    // Every alert is in the hub now: publish what is left.
    drain.then("alerts", async move {
        alerts_token.cancel();
        if let Some(alerts) = alerts {
            alerts.join().await;
        }
    });
    // Deliveries in flight are abandoned; they stay queued for the next
    // start.
    drain.then("webhooks", async move {
        webhooks_token.cancel();
        if let Some(hooks) = webhooks {
            hooks.join().await;
        }
    });
    // A pass under way finishes (its blocking work cannot be interrupted);
    // the next would start on a store about to close.
    drain.then("store maintenance", async move {
        maintenance_token.cancel();
        let _ = maintenance.await;
    });
    let flushed = Arc::clone(&store);
    drain.then("store", async move {
        match flushed.flush().await {
            Ok(()) => tracing::info!("store flushed"),
            Err(e) => tracing::error!(error = %e, "store flush failed"),
        }
    });
    drain.then("api", async move {
        api_token.cancel();
        for api in apis {
            if let Err(e) = api.await {
                tracing::error!(error = %e, "http api task failed");
            }
        }
        reload_token.cancel();
    });
    drain.then("token refresh", async move {
        refresh_token.cancel();
        let _ = refresh.await;
    });
    drain.then("metrics upkeep", async move {
        upkeep_token.cancel();
        let _ = upkeep.await;
    });
    drain.then("remaining tasks", async move {
        tasks.close();
        tasks.wait().await;
    });
    drain.run(&root).await?;
    tracing::info!("fleetd stopped");
    Ok(())
}

/// Raises the descriptor limit and lowers the MQTT and HTTP connection caps
/// to fit below it; logs the caps once.
fn fit_connection_caps(settings: &mut ServeSettings) {
    let fds = crate::limits::raise_fd_limit();
    let embedded = matches!(settings.ingest.mode, IngestMode::Embedded);
    let configured_mqtt = settings.ingest.broker.max_connections;
    let configured_http = settings.api.limits.max_connections;
    let (mqtt, http) = crate::limits::connection_caps(
        fds.soft,
        embedded.then_some(configured_mqtt),
        configured_http,
    );
    if let Some(mqtt) = mqtt {
        settings.ingest.broker.max_connections = mqtt;
    }
    settings.api.limits.max_connections = http;
    let lowered = mqtt.is_some_and(|m| m < configured_mqtt) || http < configured_http;
    tracing::info!(
        fd_limit = fds.soft,
        fd_limit_was = fds.was,
        reserved_fds = crate::limits::reserved_fds(fds.soft),
        mqtt_max_connections = mqtt,
        http_max_connections = http,
        lowered_to_fit = lowered,
        "connection caps"
    );
}

/// Fails unless `dir` is, or can be made, a directory fleetd can list and
/// write: the store's own errors for these cases name the path but bury it
/// in a chain of wrapped I/O errors.
fn check_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = dir.display();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("data directory {shown} cannot be created"))?;
    if !dir.is_dir() {
        bail!("data directory {shown} is not a directory");
    }
    std::fs::read_dir(dir).with_context(|| format!("data directory {shown} cannot be read"))?;
    let probe = dir.join(".fleetd-write-check");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"ok"))
        .with_context(|| format!("data directory {shown} is not writable"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// With a store key, the journal's frames are sealed with it: positions
/// are at rest in the journal until stored, and must not be readable there
/// when the store is not.
fn journal_seal(
    store: &fleetd_store::StoreBackend,
) -> anyhow::Result<Option<Arc<dyn fleetd_journal::FrameSeal>>> {
    Ok(
        store_sealer(store)?
            .map(|s| Arc::new(JournalSeal(s)) as Arc<dyn fleetd_journal::FrameSeal>),
    )
}

/// A sealer under the store key (`--store-key`), for what fleetd keeps
/// beside the store: the journal and the webhook queue.
fn store_sealer(
    store: &fleetd_store::StoreBackend,
) -> anyhow::Result<Option<Arc<fleetd_store::Sealer>>> {
    let fleetd_store::StoreBackend::Fjall {
        key_file: Some(file),
        ..
    } = store
    else {
        return Ok(None);
    };
    let key = fleetd_store::StoreKey::load(file)
        .with_context(|| format!("cannot read the store key {}", file.display()))?;
    Ok(Some(Arc::new(fleetd_store::Sealer::new(&key))))
}

/// The store's AEAD over journal frames; the associated data is the
/// segment id, so a frame copied into another segment does not open.
struct JournalSeal(Arc<fleetd_store::Sealer>);

impl fleetd_journal::FrameSeal for JournalSeal {
    fn seal(&self, segment: u64, plain: Vec<u8>) -> Vec<u8> {
        self.0.seal("#journal", &segment.to_be_bytes(), plain)
    }

    fn open(&self, segment: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        self.0
            .open("#journal", &segment.to_be_bytes(), sealed)
            .ok()
            .map(std::borrow::Cow::into_owned)
    }
}

/// The external broker client id kept in `{data}/external-client-id`,
/// made on the first start: the broker keeps the persistent session (and
/// what fleetd had not acknowledged) under it, so it must survive restarts,
/// and two fleetd instances with their own data directories never share it.
fn stable_client_id(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("external-client-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let id = format!(
        "fleetd-{:016x}",
        nanos ^ (u64::from(std::process::id()) << 40)
    );
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(client_id = %id, file = %path.display(), "external broker client id created");
    Ok(id)
}

/// Opens the access service over the store; anonymous mode is a warning.
async fn open_access(
    settings: &ServeSettings,
    store: &Arc<dyn fleetd_store::Store>,
) -> anyhow::Result<Arc<Access>> {
    let access = Access::open(Arc::clone(store), settings.auth.access.clone())
        .await
        .context("cannot read the API tokens from the store")?;
    if access.allow_anonymous() {
        tracing::warn!(
            "authentication is OFF (--allow-anonymous): anyone who reaches fleetd may publish \
             as any device and read every track"
        );
    }
    Ok(Arc::new(access))
}

/// Makes (first start) or reads the admin token in the data directory and
/// prints the map's URL with it on stdout, as Jupyter prints its login URL.
/// The token is in the URL's fragment, which browsers never send: it stays
/// out of access logs. It is not logged.
async fn announce_admin_url(access: &Access, settings: &ServeSettings) -> anyhow::Result<()> {
    let dir = &settings.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let admin = fleetd_auth::admin_token(access, dir)
        .await
        .context("cannot make the admin token")?;
    if admin.created {
        tracing::info!(file = %admin.path.display(), "admin token created");
    }
    // HTTPS when it is on: the token then never crosses the network in
    // clear.
    let (scheme, host) = match settings.tls.https {
        Some(https) => ("https", dialable(https)),
        None => ("http", dialable(settings.api.http)),
    };
    println!(
        "fleetd: open the map at {scheme}://{host}/#token={}\n\
         fleetd: the admin token is in {} (fleetd token reset-admin makes a new one)",
        admin.token,
        admin.path.display()
    );
    Ok(())
}

/// Prints where to point a browser, an API client, Prometheus and the
/// devices (the map's URL with its token is printed by
/// [`announce_admin_url`] when authentication is on).
fn print_urls(settings: &ServeSettings, anonymous: bool) {
    let http = match settings.tls.https {
        Some(https) => format!("https://{}", dialable(https)),
        None => format!("http://{}", dialable(settings.api.http)),
    };
    if anonymous {
        println!("fleetd: open the map at {http}/");
    }
    println!("fleetd: API {http}/v1 (described at {http}/openapi.json), metrics {http}/metrics");
    let mut devices = Vec::new();
    if let IngestMode::Embedded = settings.ingest.mode {
        if settings.tls.plain_mqtt {
            devices.push(format!(
                "mqtt://{}",
                dialable(settings.ingest.broker.listen)
            ));
        }
        if let Some(mqtts) = settings.tls.mqtts {
            devices.push(format!("mqtts://{}", dialable(mqtts)));
        }
    }
    if let Some(osmand) = settings.osmand.listen {
        devices.push(format!("OsmAnd http://{}/", dialable(osmand)));
    }
    if let Some(osmands) = settings.tls.osmands {
        devices.push(format!("OsmAnd https://{}/", dialable(osmands)));
    }
    devices.push(format!("HTTP {http}/v1/positions"));
    println!("fleetd: devices publish to {}", devices.join(", "));
}

/// `fleetd healthcheck`: asks the fleetd at `http` (its plain HTTP
/// address) for `/readyz` and succeeds on 200.
pub async fn healthcheck(http: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = http
        .parse()
        .with_context(|| format!("{http:?} is not an address like 127.0.0.1:8080"))?;
    let addr = dialable(addr);
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        head.truncate(n);
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head).into_owned())
    };
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
        .await
        .with_context(|| format!("no answer from {addr} in 5 s"))?
        .with_context(|| format!("cannot ask {addr}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("none");
    if status != "200" {
        bail!("fleetd at {addr} is not ready (/readyz answered {status})");
    }
    Ok(())
}

/// Runs `job` every `every` (first one interval after start) until
/// `cancel`; a run under way finishes before the loop returns.
async fn every<F, Fut>(every: std::time::Duration, cancel: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        job().await;
    }
}

/// Runs the store's maintenance (history compaction and retention in the
/// embedded store) every `interval`.
async fn store_maintenance(
    store: Arc<dyn fleetd_store::Store>,
    interval: std::time::Duration,
    cancel: CancellationToken,
) {
    every(interval, cancel, || async {
        // Errors are counted and logged by the store; the next pass retries.
        let _ = store.maintain().await;
    })
    .await;
}

/// Reloads the API tokens now and then, so tokens another node created or
/// revoked take effect here.
async fn refresh_tokens(
    access: Arc<Access>,
    interval: std::time::Duration,
    cancel: CancellationToken,
) {
    every(interval, cancel, || async {
        if let Err(e) = access.refresh_tokens().await {
            tracing::warn!(error = %e, "cannot reload the API tokens");
        }
    })
    .await;
}

/// The in-process demo fleet: with authentication on, each vehicle gets a
/// credential of its own, issued like any other (`demo-0000`, ...).
async fn demo_fleet(
    settings: &ServeSettings,
    access: &Access,
    vehicles: usize,
) -> anyhow::Result<fleetd_simulator::SimConfig> {
    let mut config = fleetd_simulator::SimConfig {
        broker: demo_broker(settings),
        vehicles,
        rate_hz: settings.demo_rate_hz,
        duration: None,
        id_prefix: "demo-".into(),
        ..Default::default()
    };
    if !access.allow_anonymous() {
        let ids = config.device_ids();
        let secrets = crate::access::provision_demo(access, ids.into_iter())
            .await
            .context("cannot provision the demo fleet's credentials")?;
        config.credentials = fleetd_simulator::Credentials::PerDevice(secrets);
    }
    Ok(config)
}

/// An address this machine can connect to for a listen address: a
/// wildcard (`0.0.0.0`, `::`) becomes 127.0.0.1.
fn dialable(mut listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    listen
}

/// Where the demo fleet connects: the broker fleetd ingests from.
fn demo_broker(settings: &ServeSettings) -> String {
    match &settings.ingest.mode {
        IngestMode::External(external) => format!("{}:{}", external.host, external.port),
        IngestMode::Embedded => dialable(settings.ingest.broker.listen).to_string(),
    }
}

type Step = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The shutdown sequence: named steps, each stopping one stage and waiting
/// for it, run in order within [`SHUTDOWN_DEADLINE`].
#[derive(Default)]
struct Drain {
    steps: Vec<(&'static str, Step)>,
}

impl Drain {
    fn then(&mut self, stage: &'static str, step: impl Future<Output = ()> + Send + 'static) {
        self.steps.push((stage, Box::pin(step)));
    }

    /// Runs the steps; past the deadline it names the late stage, cancels
    /// `root` (every stage at once) and fails.
    async fn run(self, root: &CancellationToken) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        for (stage, step) in self.steps {
            let started = Instant::now();
            if tokio::time::timeout_at(deadline, step).await.is_err() {
                root.cancel();
                tracing::error!(
                    stage,
                    deadline_s = SHUTDOWN_DEADLINE.as_secs(),
                    "shutdown deadline passed; stopping everything"
                );
                bail!("shutdown did not finish within {SHUTDOWN_DEADLINE:?}: {stage} was late");
            }
            tracing::debug!(
                stage,
                ms = started.elapsed().as_millis() as u64,
                "stage stopped"
            );
        }
        Ok(())
    }
}

/// Resolves when the store reports that it stopped for good (the embedded
/// store after a failed write), with why.
async fn store_stopped(store: Arc<dyn fleetd_store::Store>) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e @ fleetd_store::StoreError::Stopped(_)) = store.ready().await {
            return e.to_string();
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
