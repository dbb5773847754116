//! [`ApiError`]: the one error type of the API and its JSON rendering.
//!
//! Every error response has the body `{"error": {"code": "...", "message": "..."}}`.
//! 4xx messages explain what was wrong with the request; 5xx bodies carry a
//! generic message, and the real cause is logged once by the request
//! middleware (it travels in the response's extensions as [`ErrorCause`]).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetd_schemas::RejectReason;
use fleetd_store::StoreError;
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `bad_request`: a parameter is missing, malformed or out of range.
    /// The message names the parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: no valid credentials (missing, wrong or expired
    /// token, wrong password). The response carries `WWW-Authenticate`
    /// (`Bearer realm="fleetd"`, and `Basic` too where a login is taken).
    #[error("{message}")]
    Unauthorized {
        /// What was wrong (never the offered secret).
        message: String,
        /// Whether HTTP basic logins are accepted here (`POST /v1/positions`).
        basic: bool,
    },
    /// 403 `forbidden`: the caller is known but its scope does not allow
    /// this, or a browser page of another origin asked.
    #[error("{0}")]
    Forbidden(String),
    /// 429 `rate_limited`: too many failed logins from this address; the
    /// response carries `Retry-After`.
    #[error("{message}")]
    TooManyLogins {
        /// What to tell the client.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// 415 `unsupported_media_type`: a browser request that changes state
    /// without `Authorization` or a JSON body (what a cross-site form or
    /// `text/plain` fetch could send).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 404 `not_found`: no such vehicle, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413 `payload_too_large`: the request body exceeds the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Input that `POST /v1/positions` could not use: 400 (413 for
    /// `oversize`) with the rejection reason as the code, as counted in
    /// `fleetd_rejected_total{reason}`.
    #[error("{message}")]
    Rejected {
        /// Why, as for MQTT input.
        reason: RejectReason,
        /// What exactly was wrong.
        message: String,
    },
    /// 503 `overloaded`: the processor is behind and its queue is full. The
    /// response carries `Retry-After`.
    #[error("{message}")]
    Overloaded {
        /// What to tell the client.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// 503 `not_ready`: the process is up but has not finished starting.
    #[error("{0}")]
    NotReady(String),
    /// 503 `unavailable`: a dependency (the store) cannot serve now. The
    /// string is the cause: logged, not shown.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 503 `timeout`: the request took longer than the configured bound.
    #[error("request did not complete within {0:?}")]
    Timeout(Duration),
    /// 500 `internal`: a bug or an unexpected failure. The string is the
    /// cause: logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_)
            | Self::Rejected {
                reason: RejectReason::NotAuthorized,
                ..
            } => StatusCode::FORBIDDEN,
            Self::TooManyLogins { .. }
            | Self::Rejected {
                reason: RejectReason::RateLimited,
                ..
            } => StatusCode::TOO_MANY_REQUESTS,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Rejected {
                reason: RejectReason::Oversize,
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Rejected { .. } => StatusCode::BAD_REQUEST,
            Self::Overloaded { .. }
            | Self::NotReady(_)
            | Self::Unavailable(_)
            | Self::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the body's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::TooManyLogins { .. } => "rate_limited",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Rejected { reason, .. } => reason.code(),
            Self::Overloaded { .. } => "overloaded",
            Self::NotReady(_) => "not_ready",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
        }
    }

    /// The message shown to the client: the error itself for 4xx and
    /// `not_ready`/`timeout`, a generic text where the cause is internal.
    fn public_message(&self) -> String {
        match self {
            Self::Unavailable(_) => "the service is temporarily unavailable".to_owned(),
            Self::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The cause to log, for errors whose body hides it.
    fn hidden_cause(&self) -> Option<&str> {
        match self {
            Self::Unavailable(cause) | Self::Internal(cause) => Some(cause),
            _ => None,
        }
    }

    /// Maps an axum extractor rejection (its status and text) to an error.
    fn from_rejection(status: StatusCode, text: String) -> Self {
        let text = lowercase_first(text);
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(text),
            s if s.is_server_error() => Self::Internal(text),
            _ => Self::BadRequest(text),
        }
    }
}

/// The cause of a 5xx response, stored in the response's extensions so that
/// the request middleware logs it exactly once, with the route.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCause(pub(crate) String);

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.public_message();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: &message,
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::Overloaded { retry_after, .. } | Self::TooManyLogins { retry_after, .. } =
            &self
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, retry_after_value(*retry_after));
        }
        if let Self::Unauthorized { basic, .. } = &self {
            let headers = response.headers_mut();
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="fleetd""#),
            );
            if *basic {
                headers.append(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="fleetd""#),
                );
            }
        }
        if let Some(cause) = self.hidden_cause() {
            response
                .extensions_mut()
                .insert(ErrorCause(cause.to_owned()));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidQuery(msg) => Self::BadRequest(msg),
            StoreError::Unavailable(_) => Self::Unavailable(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

/// A `Retry-After` value: whole seconds, at least 1.
pub(crate) fn retry_after_value(after: Duration) -> HeaderValue {
    HeaderValue::from(after.as_secs().max(1))
}

/// Axum's rejection texts start with a capital; ours are lowercase.
fn lowercase_first(text: String) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if first.is_uppercase() => first.to_lowercase().chain(chars).collect(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_status() {
        let bad = ApiError::from(StoreError::InvalidQuery("bad cursor".into()));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(bad.to_string(), "bad cursor");
        let down = ApiError::from(StoreError::Unavailable("down".into()));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.code(), "unavailable");
        let corrupt = ApiError::from(StoreError::Corrupt("x".into()));
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = ApiError::Internal("disk on fire".into());
        assert_eq!(err.public_message(), "internal server error");
        let response = err.into_response();
        let cause = response.extensions().get::<ErrorCause>();
        assert_eq!(cause.map(|c| c.0.as_str()), Some("disk on fire"));
    }

    #[test]
    fn ingest_rejections_use_the_reason_code() {
        let bad = ApiError::Rejected {
            reason: RejectReason::BadCoordinates,
            message: "lat 95 is not in [-90, 90]".into(),
        };
        assert_eq!(
            (bad.status(), bad.code()),
            (StatusCode::BAD_REQUEST, "bad_coordinates")
        );
        let big = ApiError::Rejected {
            reason: RejectReason::Oversize,
            message: "too big".into(),
        };
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let busy = ApiError::Overloaded {
            message: "later".into(),
            retry_after: Duration::from_millis(200),
        };
        let response = busy.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[test]
    fn rejection_text_is_lowercased() {
        assert_eq!(lowercase_first("Failed to x".into()), "failed to x");
        assert_eq!(lowercase_first(String::new()), "");
    }
}
