//! The state shared by all handlers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fleetd_geofence::Geofences;
use fleetd_ingest::Submitter;
use fleetd_live::{LiveHub, LiveSettings};
use fleetd_schemas::RejectionLog;
use fleetd_store::{Registry, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::live::StreamSettings;
use crate::routes::map::{MapSettings, render_index};

/// What every handler can reach. Cheap to clone (shared pointers only); axum
/// clones it per request.
#[derive(Clone)]
pub struct ApiState {
    /// Where positions are read from. The API only reads.
    pub store: Arc<dyn Store>,
    /// Recent rejected inputs, written by ingest, served by `GET /v1/rejections`.
    pub rejections: Arc<RejectionLog>,
    /// Renders the process's metrics for `GET /metrics`. The binary installs
    /// the recorder; the API only renders.
    pub metrics: PrometheusHandle,
    /// Set by the binary once the processor has restored its state from the
    /// store; until then `GET /readyz` answers 503.
    pub ready: Arc<AtomicBool>,
    /// The device registry cache: `PUT/DELETE /v1/devices/{id}` write the
    /// store and then this, so the processor's next batch sees the change.
    pub registry: Arc<Registry>,
    /// The geofence index: `PUT/DELETE /v1/geofences/{id}` write the store
    /// and then this, so the processor's next batch evaluates the change.
    pub geofences: Arc<Geofences>,
    /// Upper bound on the time one request may take. It keeps graceful
    /// shutdown from waiting forever on a slow request; a request that runs
    /// out of time gets a 503 `timeout` error.
    pub request_timeout: Duration,
    /// Live streams, the heatmap and the map page.
    pub live: LiveApi,
    /// HTTP ingest (`POST /v1/positions`): decodes like MQTT ingest and
    /// queues into the processor's input. `None` until the binary wires it;
    /// the route then answers 503.
    pub ingest: Option<Submitter>,
}

/// What the live routes share: the hub, per-client limits, the shutdown
/// signal streams watch, and the rendered map page.
#[derive(Clone)]
pub struct LiveApi {
    /// Where streams subscribe and `/v1/cells` reads counts.
    pub hub: LiveHub,
    /// Per-connection limits and heartbeat.
    pub settings: StreamSettings,
    /// Cancelled when the API stops; every stream ends then, so graceful
    /// shutdown does not wait on open streams. [`crate::serve`] ties it to
    /// its own shutdown token.
    pub shutdown: CancellationToken,
    /// Every stream's pump task; [`crate::serve`] waits for them after the
    /// server has stopped, so no pump outlives the API.
    pub tasks: TaskTracker,
    /// The map page with its config, rendered once.
    pub(crate) index_html: Arc<str>,
}

impl LiveApi {
    /// Live routes over `hub`.
    pub fn new(hub: LiveHub, settings: StreamSettings, map: &MapSettings) -> Self {
        Self {
            hub,
            settings,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            index_html: Arc::from(render_index(map)),
        }
    }
}

impl ApiState {
    /// State with the default request timeout ([`crate::DEFAULT_REQUEST_TIMEOUT`]).
    pub fn new(
        store: Arc<dyn Store>,
        rejections: Arc<RejectionLog>,
        metrics: PrometheusHandle,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            rejections,
            metrics,
            ready,
            registry: Arc::new(Registry::default()),
            geofences: Arc::new(Geofences::default()),
            request_timeout: crate::DEFAULT_REQUEST_TIMEOUT,
            // Until the binary hands in the processor's hub: live routes
            // work, with nothing published.
            live: LiveApi::new(
                LiveHub::new(LiveSettings::default()),
                StreamSettings::default(),
                &MapSettings::default(),
            ),
            ingest: None,
        }
    }

    /// Takes HTTP ingest through `submitter` (sharing the processor's queue).
    #[must_use]
    pub fn with_ingest(mut self, submitter: Submitter) -> Self {
        self.ingest = Some(submitter);
        self
    }

    /// Shares `registry` with the processor (the binary passes the one the
    /// processor reads).
    #[must_use]
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = registry;
        self
    }

    /// Shares `geofences` with the processor.
    #[must_use]
    pub fn with_geofences(mut self, geofences: Arc<Geofences>) -> Self {
        self.geofences = geofences;
        self
    }

    /// Replaces the live routes' hub and settings.
    #[must_use]
    pub fn with_live(mut self, live: LiveApi) -> Self {
        self.live = live;
        self
    }

    /// Replaces the request timeout (from configuration).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("ready", &self.ready)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}
