//! `POST /v1/positions`: HTTP ingest, for OwnTracks apps in HTTP mode and
//! for clients posting fleetd JSON positions. This module only reads the
//! request (the body as bytes, and who it says sent it: `X-Limit-U` /
//! `X-Limit-D`, `?u=&d=`, the basic-auth user) and shapes the answer;
//! ingest's `Submitter` tells the format, decodes, validates, counts
//! rejections and queues exactly as for MQTT input.
//!
//! Who may post was settled by the access middleware (a device's or
//! OwnTracks user's basic login, or a `write` token); which devices it may
//! post for is checked by ingest on the decoded positions ([`Caller`]):
//! a device only its own, a user only its `user/…` devices.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::header::{CONTENT_LENGTH, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetd_auth::Identity;
use fleetd_ingest::{
    Caller, HttpFormat, HttpIdentity, Owns, Reject, SubmitError, Submitted, Submitter,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, retry_after_value};
use crate::extract::Query;
use crate::state::ApiState;

/// The `source` of rejections sampled from this route (`GET /v1/rejections`).
const SOURCE: &str = "http";

/// How long a client is asked to wait (`Retry-After`) when the queue is full
/// or fleetd is not ready: about one processing window, after which the
/// processor has taken a batch.
pub(crate) const RETRY_AFTER_DELAY: Duration = Duration::from_secs(1);

/// Query parameters: the OwnTracks Recorder's way of naming user and device.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PositionsParams {
    u: Option<String>,
    d: Option<String>,
}

/// The answer to fleetd JSON: 202 `{"accepted": N, "rejected": [...]}`.
#[derive(Debug, Serialize)]
struct Receipt {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// One rejected position of a fleetd JSON body.
#[derive(Debug, Serialize)]
struct Rejected {
    /// Its place in the array (absent for a single object).
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    reason: &'static str,
    detail: String,
}

/// `POST /v1/positions`.
///
/// * OwnTracks message: 200 `[]` when it was queued or is not a location
///   (other `_type`s, zero-length bodies); the array is where a server may
///   hand the app cards or commands.
/// * fleetd JSON (one position or an array, each with `device_id`): 202
///   `{"accepted", "rejected": [{"index"?, "device_id"?, "reason",
///   "detail"}]}` when at least one position was queued (or the array was
///   empty).
/// * Nothing usable: 400 (413 for `oversize`) with the first rejection's
///   reason as `error.code`; every rejection is counted in
///   `fleetd_rejected_total{reason}` and sampled in `GET /v1/rejections`.
/// * Positions of a device the caller does not own: 403 `not_authorized`,
///   counted and sampled (reason `not_authorized`); nothing was queued.
/// * 202 only once the journal holds the positions (see the journal's
///   durability level). Journal full or unable to write: 503 `overloaded`;
///   not ready or shutting down: 503 `not_ready`, both with `Retry-After`.
pub(crate) async fn post(
    State(state): State<ApiState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Query(params): Query<PositionsParams>,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(ingest) = state.ingest.clone() else {
        return Err(ApiError::NotReady("HTTP ingest is not running".into()));
    };
    if !state.ready.load(Ordering::Acquire) {
        return Ok(retry_later(ApiError::NotReady(
            "not ready: fleetd is starting or shutting down; nothing was queued".into(),
        )));
    }
    let body = read_body(&ingest, SOURCE, &headers, body).await?;
    let caller = caller(&identity);
    let submitted = match ingest
        .submit_as(&identity_of(&headers, params)?, &caller, SOURCE, &body)
        .await
    {
        Ok(submitted) => submitted,
        Err(SubmitError::NotAuthorized(reject)) => return Err(rejected(reject, 0)),
        Err(SubmitError::QueueFull) => {
            return Err(ApiError::Overloaded {
                message: "the processor is behind; nothing was queued, retry later".into(),
                retry_after: RETRY_AFTER_DELAY,
            });
        }
        Err(SubmitError::Unavailable) => {
            return Err(ApiError::Overloaded {
                message: "fleetd cannot write its ingest journal (disk full or failing); nothing was acknowledged, retry later".into(),
                retry_after: RETRY_AFTER_DELAY,
            });
        }
        Err(_closed) => {
            return Ok(retry_later(ApiError::NotReady(
                "fleetd is shutting down; nothing was queued".into(),
            )));
        }
    };
    match submitted.format {
        HttpFormat::OwnTracks => owntracks_answer(submitted),
        HttpFormat::FleetJson => json_answer(submitted),
    }
}

/// Reads the body up to the payload limit; a larger one is `oversize`
/// (413), counted like an oversize MQTT payload.
pub(crate) async fn read_body(
    ingest: &Submitter,
    source: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = ingest.limits().max_payload_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(rejected(ingest.reject_oversize(source, declared), 0));
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(err) if over_limit(&err) => Err(rejected(ingest.reject_oversize(source, None), 0)),
        Err(err) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {err}"
        ))),
    }
}

/// Whether reading a body failed because it exceeded the limit.
fn over_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Whose positions a verified identity may post.
pub(crate) fn caller(identity: &Identity) -> Caller {
    let owns = match identity {
        Identity::Device(id) => Owns::Device(id.clone()),
        Identity::User(user) => Owns::User(user.clone()),
        // Only `write` tokens get here (the access middleware, the OsmAnd
        // listener's login): trusted gateways.
        Identity::Service { .. } | Identity::Anonymous => Owns::Any,
        Identity::Share { .. } => Owns::Nothing,
    };
    Caller {
        owns,
        label: identity.label(),
    }
}

/// Who the request says sent it: OwnTracks' user and device (headers, or
/// the OwnTracks Recorder's `?u=&d=`) and the basic-auth user name.
fn identity_of(headers: &HeaderMap, params: PositionsParams) -> Result<HttpIdentity, ApiError> {
    // `?u=` and `?d=` are checked even where the headers win over them: a
    // malformed parameter is an error, never silently unused.
    for (name, value) in [("u", &params.u), ("d", &params.d)] {
        if let Some(v) = value.as_deref()
            && !v.is_empty()
            && fleetd_schemas::Principal::user(v).is_err()
        {
            return Err(ApiError::BadRequest(format!(
                "{name} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -, got {}",
                crate::params::echo(v)
            )));
        }
    }
    // A header that is not ASCII is kept (lossily) rather than dropped, so
    // it fails as an invalid id instead of letting `?u=` speak for it.
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Ok(HttpIdentity {
        owntracks_user: header("x-limit-u").or(non_empty(params.u.as_deref()).map(str::to_owned)),
        owntracks_device: header("x-limit-d").or(non_empty(params.d.as_deref()).map(str::to_owned)),
        login: basic_auth_user(headers),
    })
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The user name of HTTP basic authentication, which an OwnTracks app
/// sends as its user. The password was checked by the access middleware.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let (user, _password) = crate::auth::decode_basic(crate::auth::basic_part(headers)?)?;
    (!user.is_empty()).then_some(user)
}

/// OwnTracks apps expect 200 with a JSON array (cards, commands; none here).
fn owntracks_answer(submitted: Submitted) -> Result<Response, ApiError> {
    if submitted.accepted == 0
        && submitted.ignored.is_none()
        && let Some(first) = submitted.rejects.into_iter().next()
    {
        return Err(rejected(first, 0));
    }
    Ok(Json(Value::Array(Vec::new())).into_response())
}

fn json_answer(submitted: Submitted) -> Result<Response, ApiError> {
    if submitted.accepted == 0 && !submitted.rejects.is_empty() {
        let more = submitted.rejects.len() - 1;
        let mut rejects = submitted.rejects;
        return Err(rejected(rejects.swap_remove(0), more));
    }
    let receipt = Receipt {
        accepted: submitted.accepted,
        rejected: submitted
            .rejects
            .into_iter()
            .map(|r| Rejected {
                index: r.index,
                device_id: r.device.map(|d| d.to_string()),
                reason: r.reason.code(),
                detail: r.detail,
            })
            .collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(receipt)).into_response())
}

/// The error of a request none of whose input was usable: its first
/// rejection, and how many more there were.
pub(crate) fn rejected(first: Reject, more: usize) -> ApiError {
    let mut message = match first.index {
        Some(i) => format!("position {i}: {}", first.detail),
        None => first.detail,
    };
    if more > 0 {
        message.push_str(&format!(" (and {more} more rejected)"));
    }
    ApiError::Rejected {
        reason: first.reason,
        message,
    }
}

/// `err` with a `Retry-After` header.
pub(crate) fn retry_later(err: ApiError) -> Response {
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, retry_after_value(RETRY_AFTER_DELAY));
    response
}
