//! Credentials and API tokens (`admin` scope): issuing device and OwnTracks
//! user credentials (one or in bulk; issuing again rotates), revoking them,
//! creating, listing and revoking tokens, and share links (tokens that show
//! a few devices read-only, `GET /v1/share` answering what one shows).
//!
//! Answers that carry a secret are marked `Cache-Control: no-store`: the
//! secret is shown once and must not linger in a cache.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleetd_auth::{AccessError, Identity, IssuedCredential};
use fleetd_schemas::{DeviceId, Principal, Scope, ShareGrant, StoredToken};
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
    #[serde(default, deserialize_with = "crate::params::integral")]
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
    let name = check_name(&body.name)?;
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
    let listed: Vec<TokenJson<'_>> = tokens
        .iter()
        .filter(|t| t.share.is_none())
        .map(TokenJson::new)
        .collect();
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

/// Most devices one share link shows.
const MAX_SHARE_DEVICES: usize = 100;
/// Longest a share link lives, and how far back its track may reach.
const MAX_SHARE_S: u64 = 30 * 86_400;
const MAX_SHARE_HISTORY_S: u32 = 7 * 86_400;
const DEFAULT_SHARE_HISTORY_S: u32 = 3_600;

/// Body of `POST /v1/shares`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareBody {
    devices: Vec<String>,
    #[serde(deserialize_with = "crate::params::integral")]
    expires_in_s: Option<u64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "crate::params::integral")]
    history_s: Option<u32>,
}

/// A share link as listed (no token).
#[derive(Debug, Serialize)]
struct ShareJson<'a> {
    id: &'a str,
    name: &'a str,
    devices: &'a [DeviceId],
    history_s: u32,
    created_ms: i64,
    expires_ms: Option<i64>,
}

impl<'a> ShareJson<'a> {
    fn new(token: &'a StoredToken, grant: &'a ShareGrant) -> Self {
        Self {
            id: &token.id,
            name: &token.name,
            devices: &grant.devices,
            history_s: grant.history_s,
            created_ms: token.created_ms,
            expires_ms: token.expires_ms,
        }
    }
}

/// A share link as created: the token, and the map path that opens it.
#[derive(Debug, Serialize)]
struct CreatedShare<'a> {
    #[serde(flatten)]
    record: ShareJson<'a>,
    token: &'a str,
    path: String,
}

/// `POST /v1/shares` with `{"devices": [...], "expires_in_s": N, "name"?,
/// "history_s"?}`: a read-only link to those devices' latest position,
/// live updates and the last `history_s` (default 1 h) of their track,
/// until it expires (at most 30 days) or is revoked. Answers 201 with the
/// token (shown once) and `path`, `/#share=<token>`: the map page on just
/// those devices.
pub(crate) async fn create_share(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<ShareBody>,
) -> Result<Response, ApiError> {
    if body.devices.is_empty() || body.devices.len() > MAX_SHARE_DEVICES {
        return Err(ApiError::BadRequest(format!(
            "devices must list 1 to {MAX_SHARE_DEVICES} device ids"
        )));
    }
    let mut devices = body
        .devices
        .iter()
        .map(|d| device_id(d))
        .collect::<Result<Vec<_>, _>>()?;
    devices.sort();
    devices.dedup();
    let expires_in_s = body.expires_in_s.unwrap_or(0);
    if !(1..=MAX_SHARE_S).contains(&expires_in_s) {
        return Err(ApiError::BadRequest(format!(
            "expires_in_s must be 1 to {MAX_SHARE_S} (30 days): a share link always expires"
        )));
    }
    let history_s = body.history_s.unwrap_or(DEFAULT_SHARE_HISTORY_S);
    if history_s > MAX_SHARE_HISTORY_S {
        return Err(ApiError::BadRequest(format!(
            "history_s must be at most {MAX_SHARE_HISTORY_S} (7 days)"
        )));
    }
    let name = check_name(body.name.as_deref().unwrap_or("share link"))?;
    let grant = ShareGrant { devices, history_s };
    let issued = state
        .access
        .create_share(name, grant, Duration::from_secs(expires_in_s))
        .await
        .map_err(access_error)?;
    tracing::info!(token_id = %issued.record.id, "share link created");
    let Some(grant) = &issued.record.share else {
        return Err(ApiError::Internal("a share token without its grant".into()));
    };
    let created = CreatedShare {
        record: ShareJson::new(&issued.record, grant),
        token: &issued.token,
        path: format!("/#share={}", issued.token),
    };
    Ok(secret((StatusCode::CREATED, Json(created))))
}

/// `GET /v1/shares`: every share link (no tokens), oldest first.
pub(crate) async fn list_shares(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let tokens = state.access.tokens();
    let listed: Vec<ShareJson<'_>> = tokens
        .iter()
        .filter_map(|t| Some(ShareJson::new(t, t.share.as_ref()?)))
        .collect();
    Json(serde_json::json!({ "count": listed.len(), "shares": listed }))
}

/// `DELETE /v1/shares/{id}`: 204 (the link stops working at once and the
/// map pages open on it lose their stream), or 404.
pub(crate) async fn revoke_share(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let is_share = state
        .access
        .tokens()
        .iter()
        .any(|t| t.id == id && t.share.is_some());
    if is_share && state.access.revoke_token(&id).await.map_err(access_error)? {
        tracing::info!(token_id = %id, "share link revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no share link {id:?}")))
    }
}

/// `GET /v1/share`: what the calling share link shows (the map page asks
/// this first); 404 for any other caller.
pub(crate) async fn this_share(
    State(state): State<ApiState>,
    identity: Option<Extension<Identity>>,
) -> Result<Response, ApiError> {
    let not_share = || ApiError::NotFound("this is not a share link's token".into());
    let Some(Extension(Identity::Share { token_id, .. })) = identity else {
        return Err(not_share());
    };
    let tokens = state.access.tokens();
    let token = tokens
        .iter()
        .find(|t| t.id == token_id)
        .ok_or_else(not_share)?;
    let grant = token.share.as_ref().ok_or_else(not_share)?;
    Ok(Json(ShareJson::new(token, grant)).into_response())
}

/// A token's or share link's name: 1 to 200 characters, no control
/// characters (it is shown in lists and logs).
fn check_name(name: &str) -> Result<&str, ApiError> {
    if name.is_empty()
        || name.chars().count() > MAX_TOKEN_NAME
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "name must be 1 to {MAX_TOKEN_NAME} characters, none a control character"
        )));
    }
    Ok(name)
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
