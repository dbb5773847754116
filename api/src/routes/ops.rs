//! Operations routes: liveness, readiness and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::ApiState;

/// Media type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Body of the health endpoints: `{"status": "ok" | "ready"}`.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    status: &'static str,
}

/// `GET /healthz`: 200 `{"status": "ok"}` while the process serves HTTP.
pub(crate) async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// `GET /readyz`: 200 `{"status": "ready"}` once the processor has restored
/// its state and the store answers; otherwise 503 `not_ready` naming what
/// is not ready.
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let mut not_ready = Vec::new();
    if !state.ready.load(Ordering::Acquire) {
        not_ready.push("processor has not restored its state yet");
    }
    if let Err(err) = state.store.ready().await {
        tracing::warn!(error = %err, "store is not ready");
        not_ready.push("store is not ready");
    }
    if state
        .ingest
        .as_ref()
        .is_some_and(|ingest| !ingest.journal_writable())
    {
        not_ready.push("the ingest journal cannot write (disk full or failing)");
    }
    if not_ready.is_empty() {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(ApiError::NotReady(format!(
            "not ready: {}",
            not_ready.join("; ")
        )))
    }
}

/// `GET /metrics`: every metric of the process, Prometheus text format.
pub(crate) async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))],
        state.metrics.render(),
    )
}
