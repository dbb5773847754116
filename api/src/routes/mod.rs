//! Route handlers, one module per resource.

pub(crate) mod access;
pub(crate) mod alerts;
pub(crate) mod cells;
pub(crate) mod devices;
pub(crate) mod fallback;
pub(crate) mod geofences;
pub(crate) mod map;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod positions;
pub(crate) mod rejections;
pub(crate) mod stream;
pub(crate) mod trips;
pub(crate) mod vehicles;
pub(crate) mod webhooks;

use axum::Json;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Media type of GeoJSON responses (RFC 7946).
const GEOJSON: &str = "application/geo+json";

/// `body` as JSON, labelled `application/geo+json`.
fn geojson(body: impl Serialize) -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static(GEOJSON))],
        Json(body),
    )
        .into_response()
}
