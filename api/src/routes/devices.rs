//! The device registry: `PUT/GET/DELETE /v1/devices/{id}`, `GET /v1/devices`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::params::{DeviceBody, RejectionsParams, parse_device_id};
use crate::records::DeviceJson;
use crate::state::ApiState;

/// `PUT /v1/devices/{id}` with `{"name", "class", "speed_limit_kmh", "tags"}`
/// (all optional; unknown fields are a 400): creates (201) or replaces (200)
/// the entry and answers it. The processor's next batch joins it.
pub(crate) async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DeviceBody>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let info = body.validate(fleetd_schemas::now_ms())?;
    let existed = state.store.device(&device).await?.is_some();
    state.store.put_device(&device, &info).await?;
    state.registry.upsert(device.clone(), info.clone());
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(DeviceJson::new(device.as_str(), &info))).into_response())
}

/// `GET /v1/devices/{id}`: the entry, or 404.
pub(crate) async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let info = state
        .store
        .device(&device)
        .await?
        .ok_or_else(|| not_registered(device.as_str()))?;
    Ok(Json(DeviceJson::new(device.as_str(), &info)).into_response())
}

/// `DELETE /v1/devices/{id}`: 204, or 404 if there was no entry.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let existed = state.store.delete_device(&device).await?;
    state.registry.remove(&device);
    if !existed {
        return Err(not_registered(device.as_str()));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `GET /v1/devices`.
#[derive(Debug, Serialize)]
struct DeviceList<'a> {
    devices: Vec<DeviceJson<'a>>,
    count: usize,
    truncated: bool,
}

/// `GET /v1/devices?limit=`: registry entries by id (default 100, at most
/// 1000), from the processor's cache.
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(params): Query<RejectionsParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    let mut entries = state.registry.entries();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let truncated = entries.len() > limit;
    entries.truncate(limit);
    let devices = entries
        .iter()
        .map(|(id, info)| DeviceJson::new(id.as_str(), info))
        .collect::<Vec<_>>();
    Ok(Json(DeviceList {
        count: devices.len(),
        devices,
        truncated,
    })
    .into_response())
}

fn not_registered(id: &str) -> ApiError {
    ApiError::NotFound(format!("device {id:?} is not in the registry"))
}
