//! JSON answers for unknown routes (404) and wrong methods (405).

use axum::http::{Method, Uri};

use crate::error::ApiError;

/// Longest part of an unknown path echoed in the 404 message.
const ECHO_PATH_CHARS: usize = 128;

/// Fallback for paths no route matches: 404 `not_found`.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    let path: String = uri.path().chars().take(ECHO_PATH_CHARS).collect();
    ApiError::NotFound(format!("no route for {method} {path}"))
}

/// Fallback for known paths with a method they do not serve: 405
/// `method_not_allowed` (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
