//! Who is calling, and whether they may: the one middleware that resolves a
//! request's identity and checks the scope its route needs
//! (`crate::ROUTE_ACCESS`), and the browser guards (CORS, the `Origin` of
//! live streams, state-changing requests without a JSON body or token).
//!
//! Handlers never check credentials themselves: the resolved [`Identity`]
//! is in the request's extensions for those that need it (HTTP ingest).

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CONTENT_TYPE, HOST,
    ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fleetd_auth::{Identity, LoginError};
use fleetd_schemas::Scope;

use crate::conn::Conn;
use crate::error::ApiError;
use crate::state::ApiState;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: the map page, its assets, health, readiness, the document.
    Open,
    /// A bearer token with at least this scope.
    Scope(Scope),
    /// `GET /metrics`: open with `[api] metrics_open`, else `read`.
    Metrics,
    /// A token with `read` scope, or a share link (its handler then shows
    /// only the link's devices: the latest position, the recent track and
    /// the live stream).
    ReadOrShare,
    /// `POST /v1/positions`: a device's or OwnTracks user's HTTP basic
    /// login (its own positions only, which ingest checks on the decoded
    /// body), or a `write` token (any device).
    Ingest,
}

/// Routes whose `Origin` is checked: browsers let any page open an
/// `EventSource` or WebSocket to any host, and CORS does not stop either.
const STREAM_ROUTES: [&str; 2] = ["/v1/stream", "/v1/ws"];

/// How long a client refused for too many failed logins is asked to wait:
/// the throttle counts per minute.
const THROTTLE_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The scope check: resolves the caller of every route that needs one,
/// answers 401/403 (or 429 for throttled logins) in the API's error shape,
/// and passes the [`Identity`] on in the request's extensions. Requests no
/// route matched, or with a method their route lacks, pass unchecked to the
/// 404/405 fallbacks (see `crate::route_access`).
pub(crate) async fn authorize(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let need = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| crate::route_access(req.method(), path.as_str()));
    let Some(need) = need else {
        return next.run(req).await;
    };
    let identity = match need {
        Need::Open => return next.run(req).await,
        Need::Metrics if state.metrics_open => return next.run(req).await,
        Need::Metrics => scoped(&state, req.headers(), Scope::Read),
        Need::Scope(scope) => scoped(&state, req.headers(), scope),
        Need::ReadOrShare => bearer(&state, req.headers(), false).and_then(|identity| {
            if identity.share().is_some() {
                Ok(identity)
            } else {
                scoped_identity(identity, Scope::Read)
            }
        }),
        Need::Ingest => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<Conn>>()
                .map(|ConnectInfo(conn)| conn.peer.ip());
            ingest_identity(&state, req.headers(), peer).await
        }
    };
    match identity {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(err) => err.into_response(),
    }
}

/// The bearer token's identity, if its scope is at least `scope`.
fn scoped(state: &ApiState, headers: &HeaderMap, scope: Scope) -> Result<Identity, ApiError> {
    scoped_identity(bearer(state, headers, false)?, scope)
}

fn scoped_identity(identity: Identity, scope: Scope) -> Result<Identity, ApiError> {
    if identity.has_scope(scope) {
        Ok(identity)
    } else {
        Err(ApiError::Forbidden(format!(
            "this needs a token with `{scope}` scope; {} has less",
            identity.label()
        )))
    }
}

/// The identity of an `Authorization: Bearer` token (anonymous when
/// authentication is off).
fn bearer(state: &ApiState, headers: &HeaderMap, basic: bool) -> Result<Identity, ApiError> {
    let unauthorized = |message: &str| ApiError::Unauthorized {
        message: message.to_owned(),
        basic,
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        if state.access.allow_anonymous() {
            return Ok(Identity::Anonymous);
        }
        return Err(unauthorized(
            "this needs a token: send Authorization: Bearer <token>",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| split_scheme(v, "bearer"))
        .ok_or_else(|| unauthorized("the Authorization header is not Bearer <token>"))?;
    state
        .access
        .bearer(token)
        .map_err(|e| login_error(&e, basic))
}

/// The caller of `POST /v1/positions`: a bearer token with `write` scope,
/// or an HTTP basic login (a device's or OwnTracks user's credential, or an
/// API token as the password).
async fn ingest_identity(
    state: &ApiState,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Identity, ApiError> {
    // Without authentication, whatever the request carries is today's
    // "who it says it is" (the basic user names the OwnTracks user), not
    // something to refuse.
    if state.access.allow_anonymous() {
        return Ok(Identity::Anonymous);
    }
    let identity = match basic_login(headers)? {
        Some((user, password)) => login(state, &user, &password, peer).await?,
        None => bearer(state, headers, true)?,
    };
    may_post_positions(identity)
}

/// `user:password` of an `Authorization: Basic` header; `None` without
/// one, 401 for a malformed one.
pub(crate) fn basic_login(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    basic_part(headers)
        .map(|encoded| {
            decode_basic(encoded).ok_or_else(|| ApiError::Unauthorized {
                message: "the Authorization header is not Basic base64(user:password)".into(),
                basic: true,
            })
        })
        .transpose()
}

/// Positions come from a device's (or OwnTracks user's) own login or from a
/// token with `write` scope (a trusted gateway); a lesser token is 403.
pub(crate) fn may_post_positions(identity: Identity) -> Result<Identity, ApiError> {
    match &identity {
        Identity::Share { .. } => Err(ApiError::Forbidden(
            "a share link only reads what it shows".into(),
        )),
        Identity::Service { .. } if !identity.has_scope(Scope::Write) => {
            Err(ApiError::Forbidden(format!(
                "posting positions needs a device login or a token with `write` scope; {} has less",
                identity.label()
            )))
        }
        _ => Ok(identity),
    }
}

pub(crate) async fn login(
    state: &ApiState,
    user: &str,
    password: &str,
    peer: Option<IpAddr>,
) -> Result<Identity, ApiError> {
    state
        .access
        .login(Some(user), Some(password), peer)
        .await
        .map_err(|e| login_error(&e, true))
}

/// The answer to a refused login or token. The message never repeats what
/// was offered.
fn login_error(err: &LoginError, basic: bool) -> ApiError {
    let message = match err {
        LoginError::NoCredentials => "no credentials were offered",
        LoginError::Wrong => "wrong credentials",
        LoginError::Expired => "the token has expired",
        LoginError::BadCertificate => "the client certificate names no device",
        LoginError::Throttled => {
            return ApiError::TooManyLogins {
                message: "too many failed logins from this address; try again in a minute".into(),
                retry_after: THROTTLE_RETRY_AFTER,
            };
        }
        LoginError::Store(e) => return ApiError::Unavailable(e.to_string()),
    };
    ApiError::Unauthorized {
        message: message.into(),
        basic,
    }
}

/// The credentials after `scheme ` (case-insensitive) of an
/// `Authorization` value.
fn split_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then_some(rest.trim())
        .filter(|rest| !rest.is_empty())
}

/// The base64 part of an `Authorization: Basic …` header, if there is one.
pub(crate) fn basic_part(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| split_scheme(v, "basic"))
}

/// `user:password` of HTTP basic credentials.
pub(crate) fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// CORS and the browser guards, before the scope check:
///
/// * A preflight (`OPTIONS` with `Access-Control-Request-Method`) is
///   answered here, 204, granting only a listed origin.
/// * Other answers to a listed origin carry `Access-Control-Allow-Origin`.
/// * Live streams refuse (403) an `Origin` that is neither listed nor the
///   request's own host.
/// * A browser request that changes state must carry `Authorization` or a
///   JSON body (415 otherwise): a page of any site can send a `text/plain`
///   or form POST without a preflight, and with authentication off nothing
///   else would stop it.
pub(crate) async fn browser_guard(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req
        .headers()
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let granted = origin
        .as_deref()
        .filter(|o| listed(&state, o))
        .and_then(|o| HeaderValue::from_str(o).ok());

    if req.method() == Method::OPTIONS
        && origin.is_some()
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        if let Some(granted) = granted {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, granted);
            headers.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, DELETE"),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID"),
            );
            headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        return response;
    }

    let stream = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| STREAM_ROUTES.contains(&p.as_str()));
    if stream
        && let Some(origin) = origin.as_deref()
        && !listed(&state, origin)
        && !same_host(origin, req.headers())
    {
        return ApiError::Forbidden(format!(
            "a page of {origin} may not open live streams here: add it to [api] cors_origins"
        ))
        .into_response();
    }

    let changes_state = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE);
    if changes_state && from_browser(req.headers()) && !json_or_authorized(req.headers()) {
        return ApiError::UnsupportedMediaType(
            "a browser request that changes state needs Content-Type: application/json or an \
             Authorization header"
                .into(),
        )
        .into_response();
    }

    let mut response = next.run(req).await;
    if origin.is_some() {
        let headers = response.headers_mut();
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(granted) = granted {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, granted);
        }
    }
    response
}

/// Whether `origin` is in `[api] cors_origins` (which are lowercase).
fn listed(state: &ApiState, origin: &str) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    state.cors_origins.contains(&origin)
}

/// Whether `origin` is the request's own `Host` (a page fleetd served).
fn same_host(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, host)| host.trim_end_matches('/'));
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// Whether a browser sent the request: browsers add `Origin` to every
/// state-changing request, and `Sec-Fetch-Site` to every request; other
/// clients (OwnTracks, curl, gateways) send neither.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) || headers.contains_key("sec-fetch-site")
}

fn json_or_authorized(headers: &HeaderMap) -> bool {
    if headers.contains_key(AUTHORIZATION) {
        return true;
    }
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}
