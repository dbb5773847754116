//! Request middleware: per-request timeout, and metrics, tracing and 5xx
//! logging for every request.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::{ApiError, ErrorCause};

/// Route label of requests that matched no route (the 404 fallback). Raw
/// paths are never used as labels, so label cardinality stays bounded.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Routes whose responses are long-lived streams: exempt from the timeout
/// (the bound covers producing the response head, which a stream returns
/// at once); they end on shutdown instead.
const STREAM_ROUTES: [&str; 2] = ["/v1/stream", "/v1/ws"];

/// Answers 503 `timeout` when the request takes longer than `limit`.
///
/// This bounds how long graceful shutdown waits for in-flight requests.
pub(crate) async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let streaming = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| STREAM_ROUTES.contains(&p.as_str()));
    if streaming {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// Counts and times each request by route template, runs it inside a
/// debug-level span, and logs the hidden cause of 5xx responses once.
///
/// Metrics: `fleetd_http_requests_total{route,status}` (counter) and
/// `fleetd_http_request_seconds{route}` (histogram).
pub(crate) async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let span = tracing::debug_span!(
        "http_request",
        method = %req.method(),
        route = %route,
        uri = %req.uri(),
    );
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();

    let _entered = span.enter();
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(status = status.as_u16(), error = %cause, "request failed");
        } else {
            tracing::warn!(status = status.as_u16(), error = %cause, "request failed");
        }
    }
    tracing::debug!(
        status = status.as_u16(),
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request done"
    );

    metrics::counter!(
        "fleetd_http_requests_total",
        "route" => route.clone(),
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    metrics::histogram!("fleetd_http_request_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    response
}
