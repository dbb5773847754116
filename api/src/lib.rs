//! The HTTP API of fleetd (axum): vehicles, history, trips, the device
//! registry, alerts, rejections and operations.
//!
//! This is the only crate that knows HTTP and JSON. It reads from the store
//! through an `Arc<dyn Store>`, and writes only the device registry and the
//! geofences (to the store and to the processor's
//! [`fleetd_store::Registry`] and [`fleetd_geofence::Geofences`]); the
//! API is stateless over the store, so several nodes can serve the same
//! backend.
//!
//! Main pieces:
//!
//! * [`ApiState`]: what handlers share (store, rejection log, Prometheus
//!   handle, readiness flag, and ingest's `Submitter` for
//!   `POST /v1/positions`). The binary builds it once and passes it to
//!   [`serve`] (or to [`router`] in tests, with `oneshot` and no sockets).
//! * [`ApiError`]: the one error type of every handler. It renders as
//!   `{"error": {"code": "...", "message": "..."}}` with the matching status,
//!   and so do unknown routes (404), wrong methods (405) and axum's own
//!   extractor rejections (400).
//! * [`LiveApi`]: the hub, [`StreamSettings`] (per-client buffer,
//!   heartbeat) and [`MapSettings`] (optional tiles) of the live routes.
//!   Each stream client has a pump task feeding a bounded queue; a client
//!   that falls behind is dropped, never waited for.
//! * Access control in one middleware (the `auth` module): every route's
//!   need is declared in `ROUTE_ACCESS` below the route table; it reads
//!   `Authorization: Bearer <token>` (HTTP basic for `POST /v1/positions`),
//!   answers 401 (with `WWW-Authenticate: Bearer realm="fleetd"`) without
//!   a valid token and 403 when its scope is too low, and puts the caller's
//!   `fleetd_auth::Identity` in the request's extensions. With
//!   `allow_anonymous` every request passes, as before authentication.
//!   Before it, the browser guards: CORS for `[api] cors_origins`, the
//!   `Origin` of live streams, and no state-changing browser request
//!   without a token or a JSON body (415).
//! * A middleware that counts requests (`fleetd_http_requests_total{route,status}`),
//!   times them (`fleetd_http_request_seconds{route}`), opens a debug-level
//!   tracing span per request, logs 5xx causes once, and bounds each request
//!   with a timeout so that graceful shutdown cannot hang on a slow request.
//!
//! # Routes
//!
//! The scope each needs is in `ROUTE_ACCESS` (and in `api/openapi.json`
//! as each operation's `security` and `x-fleetd-scope`); a higher scope
//! includes the lower ones.
//!
//! | route | handler |
//! |---|---|
//! | `GET /v1/vehicles/{id}` | latest position of one vehicle |
//! | `GET /v1/vehicles?bbox=…` / `?near=…&radius_m=…` / `?cell=…` | vehicles in an area (`format=json|geojson`) |
//! | `GET /v1/vehicles/{id}/track?from=&to=&limit=&cursor=` | history, paginated (`format=json|geojson`) |
//! | `GET /v1/vehicles/{id}/trips`, `.../trips/{trip}`, `.../trips/{trip}/track` | trips, one trip, its track |
//! | `PUT/GET/DELETE /v1/devices/{id}`, `GET /v1/devices` | device registry |
//! | `PUT/GET/DELETE /v1/geofences/{id}`, `GET /v1/geofences?limit=&cursor=` | geofences |
//! | `GET /v1/geofences/{id}/vehicles`, `GET /v1/vehicles/{id}/geofences` | who is inside now |
//! | `GET /v1/alerts?since=&until=&device=&geofence=&kind=&limit=&cursor=` | alerts, newest first |
//! | `POST /v1/positions` | HTTP ingest: OwnTracks HTTP mode and fleetd JSON, through ingest's `Submitter` |
//! | `GET /v1/rejections?limit=` | recent rejected inputs, newest first |
//! | `GET /v1/stream`, `GET /v1/ws` | live positions and alerts (SSE, WebSocket), resumable |
//! | `GET /v1/cells?res=&bbox=` | live vehicle counts per H3 cell (`format=json|geojson`) |
//! | `POST/DELETE /v1/devices/{id}/credentials`, `POST/DELETE /v1/users/{user}/credentials` | issue (or rotate) and revoke a device's or OwnTracks user's credential |
//! | `POST /v1/credentials` | issue credentials in bulk (`{"devices": [...], "users": [...]}`) |
//! | `POST/GET /v1/tokens`, `DELETE /v1/tokens/{id}` | API tokens: create (the secret is shown once), list, revoke |
//! | `GET /`, `GET /assets/{name}` | the live map page and its embedded assets |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | operations |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of all of the above (`api/openapi.json`) |
//!
//! Device ids containing `/` (OwnTracks `user/device`) must be
//! percent-encoded in paths: `/v1/vehicles/alice%2Fphone`.
//!
//! The JSON shapes are documented in the `dto` module (vehicle, GeoJSON) and
//! on each handler, and for clients in `api/openapi.json` (served at
//! `/openapi.json`), which tests hold to the router and to real responses.

mod auth;
mod body;
mod config;
mod conn;
mod dto;
mod error;
mod export;
mod extract;
mod live;
mod middleware;
mod osmand;
mod params;
mod records;
mod routes;
mod server;
mod state;

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod positions_tests;
#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod stream_tests;

use std::time::Duration;

use axum::Router;
use axum::http::Method;
use axum::routing::{delete, get, post, put};
use fleetd_schemas::Scope;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, ApiSettings, LiveApiSettings, LiveConfig};
pub use error::ApiError;
pub use live::StreamSettings;
pub use osmand::serve_osmand;
pub use routes::map::MapSettings;
pub use server::{ConnectionLimits, Handshake, PlainTcp, TlsHandshake};
pub use state::{ApiState, LiveApi};

/// Default bound on the time one request may take ([`ApiState::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What each route and method needs of its caller: `(method, route
/// template, need)`. The one place the API's access rules live; the scope
/// middleware reads it, and the tests hold `api/openapi.json`'s `security`
/// and `x-fleetd-scope` of every operation to it. A route template missing
/// here altogether needs `admin` (a forgotten route fails closed); a method
/// missing for a listed route goes on unchecked to the 405 fallback (the
/// tests hold the router's methods to the document, and the document to
/// this table).
pub(crate) const ROUTE_ACCESS: &[(Method, &str, auth::Need)] = {
    use auth::Need::{Ingest, Metrics, Open, ReadOrShare, Scope as S};
    const READ: auth::Need = S(Scope::Read);
    const WRITE: auth::Need = S(Scope::Write);
    const ADMIN: auth::Need = S(Scope::Admin);
    &[
        (Method::GET, "/v1/vehicles", READ),
        (Method::GET, "/v1/vehicles/{id}", ReadOrShare),
        (Method::GET, "/v1/vehicles/{id}/track", ReadOrShare),
        (Method::GET, "/v1/vehicles/{id}/trips", READ),
        (Method::GET, "/v1/vehicles/{id}/trips/{trip}", READ),
        (Method::GET, "/v1/vehicles/{id}/trips/{trip}/track", READ),
        (Method::GET, "/v1/devices", READ),
        (Method::GET, "/v1/devices/{id}", READ),
        (Method::PUT, "/v1/devices/{id}", WRITE),
        (Method::DELETE, "/v1/devices/{id}", WRITE),
        (Method::GET, "/v1/geofences", READ),
        (Method::GET, "/v1/geofences/{id}", READ),
        (Method::PUT, "/v1/geofences/{id}", WRITE),
        (Method::DELETE, "/v1/geofences/{id}", WRITE),
        (Method::GET, "/v1/geofences/{id}/vehicles", READ),
        (Method::GET, "/v1/vehicles/{id}/geofences", READ),
        (Method::GET, "/v1/alerts", READ),
        (Method::POST, "/v1/positions", Ingest),
        (Method::GET, "/v1/rejections", READ),
        (Method::GET, "/v1/cells", READ),
        (Method::GET, "/v1/stream", ReadOrShare),
        (Method::GET, "/v1/ws", ReadOrShare),
        (Method::POST, "/v1/devices/{id}/credentials", ADMIN),
        (Method::DELETE, "/v1/devices/{id}/credentials", ADMIN),
        (Method::POST, "/v1/users/{user}/credentials", ADMIN),
        (Method::DELETE, "/v1/users/{user}/credentials", ADMIN),
        (Method::POST, "/v1/credentials", ADMIN),
        (Method::POST, "/v1/tokens", ADMIN),
        (Method::GET, "/v1/tokens", ADMIN),
        (Method::DELETE, "/v1/tokens/{id}", ADMIN),
        (Method::POST, "/v1/shares", ADMIN),
        (Method::GET, "/v1/shares", ADMIN),
        (Method::DELETE, "/v1/shares/{id}", ADMIN),
        (Method::GET, "/v1/share", ReadOrShare),
        (Method::GET, "/v1/webhooks", ADMIN),
        (Method::PUT, "/v1/webhooks/{id}", ADMIN),
        (Method::GET, "/v1/webhooks/{id}", ADMIN),
        (Method::DELETE, "/v1/webhooks/{id}", ADMIN),
        (Method::GET, "/v1/webhooks/{id}/dead-letters", ADMIN),
        (Method::POST, "/v1/webhooks/{id}/dead-letters/clear", ADMIN),
        (
            Method::POST,
            "/v1/webhooks/{id}/dead-letters/redeliver",
            ADMIN,
        ),
        (Method::GET, "/", Open),
        (Method::GET, "/assets/{name}", Open),
        (Method::GET, "/healthz", Open),
        (Method::GET, "/readyz", Open),
        (Method::GET, "/metrics", Metrics),
        (Method::GET, "/openapi.json", Open),
    ]
};

/// The need of `method` on the route `template`; `None` for a method a
/// listed route does not serve (HEAD is served wherever GET is), `admin`
/// for a route not listed at all.
pub(crate) fn route_access(method: &Method, template: &str) -> Option<auth::Need> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut listed = false;
    for (m, path, need) in ROUTE_ACCESS {
        if *path == template {
            if m == method {
                return Some(*need);
            }
            listed = true;
        }
    }
    (!listed).then_some(auth::Need::Scope(Scope::Admin))
}

/// Builds the complete router: every route, the JSON fallbacks for unknown
/// routes (404) and wrong methods (405), and the request middleware.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/vehicles", get(routes::vehicles::in_area))
        .route("/v1/vehicles/{id}", get(routes::vehicles::latest))
        .route("/v1/vehicles/{id}/track", get(routes::vehicles::track))
        .route("/v1/vehicles/{id}/trips", get(routes::trips::list))
        .route("/v1/vehicles/{id}/trips/{trip}", get(routes::trips::get))
        .route(
            "/v1/vehicles/{id}/trips/{trip}/track",
            get(routes::trips::track),
        )
        .route("/v1/devices", get(routes::devices::list))
        .route(
            "/v1/devices/{id}",
            put(routes::devices::put)
                .get(routes::devices::get)
                .delete(routes::devices::delete),
        )
        .route("/v1/geofences", get(routes::geofences::list))
        .route(
            "/v1/geofences/{id}",
            put(routes::geofences::put)
                .get(routes::geofences::get)
                .delete(routes::geofences::delete),
        )
        .route(
            "/v1/geofences/{id}/vehicles",
            get(routes::geofences::vehicles),
        )
        .route(
            "/v1/vehicles/{id}/geofences",
            get(routes::geofences::of_vehicle),
        )
        .route("/v1/alerts", get(routes::alerts::list))
        .route("/v1/positions", post(routes::positions::post))
        .route("/v1/rejections", get(routes::rejections::recent))
        .route("/v1/cells", get(routes::cells::cells))
        .route(
            "/v1/devices/{id}/credentials",
            post(routes::access::issue_device).delete(routes::access::revoke_device),
        )
        .route(
            "/v1/users/{user}/credentials",
            post(routes::access::issue_user).delete(routes::access::revoke_user),
        )
        .route("/v1/credentials", post(routes::access::issue_bulk))
        .route(
            "/v1/tokens",
            post(routes::access::create_token).get(routes::access::list_tokens),
        )
        .route("/v1/tokens/{id}", delete(routes::access::revoke_token))
        .route(
            "/v1/shares",
            post(routes::access::create_share).get(routes::access::list_shares),
        )
        .route("/v1/shares/{id}", delete(routes::access::revoke_share))
        .route("/v1/share", get(routes::access::this_share))
        .route("/v1/webhooks", get(routes::webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            put(routes::webhooks::put)
                .get(routes::webhooks::get)
                .delete(routes::webhooks::delete),
        )
        .route(
            "/v1/webhooks/{id}/dead-letters",
            get(routes::webhooks::dead_letters),
        )
        .route(
            "/v1/webhooks/{id}/dead-letters/clear",
            post(routes::webhooks::clear_dead_letters),
        )
        .route(
            "/v1/webhooks/{id}/dead-letters/redeliver",
            post(routes::webhooks::redeliver),
        )
        .route("/", get(routes::map::index))
        .route("/assets/{name}", get(routes::map::asset))
        .route("/v1/stream", get(routes::stream::sse))
        .route("/v1/ws", get(routes::stream::ws))
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(routes::openapi::spec))
        // Must come after the routes: it applies to the routes added so far.
        .method_not_allowed_fallback(routes::fallback::method_not_allowed)
        .fallback(routes::fallback::not_found)
        // Layers run bottom-up on the way in: `observe` sees the response of
        // `timeout`, so timed-out requests are counted and logged too; the
        // browser guards answer preflights before any token is asked for,
        // and the scope check runs last, right before the handler.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::browser_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            middleware::timeout,
        ))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

/// Serves the API over plain HTTP on `listener` until `shutdown` is
/// cancelled; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    serve_with(listener, PlainTcp, state, limits, shutdown).await;
}

/// Serves the API on `listener`, each accepted connection going through
/// `handshake` (TLS, or [`PlainTcp`]), until `shutdown` is cancelled; then
/// stops accepting connections and waits for in-flight requests to finish.
///
/// Connections are bounded by `limits` (a cap on open connections,
/// header-read and idle timeouts). Every plain request is bounded by
/// [`ApiState::request_timeout`], and live streams end when `shutdown`
/// fires, so the wait after cancellation is bounded too (plus the time to
/// write a response).
pub async fn serve_with<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    mut state: ApiState,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, max_connections = limits.max_connections, "http api listening");
    }
    state.live.shutdown = shutdown.child_token();
    let pumps = state.live.tasks.clone();
    server::accept_loop(listener, handshake, router(state), limits, shutdown).await;
    pumps.close();
    pumps.wait().await;
    tracing::info!("http api stopped");
}
