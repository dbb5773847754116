//! Geofences: `PUT/GET/DELETE /v1/geofences/{id}`, `GET /v1/geofences`, and
//! membership: `GET /v1/geofences/{id}/vehicles`,
//! `GET /v1/vehicles/{id}/geofences`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetd_geofence::{Geofence, GeofenceError};
use fleetd_schemas::{DeviceId, GeofenceId};
use fleetd_store::{StoreError, StoredGeofence};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::params::{bad, echo, parse_device_id, parse_limit};
use crate::state::ApiState;

/// Default and largest page of `GET /v1/geofences` and of members.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Validates the `{id}` path segment of a geofence.
fn parse_fence_id(raw: &str) -> Result<GeofenceId, ApiError> {
    GeofenceId::parse(raw).map_err(|err| bad(format!("invalid geofence id: {err}")))
}

fn not_found(id: &GeofenceId) -> ApiError {
    ApiError::NotFound(format!("geofence {:?} does not exist", id.as_str()))
}

/// A fence's stored text as JSON, with its `updated_ms`.
fn stored_json(stored: &StoredGeofence) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_str(&stored.geojson).map_err(|err| {
        ApiError::from(StoreError::Corrupt(format!(
            "geofence {}: {err}",
            stored.id
        )))
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("updated_ms".into(), stored.updated_ms.into());
    }
    Ok(value)
}

/// `PUT /v1/geofences/{id}` with a GeoJSON Feature (Polygon or
/// MultiPolygon, holes allowed; `properties` kept: `name`, `dwell_s`, any
/// tags) or a circle `{"center": [lon, lat], "radius_m": R, "properties":
/// {...}}`. Creates (201) or replaces (200) the fence and answers it as
/// stored. Invalid geometry is a 400 naming the problem and where it is
/// (polygon, ring, position). The processor evaluates the fence from its
/// next batch on; vehicles already inside enter on their next fix.
pub(crate) async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let id = parse_fence_id(&id)?;
    let geofences = Arc::clone(&state.geofences);
    // Validation is geometry work (self-intersection checks): off the runtime.
    let fence = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || Geofence::from_value(id, &body, geofences.limits()))
            .await
            .map_err(|e| ApiError::Internal(format!("geofence validation task: {e}")))?
            .map_err(invalid)?
    };
    let existed = state.store.geofence(&id).await?.is_some();
    // Members left by an earlier fence of this id (a delete that failed
    // half-way) must not appear inside the new one. Only then: on ScyllaDB
    // the clearing is a tombstone at server time, which would also hide
    // the new fence's first enters (their device time is a little older).
    if !existed
        && !state
            .store
            .geofence_members(&id, None, 1)
            .await?
            .items
            .is_empty()
    {
        state.store.delete_geofence(&id).await?;
    }
    let stored = StoredGeofence {
        id: id.clone(),
        geojson: fence.to_geojson_string(),
        updated_ms: fleetd_schemas::now_ms(),
    };
    state.store.put_geofence(&stored).await?;
    let geofences = Arc::clone(&state.geofences);
    tokio::task::spawn_blocking(move || geofences.upsert(fence))
        .await
        .map_err(|e| ApiError::Internal(format!("geofence index task: {e}")))?;
    metrics::gauge!("fleetd_geofences").set(state.geofences.len() as f64);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(stored_json(&stored)?)).into_response())
}

fn invalid(err: GeofenceError) -> ApiError {
    bad(format!("invalid geofence: {err}"))
}

/// `GET /v1/geofences/{id}`: the fence as stored (GeoJSON Feature or
/// circle, plus `updated_ms`), or 404.
pub(crate) async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_fence_id(&id)?;
    let stored = state
        .store
        .geofence(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(stored_json(&stored)?).into_response())
}

/// `DELETE /v1/geofences/{id}`: 204, or 404 if there was no such fence.
/// Memberships end without `exit` alerts.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_fence_id(&id)?;
    // The index first: no batch starting after this evaluates the fence.
    let cached = state.geofences.remove(&id).is_some();
    let existed = state.store.delete_geofence(&id).await?;
    metrics::gauge!("fleetd_geofences").set(state.geofences.len() as f64);
    if !(existed || cached) {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query parameters of the paged lists.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageParams {
    limit: Option<String>,
    cursor: Option<String>,
}

impl PageParams {
    fn limit(&self) -> Result<usize, ApiError> {
        parse_limit(self.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)
    }
}

/// Body of `GET /v1/geofences`.
#[derive(Debug, Serialize)]
struct GeofenceList {
    geofences: Vec<Value>,
    count: usize,
    total: usize,
    next_cursor: Option<String>,
}

/// `GET /v1/geofences?limit=&cursor=`: fences by id (default 100, at most
/// 1000 per page): `{"geofences": [...], "count", "total", "next_cursor"}`;
/// pass `next_cursor` as `cursor` for the next page.
pub(crate) async fn list(
    State(state): State<ApiState>,
    Query(params): Query<PageParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    // An empty cursor is the first page, as on every paged route.
    let after = params
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| GeofenceId::parse(c).map_err(|_| bad(format!("malformed cursor {}", echo(c)))))
        .transpose()?;
    let (fences, more) = state.geofences.page(after.as_ref(), limit);
    let next_cursor = more
        .then(|| fences.last().map(|f| f.id.to_string()))
        .flatten();
    Ok(Json(GeofenceList {
        count: fences.len(),
        total: state.geofences.len(),
        geofences: fences.iter().map(Geofence::to_geojson).collect(),
        next_cursor,
    })
    .into_response())
}

/// One device inside a fence.
#[derive(Debug, Serialize)]
struct Member {
    device_id: String,
    entered_ms: i64,
}

/// Body of `GET /v1/geofences/{id}/vehicles`.
#[derive(Debug, Serialize)]
struct MemberList {
    geofence_id: String,
    vehicles: Vec<Member>,
    count: usize,
    next_cursor: Option<String>,
}

/// `GET /v1/geofences/{id}/vehicles?limit=&cursor=`: the vehicles inside
/// the fence now, by device id: `{"geofence_id", "vehicles": [{"device_id",
/// "entered_ms"}], "count", "next_cursor"}`; 404 for an unknown fence.
pub(crate) async fn vehicles(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Response, ApiError> {
    let id = parse_fence_id(&id)?;
    let limit = params.limit()?;
    // An empty cursor is the first page, as on every paged route.
    let after = params
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| DeviceId::parse(c).map_err(|_| bad(format!("malformed cursor {}", echo(c)))))
        .transpose()?;
    if state.store.geofence(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let page = state
        .store
        .geofence_members(&id, after.as_ref(), limit)
        .await?;
    let vehicles: Vec<Member> = page
        .items
        .into_iter()
        .map(|m| Member {
            device_id: m.device.to_string(),
            entered_ms: m.entered_ms,
        })
        .collect();
    Ok(Json(MemberList {
        geofence_id: id.to_string(),
        count: vehicles.len(),
        vehicles,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

/// One fence a vehicle is inside.
#[derive(Debug, Serialize)]
struct Inside {
    geofence_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    entered_ms: i64,
}

/// Body of `GET /v1/vehicles/{id}/geofences`.
#[derive(Debug, Serialize)]
struct InsideList {
    device_id: String,
    geofences: Vec<Inside>,
    count: usize,
}

/// `GET /v1/vehicles/{id}/geofences`: the fences the vehicle is inside now,
/// by fence id: `{"device_id", "geofences": [{"geofence_id", "name"?,
/// "entered_ms"}], "count"}`; 404 for a vehicle never seen.
pub(crate) async fn of_vehicle(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let (position, vehicle) = tokio::try_join!(
        state.store.latest(&device),
        state.store.vehicle_state(&device)
    )?;
    if position.is_none() && vehicle.is_none() {
        return Err(ApiError::NotFound(format!(
            "vehicle {:?} has not reported",
            device.as_str()
        )));
    }
    let index = state.geofences.read();
    // Memberships of deleted fences linger in the stored state until the
    // vehicle's next fix: they are not memberships any more.
    let geofences: Vec<Inside> = vehicle
        .iter()
        .flat_map(|v| v.fences.memberships())
        .filter_map(|m| {
            let fence = index.get(&m.fence)?;
            Some(Inside {
                geofence_id: m.fence.to_string(),
                name: fence.name.clone(),
                entered_ms: m.entered_ms,
            })
        })
        .collect();
    drop(index);
    Ok(Json(InsideList {
        device_id: device.to_string(),
        count: geofences.len(),
        geofences,
    })
    .into_response())
}
