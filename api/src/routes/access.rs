//! Credentials and API tokens (`admin` scope): issuing device and OwnTracks
//! user credentials (one or in bulk; issuing again rotates), revoking them,
//! and creating, listing and revoking tokens.
//!
//! Answers that carry a secret are marked `Cache-Control: no-store`: the
//! secret is shown once and must not linger in a cache.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetd_auth::{AccessError, IssuedCredential};
use fleetd_schemas::{DeviceId, Principal, Scope, StoredToken};
use serde::{Deserialize, Serialize};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::extract::Path;
use crate::params::echo;
use crate::state::ApiState;

/// Most principals one `POST /v1/credentials` may issue.
pub(crate) const MAX_BULK_CREDENTIALS: usize = 10_000;

/// Longest token name, so the token list stays small.
const MAX_TOKEN_NAME: usize = 200;

/// `POST /v1/credentials` body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BulkBody {
    devices: Vec<String>,
    users: Vec<String>,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    name: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    expires_in_s: Option<u64>,
}

/// A token as listed: no secret, no hash.
#[derive(Debug, Serialize)]
struct TokenJson<'a> {
    id: &'a str,
    name: &'a str,
    scopes: &'a [Scope],
    created_ms: i64,
    expires_ms: Option<i64>,
}

impl<'a> TokenJson<'a> {
    fn new(token: &'a StoredToken) -> Self {
        Self {
            id: &token.id,
            name: &token.name,
            scopes: &token.scopes,
            created_ms: token.created_ms,
            expires_ms: token.expires_ms,
        }
    }
}

/// A token as created: the listed fields and, this once, the token.
#[derive(Debug, Serialize)]
struct CreatedToken<'a> {
    #[serde(flatten)]
    record: TokenJson<'a>,
    token: &'a str,
}

/// `POST /v1/devices/{id}/credentials`: 201 `{"device_id", "username",
/// "password"}`; a device that had a credential gets a new one (the old
/// password stops working, its sessions close).
pub(crate) async fn issue_device(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = Principal::Device(device_id(&id)?);
    issue_one(&state, principal).await
}

/// `POST /v1/users/{user}/credentials`: the same for an OwnTracks user (one
/// credential for all of its `user/device`s).
pub(crate) async fn issue_user(
    State(state): State<ApiState>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let principal = user_principal(&user)?;
    issue_one(&state, principal).await
}

async fn issue_one(state: &ApiState, principal: Principal) -> Result<Response, ApiError> {
    let mut issued = state
        .access
        .issue_credentials(std::slice::from_ref(&principal))
        .await
        .map_err(access_error)?;
    let credential = issued
        .pop()
        .ok_or_else(|| ApiError::Internal(format!("no credential issued for {principal}")))?;
    Ok(secret((StatusCode::CREATED, Json(credential))))
}

/// `DELETE /v1/devices/{id}/credentials`: 204, or 404 if it had none.
pub(crate) async fn revoke_device(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    revoke(&state, Principal::Device(device_id(&id)?)).await
}

/// `DELETE /v1/users/{user}/credentials`: 204, or 404 if it had none.
pub(crate) async fn revoke_user(
    State(state): State<ApiState>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    revoke(&state, user_principal(&user)?).await
}

async fn revoke(state: &ApiState, principal: Principal) -> Result<Response, ApiError> {
    if state
        .access
        .revoke_credential(&principal)
        .await
        .map_err(access_error)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("{principal} has no credential")))
    }
}

/// `POST /v1/credentials` with `{"devices": [...], "users": [...]}`: issues
/// (or rotates) all of them in one store write; 201 `{"credentials":
/// [{"device_id", "username", "password"}, ...]}`, devices first, in the
/// order given. Every id is checked first: an invalid one is a 400 naming
/// it, and nothing is issued.
pub(crate) async fn issue_bulk(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<BulkBody>,
) -> Result<Response, ApiError> {
    let total = body.devices.len() + body.users.len();
    if total == 0 {
        return Err(ApiError::BadRequest(
            "nothing to issue: give \"devices\" and/or \"users\"".into(),
        ));
    }
    if total > MAX_BULK_CREDENTIALS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_BULK_CREDENTIALS} credentials per request, got {total}"
        )));
    }
    let mut principals = Vec::with_capacity(total);
    for (i, id) in body.devices.iter().enumerate() {
        let id = DeviceId::parse(id)
            .map_err(|e| ApiError::BadRequest(format!("devices[{i}] {}: {e}", echo(id))))?;
        principals.push(Principal::Device(id));
    }
    for (i, user) in body.users.iter().enumerate() {
        let user = Principal::user(user)
            .map_err(|e| ApiError::BadRequest(format!("users[{i}] {}: {e}", echo(user))))?;
        principals.push(user);
    }
    let credentials: Vec<IssuedCredential> = state
        .access
        .issue_credentials(&principals)
        .await
        .map_err(access_error)?;
    Ok(secret((
        StatusCode::CREATED,
        Json(serde_json::json!({ "credentials": credentials })),
    )))
}

/// `POST /v1/tokens` with `{"name", "scopes": ["read"|"write"|"admin"],
/// "expires_in_s"?}`: 201 `{"id", "token", "name", "scopes", "created_ms",
/// "expires_ms"}`. The token is shown only here.
pub(crate) async fn create_token(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "name must be 1 to {MAX_TOKEN_NAME} bytes of printable text"
        )));
    }
    if body.expires_in_s == Some(0) {
        return Err(ApiError::BadRequest(
            "expires_in_s must be > 0 (leave it out for a token that does not expire)".into(),
        ));
    }
    let issued = state
        .access
        .create_token(
            name,
            &body.scopes,
            body.expires_in_s.map(Duration::from_secs),
        )
        .await
        .map_err(access_error)?;
    // Never logged: only the id is.
    tracing::info!(token_id = %issued.record.id, "api token created");
    let created = CreatedToken {
        record: TokenJson::new(&issued.record),
        token: &issued.token,
    };
    Ok(secret((StatusCode::CREATED, Json(created))))
}

/// `GET /v1/tokens`: `{"tokens": [{"id", "name", "scopes", "created_ms",
/// "expires_ms"}, ...]}`, oldest first; never a secret or its hash.
pub(crate) async fn list_tokens(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let tokens = state.access.tokens();
    let listed: Vec<TokenJson<'_>> = tokens.iter().map(TokenJson::new).collect();
    Json(serde_json::json!({ "tokens": listed }))
}

/// `DELETE /v1/tokens/{id}`: 204 (the token stops working at once and its
/// streams close), or 404.
pub(crate) async fn revoke_token(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.access.revoke_token(&id).await.map_err(access_error)? {
        tracing::info!(token_id = %id, "api token revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no token {id:?}")))
    }
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|e| ApiError::BadRequest(format!("invalid device id: {e}")))
}

fn user_principal(raw: &str) -> Result<Principal, ApiError> {
    Principal::user(raw).map_err(|e| ApiError::BadRequest(format!("invalid user: {e}")))
}

fn access_error(err: AccessError) -> ApiError {
    match err {
        AccessError::Store(e) => e.into(),
        AccessError::Invalid(message) => ApiError::BadRequest(message),
        other @ AccessError::AdminFile { .. } => ApiError::Internal(other.to_string()),
    }
}

/// `response` marked as not to be cached: it carries a secret.
fn secret(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
