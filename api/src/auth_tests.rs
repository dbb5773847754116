//! Access control through the whole router: tokens and scopes (401, 403),
//! the admin routes (tokens, credentials), HTTP ingest logins and device
//! ownership, CORS, the `Origin` of streams and the browser POST guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use fleetd_auth::{Access, LoginError};
use fleetd_ingest::{Decoder, Limits, Submitter};
use fleetd_schemas::{RejectionLog, Scope, now_ms};
use fleetd_store::FjallStore;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::conn::Conn;
use crate::router_tests::open_access;
use crate::{ApiState, router};

struct Harness {
    _dir: TempDir,
    state: ApiState,
    access: Arc<Access>,
    queue: mpsc::Receiver<fleetd_schemas::Ingested>,
    _journal: fleetd_journal::JournalTasks,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts status and error code; returns the message.
    fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        body["error"]["message"]
            .as_str()
            .expect("message")
            .to_owned()
    }
}

impl Harness {
    async fn new(allow_anonymous: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FjallStore::open(dir.path()).expect("open store"));
        let access = open_access(store.clone(), allow_anonymous).await;
        let rejections = Arc::new(RejectionLog::new(64));
        let (journal, journal_tasks, queue, _) =
            fleetd_journal::test_support::start(&dir.path().join("journal"), 16, 16).await;
        let submitter = Submitter::new(
            Decoder::new(Limits::default()),
            Arc::clone(&rejections),
            journal,
        );
        let state = ApiState::new(
            store,
            Arc::clone(&access),
            rejections,
            PrometheusBuilder::new().build_recorder().handle(),
            Arc::new(AtomicBool::new(true)),
        )
        .with_ingest(submitter)
        .with_cors_origins(vec!["https://dash.example".into()]);
        Self {
            _dir: dir,
            state,
            access,
            queue,
            _journal: journal_tasks,
        }
    }

    async fn token(&self, scope: Scope) -> String {
        self.access
            .create_token("test", &[scope], None)
            .await
            .expect("token")
            .token
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        self.send_to(&self.state, method, uri, headers, body).await
    }

    async fn send_to(
        &self,
        state: &ApiState,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(body.into()).expect("request");
        // What `serve` hands handlers: the peer address the login throttle
        // counts by.
        request.extensions_mut().insert(ConnectInfo(Conn {
            peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
            kill: CancellationToken::new(),
        }));
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        // Streams never end: only their head is read.
        let text = if headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            String::new()
        } else {
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Reply {
            status,
            headers,
            text,
        }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        self.send(Method::GET, uri, &headers, Body::empty()).await
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn position(device: &str) -> String {
    json!({"device_id": device, "ts_ms": now_ms() - 5_000, "lat": 52.5, "lon": 13.4}).to_string()
}

fn location() -> String {
    json!({"_type": "location", "tst": now_ms() / 1000 - 5, "lat": 48.85, "lon": 2.35}).to_string()
}

#[tokio::test]
async fn tokens_and_scopes_decide_401_403_and_200() {
    let h = Harness::new(false).await;
    let area = "/v1/vehicles?bbox=0,0,1,1";
    let none = h.get(area, None).await;
    let message = none.error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("Bearer"), "{message}");
    assert_eq!(
        none.header("www-authenticate"),
        Some(r#"Bearer realm="fleetd""#)
    );
    h.get(area, Some("fltd_nope_nope"))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let basic_scheme = h
        .send(
            Method::GET,
            area,
            &[("authorization", &basic("a", "b"))],
            Body::empty(),
        )
        .await;
    basic_scheme.error(StatusCode::UNAUTHORIZED, "unauthorized");

    let read = h.token(Scope::Read).await;
    let write = h.token(Scope::Write).await;
    assert_eq!(h.get(area, Some(&read)).await.status, StatusCode::OK);
    let device = json!({"name": "Van"}).to_string();
    let refused = h
        .send(
            Method::PUT,
            "/v1/devices/van-1",
            &[("authorization", &bearer(&read))],
            device.clone(),
        )
        .await;
    let message = refused.error(StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("`write`"), "{message}");
    let put = h
        .send(
            Method::PUT,
            "/v1/devices/van-1",
            &[("authorization", &bearer(&write))],
            device,
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);
    // Write includes read; admin routes need admin.
    assert_eq!(h.get(area, Some(&write)).await.status, StatusCode::OK);
    h.get("/v1/tokens", Some(&write))
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");

    for open in [
        "/healthz",
        "/readyz",
        "/",
        "/assets/map.js",
        "/openapi.json",
    ] {
        assert_eq!(h.get(open, None).await.status, StatusCode::OK, "{open}");
    }
    // Unknown routes and methods stay 404 and 405, unauthenticated.
    h.get("/v1/nope", None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    h.send(Method::POST, "/v1/vehicles", &[], Body::empty())
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // An expired token is refused with its reason.
    let short = h
        .access
        .create_token("short", &[Scope::Read], Some(Duration::from_millis(1)))
        .await
        .expect("token");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let message = h
        .get(area, Some(&short.token))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn metrics_need_a_read_token_unless_open() {
    let h = Harness::new(false).await;
    h.get("/metrics", None)
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    let read = h.token(Scope::Read).await;
    assert_eq!(h.get("/metrics", Some(&read)).await.status, StatusCode::OK);
    let open = h.state.clone().with_metrics_open(true);
    let reply = h
        .send_to(&open, Method::GET, "/metrics", &[], Body::empty())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn anonymous_mode_needs_no_token() {
    let h = Harness::new(true).await;
    assert_eq!(
        h.get("/v1/vehicles?bbox=0,0,1,1", None).await.status,
        StatusCode::OK
    );
    assert_eq!(h.get("/metrics", None).await.status, StatusCode::OK);
    assert_eq!(h.get("/v1/tokens", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked() {
    let h = Harness::new(false).await;
    let admin = h.token(Scope::Admin).await;
    let auth = bearer(&admin);
    let created = h
        .send(
            Method::POST,
            "/v1/tokens",
            &[("authorization", &auth)],
            json!({"name": "dashboard", "scopes": ["read"], "expires_in_s": 3600}).to_string(),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let body = created.json();
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        6,
        "id, token, name, scopes, created_ms, expires_ms: {body}"
    );
    assert_eq!(body["name"], "dashboard");
    assert_eq!(body["scopes"], json!(["read"]));
    let id = body["id"].as_str().expect("id").to_owned();
    let token = body["token"].as_str().expect("token").to_owned();
    let expires = body["expires_ms"].as_i64().expect("expires");
    let created_ms = body["created_ms"].as_i64().expect("created");
    assert_eq!(expires - created_ms, 3_600_000);

    let listed = h.get("/v1/tokens", Some(&admin)).await;
    assert_eq!(listed.status, StatusCode::OK);
    let tokens = listed.json()["tokens"].as_array().expect("tokens").clone();
    assert_eq!(tokens.len(), 2, "{}", listed.text);
    assert!(tokens.iter().any(|t| t["id"] == id.as_str()));
    assert!(
        !listed.text.contains(&token[token.len() - 8..]),
        "no secret"
    );
    assert!(!listed.text.contains("sha256") && !listed.text.contains("\"token\""));

    let area = "/v1/vehicles?bbox=0,0,1,1";
    assert_eq!(h.get(area, Some(&token)).await.status, StatusCode::OK);
    let revoke = format!("/v1/tokens/{id}");
    let gone = h
        .send(
            Method::DELETE,
            &revoke,
            &[("authorization", &auth)],
            Body::empty(),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    h.get(area, Some(&token))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");
    h.send(
        Method::DELETE,
        &revoke,
        &[("authorization", &auth)],
        Body::empty(),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");

    for bad in [
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "", "scopes": ["read"]}),
        json!({"name": "x", "scopes": ["read"], "expires_in_s": 0}),
        json!({"name": "x", "scopes": ["read"], "extra": 1}),
    ] {
        h.send(
            Method::POST,
            "/v1/tokens",
            &[("authorization", &auth)],
            bad.to_string(),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn credentials_are_issued_rotated_and_revoked() {
    let h = Harness::new(false).await;
    let admin = bearer(&h.token(Scope::Admin).await);
    let auth = [("authorization", admin.as_str())];
    let uri = "/v1/devices/truck-1/credentials";
    let first = h.send(Method::POST, uri, &auth, Body::empty()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let body = first.json();
    assert_eq!(body["device_id"], "truck-1");
    assert_eq!(body["username"], "truck-1");
    assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{body}");
    let old = body["password"].as_str().expect("password").to_owned();
    let login = |password: String| {
        let access = Arc::clone(&h.access);
        async move { access.login(Some("truck-1"), Some(&password), None).await }
    };
    assert!(login(old.clone()).await.is_ok());

    let rotated = h.send(Method::POST, uri, &auth, Body::empty()).await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let new = rotated.json()["password"]
        .as_str()
        .expect("password")
        .to_owned();
    assert_ne!(new, old);
    assert!(matches!(login(old).await, Err(LoginError::Wrong)));
    assert!(login(new.clone()).await.is_ok());

    let revoked = h.send(Method::DELETE, uri, &auth, Body::empty()).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert!(login(new).await.is_err());
    h.send(Method::DELETE, uri, &auth, Body::empty())
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    let user = h
        .send(
            Method::POST,
            "/v1/users/alice/credentials",
            &auth,
            Body::empty(),
        )
        .await;
    assert_eq!(user.status, StatusCode::CREATED, "{}", user.text);
    assert_eq!(user.json()["username"], "alice");
    h.send(
        Method::POST,
        "/v1/users/alice%2Fphone/credentials",
        &auth,
        Body::empty(),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_request");
    let gone = h
        .send(
            Method::DELETE,
            "/v1/users/alice/credentials",
            &auth,
            Body::empty(),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn credentials_in_bulk() {
    let h = Harness::new(false).await;
    let admin = bearer(&h.token(Scope::Admin).await);
    let auth = [("authorization", admin.as_str())];
    let body = json!({"devices": ["van-1", "van-2"], "users": ["alice"]}).to_string();
    let issued = h.send(Method::POST, "/v1/credentials", &auth, body).await;
    assert_eq!(issued.status, StatusCode::CREATED, "{}", issued.text);
    assert_eq!(issued.header("cache-control"), Some("no-store"));
    let credentials = issued.json()["credentials"]
        .as_array()
        .expect("credentials")
        .clone();
    let names: Vec<&str> = credentials
        .iter()
        .map(|c| c["username"].as_str().expect("username"))
        .collect();
    assert_eq!(names, ["van-1", "van-2", "alice"]);
    for c in &credentials {
        let password = c["password"].as_str().expect("password");
        let user = c["username"].as_str().expect("username");
        assert!(
            h.access
                .login(Some(user), Some(password), None)
                .await
                .is_ok()
        );
    }

    let bad = json!({"devices": ["van-3", "bad id!"]}).to_string();
    let message = h
        .send(Method::POST, "/v1/credentials", &auth, bad)
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains(r#"devices[1] "bad id!""#), "{message}");
    assert!(
        h.access
            .login(Some("van-3"), Some("x"), None)
            .await
            .is_err(),
        "nothing issued"
    );
    let bad_user = json!({"users": ["ok", "a/b"]}).to_string();
    let message = h
        .send(Method::POST, "/v1/credentials", &auth, bad_user)
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains("users[1]"), "{message}");
    let many: Vec<String> = (0..10_001).map(|i| format!("d{i}")).collect();
    let message = h
        .send(
            Method::POST,
            "/v1/credentials",
            &auth,
            json!({ "devices": many }).to_string(),
        )
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains("10000"), "{message}");
    h.send(Method::POST, "/v1/credentials", &auth, "{}")
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn positions_take_device_logins_for_their_own_devices_only() {
    let mut h = Harness::new(false).await;
    let issued = h
        .access
        .issue_credentials(&[
            fleetd_schemas::Principal::Device(
                fleetd_schemas::DeviceId::parse("van-1").expect("id"),
            ),
            fleetd_schemas::Principal::user("alice").expect("user"),
        ])
        .await
        .expect("issued");
    let van = basic("van-1", &issued[0].password);
    let alice = basic("alice", &issued[1].password);
    let post = |auth: String, extra: Vec<(&'static str, &'static str)>, body: String| {
        let h = &h;
        async move {
            let mut headers = vec![("authorization", auth.as_str())];
            headers.extend(extra);
            h.send(Method::POST, "/v1/positions", &headers, body).await
        }
    };

    let own = post(van.clone(), vec![], position("van-1")).await;
    assert_eq!(own.status, StatusCode::ACCEPTED, "{}", own.text);
    let other = post(van.clone(), vec![], position("van-2")).await;
    let message = other.error(StatusCode::FORBIDDEN, "not_authorized");
    assert!(
        message.contains("device van-1") && message.contains("van-2"),
        "{message}"
    );

    let ot = post(
        alice.clone(),
        vec![("x-limit-u", "alice"), ("x-limit-d", "phone")],
        location(),
    )
    .await;
    assert_eq!(ot.status, StatusCode::OK, "{}", ot.text);
    post(
        alice.clone(),
        vec![("x-limit-u", "bob"), ("x-limit-d", "phone")],
        location(),
    )
    .await
    .error(StatusCode::FORBIDDEN, "not_authorized");

    let read = h.token(Scope::Read).await;
    let rejections = h.get("/v1/rejections", Some(&read)).await.json();
    let refused: Vec<&Value> = rejections["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .filter(|r| r["reason"] == "not_authorized")
        .collect();
    assert_eq!(refused.len(), 2, "{rejections}");
    assert_eq!(refused[0]["device_id"], "bob/phone");
    assert_eq!(refused[1]["device_id"], "van-2");
    assert_eq!(refused[1]["source"], "http");
    assert!(
        refused[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("device van-1")),
        "{rejections}"
    );

    // Tokens: read is not enough, write posts for any device.
    post(bearer(&read), vec![], position("van-9"))
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    let write = h.token(Scope::Write).await;
    let gateway = post(bearer(&write), vec![], position("van-9")).await;
    assert_eq!(gateway.status, StatusCode::ACCEPTED, "{}", gateway.text);

    // No credentials, a wrong password: 401 with both challenges.
    let nobody = h
        .send(Method::POST, "/v1/positions", &[], position("van-1"))
        .await;
    nobody.error(StatusCode::UNAUTHORIZED, "unauthorized");
    let challenges: Vec<&str> = nobody
        .headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        challenges,
        [r#"Bearer realm="fleetd""#, r#"Basic realm="fleetd""#]
    );
    post(basic("van-1", "wrong"), vec![], position("van-1"))
        .await
        .error(StatusCode::UNAUTHORIZED, "unauthorized");

    let queued = fleetd_journal::test_support::forwarded(&mut h.queue)
        .await
        .len();
    assert_eq!(
        queued, 3,
        "only own positions and the gateway's were queued"
    );
}

#[tokio::test]
async fn failed_logins_are_throttled() {
    let h = Harness::new(false).await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let reply = h
            .send(
                Method::POST,
                "/v1/positions",
                &[("authorization", &basic("van-1", "guess"))],
                position("van-1"),
            )
            .await;
        statuses.push(reply.status);
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            reply.error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            assert!(reply.header("retry-after").is_some());
            return;
        }
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    panic!("never throttled: {statuses:?}");
}

#[tokio::test]
async fn cors_grants_listed_origins_only() {
    let h = Harness::new(false).await;
    let preflight = |origin: &'static str| {
        let h = &h;
        async move {
            h.send(
                Method::OPTIONS,
                "/v1/vehicles",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization"),
                ],
                Body::empty(),
            )
            .await
        }
    };
    let granted = preflight("https://dash.example").await;
    assert_eq!(granted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        granted.header("access-control-allow-origin"),
        Some("https://dash.example")
    );
    let allowed = granted
        .header("access-control-allow-headers")
        .expect("allow headers");
    assert!(allowed.contains("Authorization") && allowed.contains("Content-Type"));
    let methods = granted
        .header("access-control-allow-methods")
        .expect("allow methods");
    for m in ["GET", "POST", "PUT", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let refused = preflight("https://evil.example").await;
    assert!(refused.header("access-control-allow-origin").is_none());

    let read = bearer(&h.token(Scope::Read).await);
    for (origin, grant) in [
        ("https://dash.example", Some("https://dash.example")),
        ("https://evil.example", None),
    ] {
        let reply = h
            .send(
                Method::GET,
                "/v1/vehicles?bbox=0,0,1,1",
                &[("origin", origin), ("authorization", &read)],
                Body::empty(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("access-control-allow-origin"), grant);
    }
}

#[tokio::test]
async fn streams_check_the_origin() {
    let h = Harness::new(true).await;
    for uri in ["/v1/stream", "/v1/ws"] {
        let foreign = h
            .send(
                Method::GET,
                uri,
                &[
                    ("origin", "https://evil.example"),
                    ("host", "fleet.local:8080"),
                ],
                Body::empty(),
            )
            .await;
        foreign.error(StatusCode::FORBIDDEN, "forbidden");
    }
    for origin in ["http://fleet.local:8080", "https://dash.example"] {
        let reply = h
            .send(
                Method::GET,
                "/v1/stream",
                &[("origin", origin), ("host", "fleet.local:8080")],
                Body::empty(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{origin}: {}", reply.text);
    }
    let no_origin = h.get("/v1/stream", None).await;
    assert_eq!(no_origin.status, StatusCode::OK);
}

#[tokio::test]
async fn browser_posts_need_json_or_a_token_even_anonymously() {
    let h = Harness::new(true).await;
    let body = position("van-1");
    let cross_site = h
        .send(
            Method::POST,
            "/v1/positions",
            &[
                ("origin", "https://evil.example"),
                ("content-type", "text/plain"),
            ],
            body.clone(),
        )
        .await;
    cross_site.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let form = h
        .send(
            Method::DELETE,
            "/v1/devices/van-1",
            &[("sec-fetch-site", "cross-site")],
            Body::empty(),
        )
        .await;
    form.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let json_post = h
        .send(
            Method::POST,
            "/v1/positions",
            &[
                ("origin", "https://dash.example"),
                ("content-type", "application/json; charset=utf-8"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(json_post.status, StatusCode::ACCEPTED, "{}", json_post.text);
    // Not from a browser (no Origin, no Sec-Fetch-Site): as before.
    let curl = h
        .send(
            Method::POST,
            "/v1/positions",
            &[("content-type", "text/plain")],
            body,
        )
        .await;
    assert_eq!(curl.status, StatusCode::ACCEPTED, "{}", curl.text);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_is_revoked() {
    use futures::StreamExt;
    let h = Harness::new(false).await;
    let issued = h
        .access
        .create_token("live", &[Scope::Read], None)
        .await
        .expect("token");
    let request = Request::get("/v1/stream")
        .header("authorization", bearer(&issued.token))
        .body(Body::empty())
        .expect("request");
    let response = router(h.state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let preamble = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
    assert!(
        matches!(preamble, Ok(Some(Ok(_)))),
        "the preamble comes first"
    );
    assert!(
        h.access
            .revoke_token(&issued.record.id)
            .await
            .expect("revoke")
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            chunk.expect("chunk");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with its token");
}

#[test]
fn routes_missing_from_the_table_fail_closed() {
    use crate::auth::Need;
    assert_eq!(
        crate::route_access(&Method::GET, "/v1/forgotten"),
        Some(Need::Scope(Scope::Admin))
    );
    assert_eq!(crate::route_access(&Method::TRACE, "/v1/vehicles"), None);
    assert_eq!(
        crate::route_access(&Method::HEAD, "/v1/vehicles"),
        Some(Need::Scope(Scope::Read))
    );
}
