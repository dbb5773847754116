//! `GET /v1/rejections`: recent rejected inputs.

use axum::Json;
use axum::extract::State;
use fleetd_schemas::Rejection;
use serde::Serialize;

use crate::error::ApiError;
use crate::extract::Query;
use crate::params::RejectionsParams;
use crate::state::ApiState;

/// Body of `GET /v1/rejections`.
#[derive(Debug, Serialize)]
pub(crate) struct Rejections {
    rejections: Vec<Rejection>,
}

/// `GET /v1/rejections?limit=`: `{"rejections": [...]}`, newest first;
/// `limit` defaults to 100, at most 1000.
pub(crate) async fn recent(
    State(state): State<ApiState>,
    Query(params): Query<RejectionsParams>,
) -> Result<Json<Rejections>, ApiError> {
    let limit = params.limit()?;
    Ok(Json(Rejections {
        rejections: state.rejections.recent(limit),
    }))
}
