//! Vehicle routes: latest position, vehicles in an area, and history.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleetd_auth::Identity;
use fleetd_schemas::DeviceId;
use fleetd_store::{HistoryPage, StoreError};

use super::geojson;
use crate::dto::{AreaMembers, FeatureCollection, Track, TrackMembers, Vehicle, VehicleList};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::params::{AreaParams, Format, TrackFormat, TrackParams, parse_device_id};
use crate::records::VehicleDetail;
use crate::state::ApiState;

/// `GET /v1/vehicles/{id}`: the vehicle JSON of the device's latest
/// position, with its vehicle state (motion, odometer, open trip) and
/// registry entry (see `records`).
///
/// 400 if `id` is not a valid device id, 404 if the device never reported.
pub(crate) async fn latest(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    shown_by_share(identity.as_ref(), &device)?;
    let (position, vehicle) = tokio::try_join!(
        state.store.latest(&device),
        state.store.vehicle_state(&device)
    )?;
    let position = position.ok_or_else(|| unknown(&device))?;
    let info = state.registry.get(&device);
    let limit = state.registry.speed_limit_kmh(info.as_ref());
    Ok(Json(VehicleDetail::new(
        Vehicle::new(&position),
        device.as_str(),
        vehicle.as_ref(),
        info.as_ref(),
        limit,
    ))
    .into_response())
}

/// `GET /v1/vehicles?bbox=|near=&radius_m=|cell=[&limit=][&format=]`: latest
/// positions inside an area.
///
/// JSON: `{"vehicles": [vehicle...], "count": N, "truncated": bool}`;
/// GeoJSON: a `FeatureCollection` with the same `count` and `truncated` as
/// foreign members. `truncated` is true when more than `limit` vehicles matched.
pub(crate) async fn in_area(
    State(state): State<ApiState>,
    Query(params): Query<AreaParams>,
) -> Result<Response, ApiError> {
    let request = params.validate()?;
    // One extra row tells whether the answer was cut at `limit`.
    let mut positions = state
        .store
        .latest_in_area(&request.area, request.limit.saturating_add(1))
        .await?;
    let truncated = positions.len() > request.limit;
    positions.truncate(request.limit);
    Ok(match request.format {
        Format::Json => Json(VehicleList::new(&positions, truncated)).into_response(),
        Format::GeoJson => {
            let members = AreaMembers {
                count: positions.len(),
                truncated,
            };
            geojson(FeatureCollection::new(&positions, members))
        }
    })
}

/// `GET /v1/vehicles/{id}/track?from=&to=&limit=&cursor=&format=&filtered=`:
/// a page of the device's history, oldest first (`filtered=false` leaves
/// out fixes flagged by a data-quality filter; the page may then hold fewer
/// than `limit` items, and `next_cursor` still continues it).
///
/// JSON: `{"device_id": "...", "items": [vehicle...], "next_cursor": "..." | null}`;
/// GeoJSON: a `FeatureCollection` with `device_id` and `next_cursor` as
/// foreign members. 404 if the device has no latest position; 400 for a bad
/// parameter or cursor.
pub(crate) async fn track(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
    Path(id): Path<String>,
    Query(params): Query<TrackParams>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    shown_by_share(identity.as_ref(), &device)?;
    let now = fleetd_schemas::now_ms();
    let mut request = params.validate(now)?;
    // A share link reads only its recent history.
    if let Some(grant) = identity.as_ref().and_then(|Extension(i)| i.share()) {
        let earliest = now.saturating_sub(i64::from(grant.history_s) * 1000);
        request.query.from_ms = request.query.from_ms.max(earliest);
        request.query.to_ms = request.query.to_ms.max(request.query.from_ms);
    }
    if state.store.latest(&device).await?.is_none() {
        return Err(unknown(&device));
    }
    let format = match request.format {
        TrackFormat::Page(format) => format,
        TrackFormat::Export(export) => {
            let range = crate::export::Range {
                from_ms: request.query.from_ms,
                to_ms: request.query.to_ms,
                include_filtered: request.include_filtered,
                name: device.as_str().to_owned(),
            };
            return Ok(crate::export::stream(
                Arc::clone(&state.store),
                device,
                range,
                export,
            ));
        }
    };
    let has_cursor = request.query.cursor.is_some();
    let page = match state.store.history(&device, &request.query).await {
        Ok(page) => page,
        // The cursor is the only part of a validated query the store can reject.
        Err(StoreError::InvalidQuery(msg)) if has_cursor => {
            return Err(ApiError::BadRequest(format!("invalid cursor: {msg}")));
        }
        Err(err) => return Err(err.into()),
    };
    let mut items = page.items;
    if !request.include_filtered {
        items.retain(|p| p.flag.is_none());
    }
    let page = HistoryPage {
        items,
        next_cursor: page.next_cursor,
    };
    let cursor = page.next_cursor.as_deref();
    Ok(match format {
        Format::Json => Json(Track::new(device.as_str(), &page.items, cursor)).into_response(),
        Format::GeoJson => {
            let members = TrackMembers {
                device_id: device.as_str(),
                next_cursor: cursor,
            };
            geojson(FeatureCollection::new(&page.items, members))
        }
    })
}

/// For a share link's holder, the devices it does not show do not exist
/// (404, as for a device never heard: the link reveals nothing more).
pub(crate) fn shown_by_share(
    identity: Option<&Extension<Identity>>,
    device: &DeviceId,
) -> Result<(), ApiError> {
    match identity.and_then(|Extension(i)| i.share()) {
        Some(grant) if !grant.shows(device) => Err(unknown(device)),
        _ => Ok(()),
    }
}

pub(crate) fn unknown(device: &DeviceId) -> ApiError {
    ApiError::NotFound(format!(
        "no position known for vehicle {:?}",
        device.as_str()
    ))
}
