//! A JSON request body extractor whose failures are [`ApiError`]s: 400 with
//! the parser's message for bad JSON, 413 past the size limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON body the API reads (registry entries, geofences).
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body of type `T`. The content type is not checked, so that
/// `curl -d` works without `-H 'Content-Type: application/json'`.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than {MAX_BODY_BYTES} bytes"
                ))
            })?;
        let _ = state;
        parse(&bytes).map(Self)
    }
}

fn parse<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "request body is empty; JSON expected".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|err| ApiError::BadRequest(format!("invalid JSON body: {err}")))
}
