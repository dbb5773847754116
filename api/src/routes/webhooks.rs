//! Webhooks: `PUT/GET/DELETE /v1/webhooks/{id}`, `GET /v1/webhooks`, and a
//! hook's dead letters: `GET /v1/webhooks/{id}/dead-letters`,
//! `POST /v1/webhooks/{id}/dead-letters/redeliver` and `…/clear` (actions
//! on the list, which itself stays: hence POSTs, not a DELETE). All `admin`: a hook
//! sends alerts (device ids and coordinates) to any URL.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetd_webhooks::{WebhookError, WebhookRequest, Webhooks};
use serde::{Deserialize, Serialize};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::params::{bad, echo, parse_limit};
use crate::state::ApiState;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(message) => ApiError::BadRequest(message),
            WebhookError::Store(e) => ApiError::from(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn service(state: &ApiState) -> Result<&Webhooks, ApiError> {
    state.webhooks.as_ref().ok_or_else(|| {
        ApiError::NotFound("webhooks are off on this node ([webhooks] enabled = false)".into())
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("webhook {id:?} does not exist"))
}

/// A hook as answered to `PUT`: with its secret (shown here only).
#[derive(Debug, Serialize)]
struct Saved {
    id: String,
    url: String,
    filter: fleetd_schemas::WebhookFilter,
    secret: String,
    created_ms: i64,
    updated_ms: i64,
}

/// `PUT /v1/webhooks/{id}` with `{"url", "filter"?, "secret"?}`: creates
/// (201) or replaces (200) the hook. Answers it with its signing secret
/// (made up when a new hook comes without one, kept when a replaced one
/// does); `GET` never shows the secret again.
pub(crate) async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<WebhookRequest>,
) -> Result<Response, ApiError> {
    let (hook, created) = service(&state)?.put(&id, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let saved = Saved {
        id: hook.id,
        url: hook.url,
        filter: hook.filter,
        secret: hook.secret,
        created_ms: hook.created_ms,
        updated_ms: hook.updated_ms,
    };
    Ok((status, Json(saved)).into_response())
}

/// `GET /v1/webhooks/{id}`: the hook (no secret) with this node's pending
/// and dead-letter counts.
pub(crate) async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let hook = service(&state)?
        .get(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(hook).into_response())
}

/// `DELETE /v1/webhooks/{id}`: 204; its queue goes with it, and nothing
/// is delivered to it afterwards.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !service(&state)?.delete(&id).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize)]
struct HookList {
    webhooks: Vec<fleetd_webhooks::WebhookView>,
    count: usize,
}

/// `GET /v1/webhooks`: every hook, by id.
pub(crate) async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let webhooks = service(&state)?.list().await?;
    Ok(Json(HookList {
        count: webhooks.len(),
        webhooks,
    })
    .into_response())
}

/// Raw parameters of `GET /v1/webhooks/{id}/dead-letters`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeadParams {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeadPage {
    dead_letters: Vec<fleetd_webhooks::DeadLetter>,
    count: usize,
    next_cursor: Option<String>,
}

async fn existing<'a>(state: &'a ApiState, id: &str) -> Result<&'a Webhooks, ApiError> {
    let hooks = service(state)?;
    hooks.get(id).await?.ok_or_else(|| not_found(id))?;
    Ok(hooks)
}

/// `GET /v1/webhooks/{id}/dead-letters?limit&cursor`: the alerts this node
/// gave up delivering to the hook (every attempt failed, or its queue was
/// full), oldest first, with the last error.
pub(crate) async fn dead_letters(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(params): Query<DeadParams>,
) -> Result<Response, ApiError> {
    let limit = parse_limit(params.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let after = match params.cursor.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| bad(format!("cursor {} is not one this route gave", echo(raw))))?,
        ),
    };
    let hooks = existing(&state, &id).await?;
    let mut page = hooks.dead_letters(&id, after, limit + 1).await?;
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|d| d.seq.to_string())
    } else {
        None
    };
    Ok(Json(DeadPage {
        count: page.len(),
        dead_letters: page,
        next_cursor,
    })
    .into_response())
}

#[derive(Debug, Serialize)]
struct Moved {
    count: usize,
}

/// `POST /v1/webhooks/{id}/dead-letters/clear`: forgets them; answers how
/// many there were.
pub(crate) async fn clear_dead_letters(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let count = existing(&state, &id).await?.clear_dead_letters(&id).await?;
    Ok(Json(Moved { count }).into_response())
}

/// `POST /v1/webhooks/{id}/dead-letters/redeliver`: queues them again, in
/// their order; answers how many.
pub(crate) async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let count = existing(&state, &id).await?.redeliver(&id).await?;
    Ok(Json(Moved { count }).into_response())
}
