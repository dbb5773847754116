//! `GET /openapi.json`: the OpenAPI 3.1 description of this API.
//!
//! Written by hand (`api/openapi.json`) and embedded, rather than derived
//! from annotations: the handlers build their JSON by hand too, and tests
//! (`openapi_tests.rs`) hold the document to the router (every route and
//! method, both ways) and to real responses.

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub(crate) const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`: the OpenAPI document.
pub(crate) async fn spec() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI_JSON,
    )
        .into_response()
}
