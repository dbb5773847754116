//! The state shared by all handlers.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fleetd_auth::Access;
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
    /// Who is calling: bearer tokens and their scopes for every protected
    /// route, HTTP basic logins for `POST /v1/positions`, and the
    /// credentials and tokens the admin routes issue and revoke.
    pub access: Arc<Access>,
    /// Browser origins allowed to call the API (CORS) and to open live
    /// streams, besides the page's own host; `[api] cors_origins`.
    pub cors_origins: Arc<[String]>,
    /// Whether `GET /metrics` is open (`[api] metrics_open`); otherwise it
    /// needs a `read` token.
    pub metrics_open: bool,
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
    /// Webhooks (`/v1/webhooks`); `None` when they are off (the routes
    /// answer 404 saying so).
    pub webhooks: Option<fleetd_webhooks::Webhooks>,
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
    /// State with the default request timeout ([`crate::DEFAULT_REQUEST_TIMEOUT`]),
    /// no CORS origins and a protected `/metrics`. `access` decides who may
    /// call what (with `allow_anonymous` on, everyone may do everything).
    pub fn new(
        store: Arc<dyn Store>,
        access: Arc<Access>,
        rejections: Arc<RejectionLog>,
        metrics: PrometheusHandle,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            access,
            cors_origins: Arc::from(Vec::new()),
            metrics_open: false,
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
            webhooks: None,
        }
    }

    /// Serves `/v1/webhooks` through `webhooks`.
    #[must_use]
    pub fn with_webhooks(mut self, webhooks: Option<fleetd_webhooks::Webhooks>) -> Self {
        self.webhooks = webhooks;
        self
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

    /// Takes the browser origins allowed to call the API (`[api]
    /// cors_origins`, validated: `scheme://host[:port]`, lowercase).
    #[must_use]
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = Arc::from(origins);
        self
    }

    /// Opens `GET /metrics` to callers without a token (`[api] metrics_open`).
    #[must_use]
    pub fn with_metrics_open(mut self, open: bool) -> Self {
        self.metrics_open = open;
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
            .field("access", &self.access)
            .field("cors_origins", &self.cors_origins)
            .field("metrics_open", &self.metrics_open)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}
