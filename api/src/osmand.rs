//! The OsmAnd / Traccar Client listener (`--osmand`, Traccar's port 5055):
//! one fix per request, on any path, `GET` or `POST`, read by
//! `fleetd_ingest::osmand` and then validated, counted and journaled like
//! every other input (rejections under the source `osmand`).
//!
//! Answers: 200 with an empty body once the fix is durable in the journal
//! (what the apps wait for before deleting it); a refused fix is a JSON
//! error with its reason code (400, or 403 `not_authorized`); a full or
//! failing journal is 503 with `Retry-After`, so the app keeps the fix.
//!
//! Identity: with authentication on, the request carries the device's
//! secret, as basic auth (user = the device id) or as a `key` / `password`
//! parameter, and the fix must be for that device. Traccar trusts the id
//! alone; anyone could then write any device's track. A `write` API token
//! (as the password) may send fixes for every device, like a gateway.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetd_ingest::{Caller, SpeedUnit, SubmitError, osmand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::conn::Conn;
use crate::error::ApiError;
use crate::routes::positions::{RETRY_AFTER_DELAY, caller, read_body, rejected, retry_later};
use crate::server::{self, ConnectionLimits, Handshake};
use crate::state::ApiState;

/// The `source` of rejections sampled from this listener (`GET /v1/rejections`).
const SOURCE: &str = "osmand";

#[derive(Clone)]
struct OsmandState {
    api: ApiState,
    speed: SpeedUnit,
}

/// Serves the OsmAnd protocol on `listener` until `shutdown`, each
/// connection through `handshake` (TLS, or [`PlainTcp`]), with the same
/// connection caps and timeouts as the API (`limits`).
pub async fn serve_osmand<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    state: ApiState,
    speed: SpeedUnit,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, speed_unit = %speed, "osmand listener listening");
    }
    let timeout = state.request_timeout;
    let app = Router::new()
        .fallback(receive)
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            crate::middleware::timeout,
        ))
        .layer(axum::middleware::from_fn(crate::middleware::observe))
        .with_state(OsmandState { api: state, speed });
    server::accept_loop(listener, handshake, app, limits, shutdown).await;
    tracing::info!("osmand listener stopped");
}

async fn receive(State(state): State<OsmandState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::GET && parts.method != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let api = &state.api;
    let Some(ingest) = api.ingest.clone() else {
        return Err(ApiError::NotReady("ingest is not running".into()));
    };
    if !api.ready.load(Ordering::Acquire) {
        return Ok(retry_later(ApiError::NotReady(
            "not ready: fleetd is starting or shutting down; nothing was stored".into(),
        )));
    }
    let headers = parts.headers;
    let body = read_body(&ingest, SOURCE, &headers, body).await?;
    let query = parts.uri.query().unwrap_or_default();
    // The sample kept for `GET /v1/rejections`: what the tracker sent.
    let sample = if body.is_empty() {
        query.as_bytes()
    } else {
        &body[..]
    };
    let fix = match osmand::read_request(query, &body, state.speed) {
        Ok(fix) => fix,
        Err(reject) => {
            ingest.reject(SOURCE, reject.clone(), sample);
            return Err(rejected(reject, 0));
        }
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<Conn>>()
        .map(|ConnectInfo(conn)| conn.peer.ip());
    let caller = login(api, &headers, &fix, peer).await?;
    match ingest
        .submit_fix(&caller, SOURCE, &fix.device, fix.position, sample)
        .await
    {
        Ok(Ok(())) => Ok(StatusCode::OK.into_response()),
        Ok(Err(reject)) => Err(rejected(reject, 0)),
        Err(SubmitError::QueueFull) => Err(ApiError::Overloaded {
            message: "the processor is behind; nothing was stored, retry later".into(),
            retry_after: RETRY_AFTER_DELAY,
        }),
        Err(SubmitError::Unavailable) => Err(ApiError::Overloaded {
            message: "fleetd cannot write its ingest journal (disk full or failing); nothing was acknowledged, retry later".into(),
            retry_after: RETRY_AFTER_DELAY,
        }),
        Err(_closed) => Ok(retry_later(ApiError::NotReady(
            "fleetd is shutting down; nothing was stored".into(),
        ))),
    }
}

/// Who sent the fix: basic auth, else the device id with its `key` /
/// `password` parameter; with authentication off, anyone.
async fn login(
    api: &ApiState,
    headers: &HeaderMap,
    fix: &osmand::OsmandFix,
    peer: Option<std::net::IpAddr>,
) -> Result<Caller, ApiError> {
    if api.access.allow_anonymous() {
        return Ok(Caller::anyone("anonymous"));
    }
    let (user, password) = match (crate::auth::basic_login(headers)?, &fix.key) {
        (Some(login), _) => login,
        (None, Some(key)) => (fix.device.clone(), key.clone()),
        (None, None) => {
            return Err(ApiError::Unauthorized {
                message: "send the device's secret: basic auth (user = device id) or a key parameter; nothing was stored".into(),
                basic: true,
            });
        }
    };
    let identity = crate::auth::login(api, &user, &password, peer).await?;
    let identity = crate::auth::may_post_positions(identity)?;
    Ok(caller(&identity))
}
