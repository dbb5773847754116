//! `GET /v1/alerts`: stored alerts, newest first.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use fleetd_schemas::Alert;
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::Query;
use crate::params::AlertsParams;
use crate::state::ApiState;

/// Body of `GET /v1/alerts`.
#[derive(Debug, Serialize)]
struct AlertList {
    alerts: Vec<Alert>,
    next_cursor: Option<String>,
}

/// `GET /v1/alerts?since=&until=&device=&geofence=&kind=&limit=&cursor=`:
/// `{"alerts": [alert...], "next_cursor": "..." | null}`, newest first.
/// Each alert is `{"id", "kind", "device_id", "geofence_id"?, "ts_ms",
/// "lat", "lon", "detail"}`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(params): Query<AlertsParams>,
) -> Result<Response, ApiError> {
    let query = params.validate(fleetd_schemas::now_ms())?;
    let page = state.store.alerts(&query).await.map_err(|e| match e {
        fleetd_store::StoreError::InvalidQuery(msg) => ApiError::BadRequest(msg),
        other => other.into(),
    })?;
    Ok(Json(AlertList {
        alerts: page.items,
        next_cursor: page.next_cursor,
    })
    .into_response())
}
