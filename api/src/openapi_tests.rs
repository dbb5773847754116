//! The OpenAPI document (`api/openapi.json`) held to the code: its paths and
//! methods against the router (both ways), its structure, and its schemas
//! against real responses of real handlers over a real store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use fleetd_ingest::{Decoder, Limits, Submitter};
use fleetd_schemas::{
    Alert, AlertDetail, AlertKind, DeviceTrip, Ingested, RejectionLog, Trip, VehicleState, now_ms,
};
use fleetd_store::{FjallStore, LatestUpdate, WriteBatch};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::router_tests::position;
use crate::routes::openapi::OPENAPI_JSON;
use crate::{ApiError, ApiState, router};

/// The source of the router, to read the paths it registers.
const LIB_RS: &str = include_str!("lib.rs");

/// HTTP methods as OpenAPI path-item keys.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "options", "head", "trace",
];

fn doc() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

/// The paths `router` registers, read from its source: every `.route("...")`.
fn router_paths() -> BTreeSet<String> {
    let start = LIB_RS.find("pub fn router(").expect("router function");
    let body = &LIB_RS[start..];
    let body = &body[..body.find("\n}\n").expect("end of router")];
    body.match_indices(".route(")
        .map(|(i, _)| {
            let rest = body[i + ".route(".len()..].trim_start();
            let rest = rest.strip_prefix('"').expect("a literal path");
            rest[..rest.find('"').expect("closing quote")].to_owned()
        })
        .collect()
}

/// `template` with every `{param}` replaced by `value`.
fn fill(template: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closing brace") + open;
        out.push_str(&rest[..open]);
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Resolves a local `$ref` (one level at a time) until `value` is no ref.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(r) = value.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("local ref");
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("unresolved {r}"));
    }
    value
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `(path, method, operation)` of every operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

/// A JSON Schema 2020-12 validator for `schema`, which may refer to
/// `#/components/...` of the document.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    jsonschema::draft202012::options()
        .build(&root)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema}"))
}

/// A state whose HTTP ingest appends to a real journal in the directory;
/// the journal's tasks live as long as the journal handle.
async fn state() -> (TempDir, ApiState, mpsc::Receiver<Ingested>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FjallStore::open(dir.path()).expect("open store"));
    let rejections = Arc::new(RejectionLog::new(16));
    let (journal, _tasks, rx, _) =
        fleetd_journal::test_support::start(&dir.path().join("journal"), 16, 16).await;
    let submitter = Submitter::new(
        Decoder::new(Limits::default()),
        Arc::clone(&rejections),
        journal,
    );
    let state = ApiState::new(
        store.clone(),
        crate::router_tests::open_access(store, true).await,
        rejections,
        PrometheusBuilder::new().build_recorder().handle(),
        Arc::new(AtomicBool::new(true)),
    )
    .with_ingest(submitter);
    (dir, state, rx)
}

#[test]
fn document_is_openapi_3_1_and_well_formed() {
    let doc = doc();
    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["title"].is_string());

    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(all_refs.len() > 50, "{}", all_refs.len());
    for r in &all_refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
    }

    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(
            ids.insert(id.to_owned()),
            "{at}: duplicate operationId {id}"
        );
        assert!(op["summary"].is_string(), "{at}: no summary");

        // Path parameters: exactly the template's, each required.
        let template: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|s| s[..s.find('}').expect("brace")].to_owned())
            .collect();
        let mut declared = BTreeSet::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = resolve(&doc, p);
            let name = p["name"].as_str().expect("parameter name");
            match p["in"].as_str() {
                Some("path") => {
                    assert_eq!(p["required"], true, "{at}: path parameter {name}");
                    declared.insert(name.to_owned());
                }
                Some("query" | "header") => {}
                other => panic!("{at}: parameter {name} in {other:?}"),
            }
            assert!(
                p["schema"].is_object(),
                "{at}: parameter {name} has no schema"
            );
        }
        assert_eq!(declared, template, "{at}: path parameters");

        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.as_str() == "101"),
            "{at}: no success response"
        );
        for (status, response) in responses {
            let response = resolve(&doc, response);
            assert!(response["description"].is_string(), "{at} {status}");
            let code: u16 = status
                .parse()
                .unwrap_or_else(|_| panic!("{at}: status {status}"));
            if code >= 400 {
                // Every error answer is the JSON error shape.
                let schema = &response["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/Error",
                    "{at} {status}: not the error shape"
                );
            }
            for content in response["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|m| m.1)
            {
                validator(&doc, &content["schema"]);
            }
        }
        if let Some(body) = op.get("requestBody") {
            for content in body["content"].as_object().expect("content").values() {
                let v = validator(&doc, &content["schema"]);
                for example in content["examples"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|e| &e.1["value"])
                {
                    assert!(v.is_valid(example), "{at}: example {example}");
                }
            }
        }
    }

    // Every schema compiles, and their examples are valid.
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        let v = validator(&doc, schema);
        if let Some(example) = schema.get("example") {
            assert!(v.is_valid(example), "{name}: example {example}");
        }
    }
}

#[test]
fn the_error_schema_is_the_error_shape() {
    let doc = doc();
    let v = validator(&doc, &json!({"$ref": "#/components/schemas/Error"}));
    let response = ApiError::NotFound("no such thing".into()).into_response();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let bytes = runtime
        .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert!(v.is_valid(&body), "{body}");
    assert!(!v.is_valid(&json!({"error": {"code": "x"}})));
    assert!(!v.is_valid(&json!({"error": {"code": "x", "message": "y", "more": 1}})));
}

#[tokio::test]
async fn every_route_and_method_is_documented_and_nothing_else() {
    let doc = doc();
    let served = router_paths();
    assert!(
        served.len() >= 24,
        "too few routes read from lib.rs: {served:?}"
    );
    for known in [
        "/v1/positions",
        "/openapi.json",
        "/v1/geofences/{id}/vehicles",
    ] {
        assert!(served.contains(known), "{known} not read from lib.rs");
    }
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not in openapi.json: {missing:?}; paths in openapi.json the router lacks: {extra:?}"
    );

    // Methods: what the router allows on each path (its 405 `Allow`)
    // against the operations of the path.
    let (_dir, state, _rx) = state().await;
    for path in &served {
        let request = Request::builder()
            .method(Method::TRACE)
            .uri(fill(path, "x"))
            .body(Body::empty())
            .expect("request");
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allowed: BTreeSet<String> = response
            .headers()
            .get(ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{path}: no Allow header"))
            .split(',')
            .map(|m| m.trim().to_lowercase())
            // axum answers HEAD wherever it answers GET.
            .filter(|m| m != "head")
            .collect();
        let operations: BTreeSet<String> = doc["paths"][path]
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| METHODS.contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(operations, allowed, "{path}: documented vs served methods");
    }
}

/// Sends requests and checks each answer against what the document
/// declares for its operation, status and media type.
struct Checker {
    doc: Value,
    state: ApiState,
    /// `(template, method, status)` seen, to prove coverage.
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl Checker {
    async fn check(
        &mut self,
        method: Method,
        uri: &str,
        template: &str,
        body: Option<Value>,
    ) -> Value {
        let request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = router(self.state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let media = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let at = format!("{method} {uri} → {status}");
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{at}: no operation {method} {template}");
        let declared = resolve(&self.doc, &op["responses"][status.as_str()]);
        assert!(declared.is_object(), "{at}: status not documented");
        self.seen
            .entry((template.to_owned(), method.to_string()))
            .or_default()
            .insert(status.as_u16());
        let Some(media) = media else {
            assert!(bytes.is_empty(), "{at}: body without a content type");
            assert!(
                declared.get("content").is_none(),
                "{at}: documented content missing"
            );
            return Value::Null;
        };
        let content = &declared["content"][&media];
        assert!(content.is_object(), "{at}: {media} not documented");
        if !media.contains("json") {
            return Value::Null;
        }
        let value: Value = serde_json::from_slice(&bytes).expect("JSON body");
        let v = validator(&self.doc, &content["schema"]);
        let errors: Vec<String> = v
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{at}: {errors:?}\n{value}");
        value
    }
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let (dir, state, _rx) = state().await;
    let store = Arc::clone(&state.store);
    // Deliveries to a port nobody listens on, given up after one attempt:
    // dead letters to list.
    let mut settings = fleetd_webhooks::WebhookSettings::new(dir.path().join("webhooks"));
    settings.max_attempts = 1;
    settings.timeout = std::time::Duration::from_secs(2);
    let (hooks, outbox) = fleetd_webhooks::Webhooks::start(
        settings,
        Arc::clone(&store),
        Arc::new(fleetd_store::Registry::default()),
        None,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("webhooks");
    let state = state.with_webhooks(Some(hooks.clone()));
    let now = now_ms();
    let p = position("car-1", now - 60_000, 52.52, 13.405);
    let earlier = position("car-1", now - 120_000, 52.51, 13.40);
    let trip = Trip {
        start_ts_ms: now - 3_600_000,
        start: (52.5, 13.4),
        end_ts_ms: Some(now - 3_000_000),
        end: Some((52.52, 13.405)),
        last_ts_ms: now - 3_000_000,
        last: (52.52, 13.405),
        distance_m: 4_200.0,
        max_speed_mps: 16.0,
        points: 600,
    };
    let open = Trip {
        start_ts_ms: now - 600_000,
        end_ts_ms: None,
        end: None,
        ..trip.clone()
    };
    let alert = Alert::new(
        AlertKind::Overspeed,
        p.report.device_id.clone(),
        None,
        now - 90_000,
        (52.51, 13.40),
        AlertDetail {
            speed_kmh: Some(97.0),
            limit_kmh: Some(80.0),
            ..AlertDetail::default()
        },
    );
    store
        .write_batch(
            WriteBatch {
                history: vec![earlier, p.clone()],
                latest: vec![LatestUpdate {
                    position: p.clone(),
                    previous_area_cell: None,
                }],
                states: vec![(
                    p.report.device_id.clone(),
                    VehicleState {
                        ts_ms: p.report.ts_ms,
                        odometer_m: 9_000.0,
                        trip: Some(Box::new(open)),
                        ..VehicleState::default()
                    },
                )],
                trips: vec![DeviceTrip {
                    device_id: p.report.device_id.clone(),
                    trip: trip.clone(),
                }],
                alerts: vec![alert.clone()],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");

    let mut c = Checker {
        doc: doc(),
        state,
        seen: BTreeMap::new(),
    };
    let get = Method::GET;
    let v = c
        .check(get.clone(), "/v1/vehicles/car-1", "/v1/vehicles/{id}", None)
        .await;
    assert_eq!(v["odometer_m"], 9000.0);
    c.check(
        get.clone(),
        "/v1/vehicles/nobody",
        "/v1/vehicles/{id}",
        None,
    )
    .await;
    c.check(
        get.clone(),
        "/v1/vehicles/bad%20id",
        "/v1/vehicles/{id}",
        None,
    )
    .await;
    let v = c
        .check(
            get.clone(),
            "/v1/vehicles?bbox=13,52,14,53",
            "/v1/vehicles",
            None,
        )
        .await;
    assert_eq!(v["count"], 1);
    c.check(
        get.clone(),
        "/v1/vehicles?near=52.52,13.405&radius_m=500&format=geojson",
        "/v1/vehicles",
        None,
    )
    .await;
    c.check(get.clone(), "/v1/vehicles?bbox=1,2,3", "/v1/vehicles", None)
        .await;
    let v = c
        .check(
            get.clone(),
            "/v1/vehicles/car-1/track?limit=1",
            "/v1/vehicles/{id}/track",
            None,
        )
        .await;
    assert!(v["next_cursor"].is_string(), "{v}");
    c.check(
        get.clone(),
        "/v1/vehicles/car-1/track?format=geojson",
        "/v1/vehicles/{id}/track",
        None,
    )
    .await;
    let v = c
        .check(
            get.clone(),
            "/v1/vehicles/car-1/trips",
            "/v1/vehicles/{id}/trips",
            None,
        )
        .await;
    assert_eq!(v["trips"].as_array().map(Vec::len), Some(2), "{v}");
    let trip_uri = format!("/v1/vehicles/car-1/trips/{}", trip.start_ts_ms);
    c.check(
        get.clone(),
        &trip_uri,
        "/v1/vehicles/{id}/trips/{trip}",
        None,
    )
    .await;
    c.check(
        get.clone(),
        &format!("{trip_uri}/track"),
        "/v1/vehicles/{id}/trips/{trip}/track",
        None,
    )
    .await;
    c.check(
        get.clone(),
        "/v1/vehicles/car-1/geofences",
        "/v1/vehicles/{id}/geofences",
        None,
    )
    .await;

    let device =
        json!({"name": "Car 1", "class": "car", "speed_limit_kmh": 80, "tags": {"depot": "north"}});
    c.check(
        Method::PUT,
        "/v1/devices/car-1",
        "/v1/devices/{id}",
        Some(device.clone()),
    )
    .await;
    c.check(
        Method::PUT,
        "/v1/devices/car-1",
        "/v1/devices/{id}",
        Some(device),
    )
    .await;
    c.check(
        Method::PUT,
        "/v1/devices/car-1",
        "/v1/devices/{id}",
        Some(json!({"colour": "red"})),
    )
    .await;
    c.check(get.clone(), "/v1/devices/car-1", "/v1/devices/{id}", None)
        .await;
    c.check(get.clone(), "/v1/devices", "/v1/devices", None)
        .await;
    let v = c
        .check(get.clone(), "/v1/vehicles/car-1", "/v1/vehicles/{id}", None)
        .await;
    assert_eq!(v["name"], "Car 1");
    c.check(
        Method::DELETE,
        "/v1/devices/car-1",
        "/v1/devices/{id}",
        None,
    )
    .await;
    c.check(
        Method::DELETE,
        "/v1/devices/car-1",
        "/v1/devices/{id}",
        None,
    )
    .await;

    let depot = json!({"type": "Feature", "properties": {"name": "Depot", "dwell_s": 600},
        "geometry": {"type": "Polygon", "coordinates": [[[13.39, 52.51], [13.41, 52.51], [13.41, 52.53], [13.39, 52.53], [13.39, 52.51]]]}});
    c.check(
        Method::PUT,
        "/v1/geofences/depot",
        "/v1/geofences/{id}",
        Some(depot),
    )
    .await;
    let kiosk = json!({"center": [13.405, 52.52], "radius_m": 80, "properties": {"name": "Kiosk"}});
    c.check(
        Method::PUT,
        "/v1/geofences/kiosk",
        "/v1/geofences/{id}",
        Some(kiosk),
    )
    .await;
    let parts = json!({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]], [[[2, 2], [3, 2], [3, 3], [2, 3], [2, 2]]]]}});
    c.check(
        Method::PUT,
        "/v1/geofences/parts",
        "/v1/geofences/{id}",
        Some(parts),
    )
    .await;
    let bowtie = json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}});
    c.check(
        Method::PUT,
        "/v1/geofences/bowtie",
        "/v1/geofences/{id}",
        Some(bowtie),
    )
    .await;
    c.check(
        get.clone(),
        "/v1/geofences/depot",
        "/v1/geofences/{id}",
        None,
    )
    .await;
    c.check(
        get.clone(),
        "/v1/geofences/kiosk",
        "/v1/geofences/{id}",
        None,
    )
    .await;
    let v = c
        .check(get.clone(), "/v1/geofences?limit=2", "/v1/geofences", None)
        .await;
    assert!(v["next_cursor"].is_string(), "{v}");
    c.check(
        get.clone(),
        "/v1/geofences/depot/vehicles",
        "/v1/geofences/{id}/vehicles",
        None,
    )
    .await;
    c.check(
        get.clone(),
        "/v1/geofences/nowhere/vehicles",
        "/v1/geofences/{id}/vehicles",
        None,
    )
    .await;
    c.check(
        Method::DELETE,
        "/v1/geofences/kiosk",
        "/v1/geofences/{id}",
        None,
    )
    .await;
    c.check(
        get.clone(),
        "/v1/geofences/kiosk",
        "/v1/geofences/{id}",
        None,
    )
    .await;

    let v = c.check(get.clone(), "/v1/alerts", "/v1/alerts", None).await;
    assert_eq!(v["alerts"].as_array().map(Vec::len), Some(1), "{v}");
    c.check(get.clone(), "/v1/alerts?kind=nonsense", "/v1/alerts", None)
        .await;

    let owntracks =
        json!({"_type": "location", "tid": "ph", "tst": now / 1000, "lat": 48.85, "lon": 2.35});
    c.check(
        Method::POST,
        "/v1/positions?u=alice&d=phone",
        "/v1/positions",
        Some(owntracks),
    )
    .await;
    let batch = json!([{"device_id": "t1", "ts_ms": now, "lat": 1, "lon": 1},
                       {"device_id": "t2", "ts_ms": now, "lat": 100, "lon": 1}]);
    let v = c
        .check(Method::POST, "/v1/positions", "/v1/positions", Some(batch))
        .await;
    assert_eq!(v["accepted"], 1);
    c.check(
        Method::POST,
        "/v1/positions",
        "/v1/positions",
        Some(json!({"lat": 1})),
    )
    .await;
    c.check(get.clone(), "/v1/rejections", "/v1/rejections", None)
        .await;

    c.check(get.clone(), "/v1/cells", "/v1/cells", None).await;
    c.check(
        get.clone(),
        "/v1/cells?format=geojson&res=9",
        "/v1/cells",
        None,
    )
    .await;
    c.check(get.clone(), "/v1/cells?res=3", "/v1/cells", None)
        .await;
    c.check(get.clone(), "/healthz", "/healthz", None).await;
    c.check(get.clone(), "/readyz", "/readyz", None).await;
    c.check(get.clone(), "/metrics", "/metrics", None).await;
    c.check(get.clone(), "/", "/", None).await;
    c.check(get.clone(), "/?id=dev1&lat=52.5&lon=13.4", "/", None)
        .await;
    c.check(get.clone(), "/assets/map.js", "/assets/{name}", None)
        .await;
    c.check(get.clone(), "/assets/nothing.js", "/assets/{name}", None)
        .await;
    let v = c
        .check(get.clone(), "/openapi.json", "/openapi.json", None)
        .await;
    // Served as written, but for the position examples' dates.
    let mut served = v.clone();
    let mut written = doc();
    let examples = "/paths/~1v1~1positions/post/requestBody/content/application~1json/examples";
    let fresh = served.pointer_mut(examples).map(Value::take);
    written.pointer_mut(examples).map(Value::take);
    assert_eq!(served, written, "served as written");
    let one = fresh.expect("position examples")["one"]["value"]["ts_ms"]
        .as_i64()
        .expect("ts_ms");
    assert!(
        (now_ms() - one).abs() < 120_000,
        "the example is recent: {one}"
    );

    // Credentials and tokens (no token needed: the access service here
    // allows anonymous callers).
    let post = Method::POST;
    let delete = Method::DELETE;
    for (one, template) in [
        (
            "/v1/devices/car-1/credentials",
            "/v1/devices/{id}/credentials",
        ),
        (
            "/v1/users/alice/credentials",
            "/v1/users/{user}/credentials",
        ),
    ] {
        let issued = c.check(post.clone(), one, template, None).await;
        assert!(issued["password"].is_string(), "{issued}");
        c.check(delete.clone(), one, template, None).await;
        c.check(delete.clone(), one, template, None).await;
    }
    c.check(
        post.clone(),
        "/v1/devices/bad%20id/credentials",
        "/v1/devices/{id}/credentials",
        None,
    )
    .await;
    c.check(
        post.clone(),
        "/v1/users/a%2Fb/credentials",
        "/v1/users/{user}/credentials",
        None,
    )
    .await;
    c.check(
        post.clone(),
        "/v1/credentials",
        "/v1/credentials",
        Some(json!({"devices": ["car-1", "car-2"], "users": ["alice"]})),
    )
    .await;
    c.check(
        post.clone(),
        "/v1/credentials",
        "/v1/credentials",
        Some(json!({"devices": ["bad id"]})),
    )
    .await;
    let token = c
        .check(
            post.clone(),
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"name": "dashboard", "scopes": ["read"], "expires_in_s": 60})),
        )
        .await;
    c.check(
        post.clone(),
        "/v1/tokens",
        "/v1/tokens",
        Some(json!({"name": "x", "scopes": []})),
    )
    .await;
    let listed = c.check(get.clone(), "/v1/tokens", "/v1/tokens", None).await;
    assert_eq!(listed["tokens"][0]["id"], token["id"]);
    let id = token["id"].as_str().expect("token id");
    let one = format!("/v1/tokens/{id}");
    c.check(delete.clone(), &one, "/v1/tokens/{id}", None).await;
    c.check(delete.clone(), &one, "/v1/tokens/{id}", None).await;

    let share = c
        .check(
            post.clone(),
            "/v1/shares",
            "/v1/shares",
            Some(json!({"devices": ["car-1"], "expires_in_s": 600, "name": "delivery"})),
        )
        .await;
    assert!(
        share["path"]
            .as_str()
            .expect("path")
            .starts_with("/#share=fltd_"),
        "{share}"
    );
    c.check(
        post.clone(),
        "/v1/shares",
        "/v1/shares",
        Some(json!({"devices": [], "expires_in_s": 600})),
    )
    .await;
    let listed = c.check(get.clone(), "/v1/shares", "/v1/shares", None).await;
    assert_eq!(listed["shares"][0]["id"], share["id"]);
    // Anonymous here: not a share link.
    c.check(get.clone(), "/v1/share", "/v1/share", None).await;
    let one = format!("/v1/shares/{}", share["id"].as_str().expect("id"));
    c.check(delete.clone(), &one, "/v1/shares/{id}", None).await;
    c.check(delete.clone(), &one, "/v1/shares/{id}", None).await;

    let hook = "/v1/webhooks/{id}";
    let saved = c
        .check(
            Method::PUT,
            "/v1/webhooks/ops",
            hook,
            Some(json!({"url": "http://127.0.0.1:1/alerts", "filter": {"kinds": ["overspeed"]}})),
        )
        .await;
    assert!(
        saved["secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsec_")
    );
    c.check(
        Method::PUT,
        "/v1/webhooks/ops",
        hook,
        Some(json!({"url": "http://127.0.0.1:1/alerts"})),
    )
    .await;
    c.check(
        Method::PUT,
        "/v1/webhooks/ops",
        hook,
        Some(json!({"url": "ftp://example.com/"})),
    )
    .await;
    c.check(get.clone(), "/v1/webhooks", "/v1/webhooks", None)
        .await;
    let one = c.check(get.clone(), "/v1/webhooks/ops", hook, None).await;
    assert!(one.get("secret").is_none(), "{one}");
    c.check(get.clone(), "/v1/webhooks/none", hook, None).await;
    outbox.append(std::slice::from_ref(&alert)).expect("outbox");
    let dead_letters = "/v1/webhooks/{id}/dead-letters";
    let mut page = Value::Null;
    for _ in 0..100 {
        page = c
            .check(
                get.clone(),
                "/v1/webhooks/ops/dead-letters?limit=1",
                dead_letters,
                None,
            )
            .await;
        if page["count"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(page["dead_letters"][0]["reason"], "failed", "{page}");
    c.check(
        get.clone(),
        "/v1/webhooks/ops/dead-letters?cursor=x",
        dead_letters,
        None,
    )
    .await;
    c.check(
        post.clone(),
        "/v1/webhooks/ops/dead-letters/redeliver",
        "/v1/webhooks/{id}/dead-letters/redeliver",
        None,
    )
    .await;
    c.check(
        post.clone(),
        "/v1/webhooks/ops/dead-letters/clear",
        "/v1/webhooks/{id}/dead-letters/clear",
        None,
    )
    .await;
    c.check(delete.clone(), "/v1/webhooks/ops", hook, None)
        .await;
    c.check(delete.clone(), "/v1/webhooks/ops", hook, None)
        .await;

    // Every operation but the two live streams (covered by stream_tests)
    // was exercised.
    let exercised: BTreeSet<(String, String)> = c.seen.keys().cloned().collect();
    for (path, method, _) in operations(&c.doc) {
        let key = (path.clone(), method.to_uppercase());
        if path == "/v1/stream" || path == "/v1/ws" {
            continue;
        }
        assert!(exercised.contains(&key), "{key:?} not exercised");
    }
}

/// The scope name an operation's `x-fleetd-scope` gives for a route's need.
fn scope_name(need: crate::auth::Need) -> &'static str {
    use crate::auth::Need;
    match need {
        Need::Open => "none",
        Need::Scope(scope) => scope.name(),
        // Read tokens, or a share link for its own devices.
        Need::ReadOrShare => "read",
        // Protected by default (`[api] metrics_open = false`).
        Need::Metrics => "read",
        // Tokens need `write`; devices log in with basic instead.
        Need::Ingest => "write",
    }
}

/// Every operation × {no token, read, write, admin token}: 401 without a
/// token where the document declares `security`, 403 below the operation's
/// `x-fleetd-scope`, neither otherwise. The document's declarations are
/// held to `ROUTE_ACCESS` and to real answers, so none of the three can
/// drift from the others.
#[tokio::test]
async fn every_operation_answers_401_and_403_as_its_security_says() {
    use fleetd_schemas::Scope;
    let doc = doc();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FjallStore::open(dir.path()).expect("open store"));
    let access = crate::router_tests::open_access(store.clone(), false).await;
    let rejections = Arc::new(RejectionLog::new(16));
    let (journal, _tasks, _rx, _) =
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
    .with_ingest(submitter);
    let mut callers: Vec<(&str, Option<String>, usize)> = vec![("no token", None, 0)];
    for (level, scope) in Scope::ALL.into_iter().enumerate() {
        let issued = access
            .create_token(scope.name(), &[scope], None)
            .await
            .expect("token");
        callers.push((scope.name(), Some(issued.token), level + 1));
    }
    let level_of = |scope: &str| match scope {
        "none" => 0,
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        other => panic!("unknown x-fleetd-scope {other:?}"),
    };

    let mut checked = 0;
    for (path, method, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        let scope = op["x-fleetd-scope"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no x-fleetd-scope"));
        let security = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{at}: no security"));
        assert_eq!(
            security.is_empty(),
            scope == "none",
            "{at}: security {security:?} vs scope {scope}"
        );
        for requirement in security {
            for scheme in requirement.as_object().expect("requirement").keys() {
                assert!(
                    doc["components"]["securitySchemes"][scheme].is_object(),
                    "{at}: unknown scheme {scheme}"
                );
            }
        }
        let parsed: Method = method.to_uppercase().parse().expect("method");
        let need = crate::route_access(&parsed, &path)
            .unwrap_or_else(|| panic!("{at}: not in ROUTE_ACCESS"));
        assert_eq!(scope_name(need), scope, "{at}: ROUTE_ACCESS vs document");
        if scope != "none" {
            for status in ["401", "403"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{at}: {status} not documented"
                );
            }
        }

        let needed = level_of(scope);
        for (caller, token, level) in &callers {
            let mut request = Request::builder()
                .method(parsed.clone())
                .uri(fill(&path, "x"));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = router(state.clone())
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let status = response.status();
            let at = format!("{at} with {caller}: {status}");
            if needed > 0 && token.is_none() {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{at}");
                assert_eq!(
                    response
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok()),
                    Some(r#"Bearer realm="fleetd""#),
                    "{at}"
                );
            } else if *level < needed {
                assert_eq!(status, StatusCode::FORBIDDEN, "{at}");
            } else {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{at}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 4 * 36, "only {checked} requests");

    // And the other way round: everything ROUTE_ACCESS lists is documented.
    for (method, path, _) in crate::ROUTE_ACCESS {
        let op = &doc["paths"][*path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is in ROUTE_ACCESS only");
    }
}
