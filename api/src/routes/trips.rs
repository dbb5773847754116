//! Trips: `GET /v1/vehicles/{id}/trips`, one trip, and a trip's track.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use fleetd_schemas::{DeviceId, Trip};
use fleetd_store::{HistoryQuery, TripPage};
use serde::Serialize;

use super::geojson;
use super::vehicles::unknown;
use crate::dto::{FeatureCollection, Track, TrackMembers};
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::params::{Format, TrackFormat, TrackParams, TripsParams, parse_device_id};
use crate::records::TripJson;
use crate::state::ApiState;

/// Body of `GET /v1/vehicles/{id}/trips`.
#[derive(Debug, Serialize)]
struct TripList {
    device_id: String,
    trips: Vec<TripJson>,
    next_cursor: Option<String>,
}

/// `GET /v1/vehicles/{id}/trips?from=&to=&limit=&cursor=`: trips starting in
/// `[from, to]`, newest first; the open trip (if any) comes first on the
/// first page. 404 for a device never seen.
pub(crate) async fn list(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<TripsParams>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let query = params.validate(fleetd_schemas::now_ms())?;
    let vehicle = known_vehicle(&state, &device).await?;
    let first_page = query.cursor.is_none();
    let TripPage { items, next_cursor } = state.store.trips(&device, &query).await?;
    let open = vehicle
        .and_then(|v| v.trip.map(|t| *t))
        .filter(|t| first_page && (query.from_ms..=query.to_ms).contains(&t.start_ts_ms));
    let trips = open
        .iter()
        .chain(&items)
        .map(|t| TripJson::new(device.as_str(), t))
        .collect();
    Ok(Json(TripList {
        device_id: device.to_string(),
        trips,
        next_cursor,
    })
    .into_response())
}

/// `GET /v1/vehicles/{id}/trips/{trip_id}`: one trip (open or closed).
pub(crate) async fn get(
    State(state): State<ApiState>,
    Path((id, trip_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let trip = find_trip(&state, &device, &trip_id).await?;
    Ok(Json(TripJson::new(device.as_str(), &trip)).into_response())
}

/// `GET /v1/vehicles/{id}/trips/{trip_id}/track?limit=&cursor=&format=&filtered=`:
/// the history of the trip's time span, oldest first, paged like
/// `/v1/vehicles/{id}/track` (`from`/`to` are the trip's).
pub(crate) async fn track(
    State(state): State<ApiState>,
    Path((id, trip_id)): Path<(String, String)>,
    Query(params): Query<TrackParams>,
) -> Result<Response, ApiError> {
    let device = parse_device_id(&id)?;
    let trip = find_trip(&state, &device, &trip_id).await?;
    let request = params.validate(fleetd_schemas::now_ms())?;
    let query = HistoryQuery {
        from_ms: trip.start_ts_ms,
        to_ms: trip.end_ts_ms.unwrap_or(trip.last_ts_ms),
        ..request.query
    };
    let format = match request.format {
        TrackFormat::Page(format) => format,
        TrackFormat::Export(export) => {
            let range = crate::export::Range {
                from_ms: query.from_ms,
                to_ms: query.to_ms,
                include_filtered: request.include_filtered,
                name: format!("{}-trip-{}", device.as_str(), trip.start_ts_ms),
            };
            return Ok(crate::export::stream(
                Arc::clone(&state.store),
                device,
                range,
                export,
            ));
        }
    };
    let page = state
        .store
        .history(&device, &query)
        .await
        .map_err(|e| match e {
            fleetd_store::StoreError::InvalidQuery(msg) => {
                ApiError::BadRequest(format!("invalid cursor: {msg}"))
            }
            other => other.into(),
        })?;
    let mut items = page.items;
    if !request.include_filtered {
        items.retain(|p| p.flag.is_none());
    }
    let cursor = page.next_cursor.as_deref();
    Ok(match format {
        Format::Json => Json(Track::new(device.as_str(), &items, cursor)).into_response(),
        Format::GeoJson => geojson(FeatureCollection::new(
            &items,
            TrackMembers {
                device_id: device.as_str(),
                next_cursor: cursor,
            },
        )),
    })
}

/// The vehicle state of a device that reported, or 404.
async fn known_vehicle(
    state: &ApiState,
    device: &DeviceId,
) -> Result<Option<fleetd_schemas::VehicleState>, ApiError> {
    let (latest, vehicle) = tokio::try_join!(
        state.store.latest(device),
        state.store.vehicle_state(device)
    )?;
    if latest.is_none() && vehicle.is_none() {
        return Err(unknown(device));
    }
    Ok(vehicle)
}

/// A trip by id (its start time): the open one from the vehicle state, or a
/// closed one from the store.
async fn find_trip(state: &ApiState, device: &DeviceId, trip_id: &str) -> Result<Trip, ApiError> {
    let start: i64 = trip_id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "trip id must be an integer (the trip's start, Unix ms), got {trip_id:?}"
        ))
    })?;
    let vehicle = known_vehicle(state, device).await?;
    if let Some(open) = vehicle
        .and_then(|v| v.trip.map(|t| *t))
        .filter(|t| t.start_ts_ms == start)
    {
        return Ok(open);
    }
    state.store.trip(device, start).await?.ok_or_else(|| {
        ApiError::NotFound(format!("vehicle {:?} has no trip {start}", device.as_str()))
    })
}
