//! Router tests: requests through [`crate::router`] with `oneshot`, against a
//! real [`FjallStore`] in a temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use fleetd_auth::{Access, AccessSettings};
use fleetd_schemas::{
    Alert, AlertDetail, AlertKind, DeviceId, DeviceInfo, DeviceTrip, EnrichedPosition, GeofenceId,
    Principal, RejectReason, RejectionLog, StoredCredential, StoredToken, Trip, VehicleState,
};
use fleetd_store::{
    AlertPage, AlertQuery, AreaQuery, FjallStore, HistoryPage, HistoryQuery, LatestUpdate,
    MemberPage, Store, StoreError, StoredGeofence, TripPage, TripQuery, WriteBatch,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

use crate::{ApiState, router};

/// An access service over `store`; with `allow_anonymous`, every request
/// passes without a token (what the tests written before authentication
/// assume).
pub(crate) async fn open_access(store: Arc<dyn Store>, allow_anonymous: bool) -> Arc<Access> {
    let settings = AccessSettings {
        allow_anonymous,
        ..AccessSettings::default()
    };
    Arc::new(Access::open(store, settings).await.expect("access service"))
}

/// A router over a fresh store; keeps the directory alive.
struct Harness {
    _dir: TempDir,
    store: Arc<FjallStore>,
    state: ApiState,
}

impl Harness {
    async fn new() -> Self {
        Self::with_metrics(PrometheusBuilder::new().build_recorder().handle()).await
    }

    async fn with_metrics(metrics: PrometheusHandle) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(FjallStore::open(dir.path()).expect("open store"));
        let state = ApiState::new(
            store.clone(),
            open_access(store.clone(), true).await,
            Arc::new(RejectionLog::new(16)),
            metrics,
            Arc::new(AtomicBool::new(true)),
        );
        Self {
            _dir: dir,
            store,
            state,
        }
    }

    /// Writes `positions` as one batch: all into history, and each device's
    /// newest one as its latest (the devices must be new).
    async fn write(&self, positions: &[EnrichedPosition]) {
        let mut latest: Vec<EnrichedPosition> = Vec::new();
        for p in positions {
            match latest
                .iter_mut()
                .find(|l| l.report.device_id == p.report.device_id)
            {
                Some(l) if l.report.ts_ms < p.report.ts_ms => *l = p.clone(),
                Some(_) => {}
                None => latest.push(p.clone()),
            }
        }
        let batch = WriteBatch {
            history: positions.to_vec(),
            latest: latest
                .into_iter()
                .map(|position| LatestUpdate {
                    position,
                    previous_area_cell: None,
                })
                .collect(),
            ..WriteBatch::default()
        };
        self.store
            .write_batch(batch.into())
            .await
            .expect("write batch");
    }

    async fn request(&self, method: Method, uri: &str) -> Reply {
        send(router(self.state.clone()), method, uri).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.request(Method::GET, uri).await
    }

    async fn put(&self, uri: &str, body: &Value) -> Reply {
        let body = Body::from(body.to_string());
        send_body(router(self.state.clone()), Method::PUT, uri, body).await
    }

    async fn delete(&self, uri: &str) -> Reply {
        self.request(Method::DELETE, uri).await
    }
}

/// A response, with the body parsed as JSON when it is JSON.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the error shape, status and code; returns the message.
    fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.content_type(), "application/json", "{}", self.text);
        let body = self.json();
        let error = body["error"].as_object().expect("error object");
        assert_eq!(error.len(), 2, "{body}");
        assert_eq!(error["code"], code, "{body}");
        error["message"].as_str().expect("message").to_owned()
    }
}

async fn send(app: Router, method: Method, uri: &str) -> Reply {
    send_body(app, method, uri, Body::empty()).await
}

async fn send_body(app: Router, method: Method, uri: &str, body: Body) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
    }
}

/// A stored-looking position (also the OpenAPI tests' fixture).
pub(crate) fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
    let mut p = fleetd_schemas::test_support::position(device, ts_ms, lat, lon);
    p.report.accuracy_m = Some(4.5);
    p.report.speed_mps = Some(10.0);
    p.report.heading_deg = Some(90.0);
    p.report.seq = Some(ts_ms as u64);
    p.report.received_ms = ts_ms + 100;
    p.heading_derived = true;
    p
}

fn cell_hex(raw: u64) -> String {
    h3o::CellIndex::try_from(raw).expect("cell").to_string()
}

/// Sorted device ids of a vehicle list.
fn ids(vehicles: &Value) -> Vec<String> {
    let mut ids: Vec<String> = vehicles
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["device_id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

// Berlin, Potsdam (≈ 27 km away) and Fiji (next to the antimeridian).
const BERLIN: (f64, f64) = (52.5200, 13.4050);
const POTSDAM: (f64, f64) = (52.3906, 13.0645);
const FIJI: (f64, f64) = (-17.0, 179.9);

async fn fleet() -> Harness {
    let h = Harness::new().await;
    h.write(&[
        position("berlin-1", 1_000, BERLIN.0, BERLIN.1),
        position("berlin-2", 1_000, BERLIN.0 + 0.001, BERLIN.1 + 0.001),
        position("potsdam", 1_000, POTSDAM.0, POTSDAM.1),
        position("fiji", 1_000, FIJI.0, FIJI.1),
        position("alice/phone", 1_000, BERLIN.0, BERLIN.1),
    ])
    .await;
    h
}

#[tokio::test]
async fn latest_vehicle_json() {
    let h = fleet().await;
    let p = position("berlin-1", 1_000, BERLIN.0, BERLIN.1);
    let reply = h.get("/v1/vehicles/berlin-1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(
        reply.json(),
        json!({
            "device_id": "berlin-1", "ts_ms": 1000, "lat": BERLIN.0, "lon": BERLIN.1,
            "accuracy_m": 4.5, "speed_mps": 10.0, "heading_deg": 90.0, "seq": 1000,
            "speed_derived": false, "heading_derived": true, "received_ms": 1100,
            "h3": {"7": cell_hex(p.h3.area), "9": cell_hex(p.h3.detail)},
        })
    );
    // OwnTracks ids carry a slash, percent-encoded in the path.
    let reply = h.get("/v1/vehicles/alice%2Fphone").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["device_id"], "alice/phone");
}

#[tokio::test]
async fn unknown_and_invalid_vehicles() {
    let h = fleet().await;
    let message = h
        .get("/v1/vehicles/nobody")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("nobody"), "{message}");

    let message = h
        .get("/v1/vehicles/bad%20id")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(message.contains("vehicle id"), "{message}");

    // Invalid UTF-8 in the path: axum's own rejection, as our JSON.
    h.get("/v1/vehicles/%FF")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    let message = h
        .get("/v1/vehicles/nobody/track")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("nobody"), "{message}");
    h.get("/v1/vehicles/a%20b/track")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let h = Harness::new().await;
    let message = h
        .get("/v2/nothing")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(message.contains("/v2/nothing"), "{message}");
    h.get("/v1/vehicles/x/track/more")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    let reply = h.request(Method::POST, "/v1/vehicles/x").await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = reply.headers.get(ALLOW).and_then(|v| v.to_str().ok());
    assert!(allow.is_some_and(|a| a.contains("GET")), "{allow:?}");
    h.request(Method::DELETE, "/healthz")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn area_parameter_errors() {
    let h = Harness::new().await;
    let cases = [
        ("", "exactly one of bbox, near or cell"),
        ("limit=5", "exactly one of bbox, near or cell"),
        ("bbox=1,2,3,4&near=1,2&radius_m=5", "bbox and near"),
        ("near=1,2&radius_m=5&cell=87194e69dffffff", "near and cell"),
        ("bbox=1,2,3", "bbox"),
        ("bbox=x,2,3,4", "bbox minLon"),
        ("bbox=1,NaN,3,4", "bbox minLat"),
        ("bbox=1,2,inf,4", "bbox maxLon"),
        ("bbox=-181,2,3,4", "bbox minLon"),
        ("bbox=1,-91,3,4", "bbox minLat"),
        ("bbox=1,2,3,90.5", "bbox maxLat"),
        ("bbox=1,5,3,4", "minLat"),
        ("near=1", "near"),
        ("near=abc,1&radius_m=1", "near lat"),
        ("near=95,1&radius_m=1", "near lat"),
        ("near=1,200&radius_m=1", "near lon"),
        ("near=1,2", "radius_m"),
        ("near=1,2&radius_m=0", "radius_m"),
        ("near=1,2&radius_m=-5", "radius_m"),
        ("near=1,2&radius_m=1000000.5", "radius_m"),
        ("near=1,2&radius_m=NaN", "radius_m"),
        ("cell=87194e69dffffff&radius_m=5", "radius_m"),
        ("cell=nothex", "cell"),
        ("cell=1", "cell"),
        ("cell=87194e69dffffff&limit=0", "limit"),
        ("cell=87194e69dffffff&limit=10001", "limit"),
        ("cell=87194e69dffffff&limit=many", "limit"),
        ("cell=87194e69dffffff&format=kml", "format"),
        // Duplicate parameters fail in axum's `Query` itself.
        ("cell=87194e69dffffff&limit=1&limit=2", "limit"),
    ];
    for (query, param) in cases {
        let uri = format!("/v1/vehicles?{query}");
        let message = h
            .get(&uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            message.contains(param),
            "{uri}: {message:?} lacks {param:?}"
        );
    }
}

#[tokio::test]
async fn track_and_rejection_parameter_errors() {
    let h = fleet().await;
    let cases = [
        ("from=yesterday", "from"),
        ("to=1.5", "to"),
        ("from=10&to=9", "from"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("format=shp", "format"),
        ("cursor=%00garbage", "cursor"),
    ];
    for (query, param) in cases {
        let uri = format!("/v1/vehicles/berlin-1/track?{query}");
        let message = h
            .get(&uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(
            message.contains(param),
            "{uri}: {message:?} lacks {param:?}"
        );
    }
    for query in ["limit=0", "limit=1001", "limit=x"] {
        let message = h
            .get(&format!("/v1/rejections?{query}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(message.contains("limit"), "{query}: {message:?}");
    }
}

#[tokio::test]
async fn vehicles_in_bbox_near_and_cell() {
    let h = fleet().await;

    let reply = h.get("/v1/vehicles?bbox=13.0,52.3,13.5,52.6").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(
        ids(&body["vehicles"]),
        ["alice/phone", "berlin-1", "berlin-2", "potsdam"]
    );
    assert_eq!(body["count"], 4);
    assert_eq!(body["truncated"], false);
    assert_eq!(body.as_object().map(|o| o.len()), Some(3));
    let berlin = body["vehicles"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["device_id"] == "berlin-1"))
        .expect("berlin-1");
    assert_eq!(berlin["lat"], BERLIN.0);
    assert!(berlin["h3"]["7"].is_string());

    // Across the antimeridian: min_lon > max_lon.
    let body = h.get("/v1/vehicles?bbox=179,-18,-179,-16").await.json();
    assert_eq!(ids(&body["vehicles"]), ["fiji"]);

    // 5 km around Berlin: not Potsdam.
    let uri = format!("/v1/vehicles?near={},{}&radius_m=5000", BERLIN.0, BERLIN.1);
    let body = h.get(&uri).await.json();
    assert_eq!(
        ids(&body["vehicles"]),
        ["alice/phone", "berlin-1", "berlin-2"]
    );
    let uri = format!("/v1/vehicles?near={},{}&radius_m=50000", BERLIN.0, BERLIN.1);
    assert_eq!(h.get(&uri).await.json()["count"], 4);

    let cell = cell_hex(position("x", 0, FIJI.0, FIJI.1).h3.area);
    let body = h.get(&format!("/v1/vehicles?cell={cell}")).await.json();
    assert_eq!(ids(&body["vehicles"]), ["fiji"]);

    // An area with nobody in it.
    let body = h.get("/v1/vehicles?bbox=0,0,1,1").await.json();
    assert_eq!(
        body,
        json!({"vehicles": [], "count": 0, "truncated": false})
    );
}

#[tokio::test]
async fn area_limit_truncates() {
    let h = fleet().await;
    let body = h
        .get("/v1/vehicles?bbox=13.0,52.3,13.5,52.6&limit=3")
        .await
        .json();
    assert_eq!(body["count"], 3);
    assert_eq!(body["vehicles"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["truncated"], true);
    // Exactly as many as the limit: not truncated.
    let body = h
        .get("/v1/vehicles?bbox=13.0,52.3,13.5,52.6&limit=4")
        .await
        .json();
    assert_eq!(body["count"], 4);
    assert_eq!(body["truncated"], false);
}

#[tokio::test]
async fn vehicles_as_geojson() {
    let h = fleet().await;
    let reply = h
        .get("/v1/vehicles?bbox=179,-18,-179,-16&format=geojson")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type(), "application/geo+json");
    let body = reply.json();
    assert_eq!(body["type"], "FeatureCollection");
    assert_eq!(body["count"], 1);
    assert_eq!(body["truncated"], false);
    let features = body["features"].as_array().expect("features");
    assert_eq!(features.len(), 1);
    let feature = &features[0];
    assert_eq!(feature["type"], "Feature");
    assert_eq!(
        feature["geometry"],
        json!({"type": "Point", "coordinates": [FIJI.1, FIJI.0]})
    );
    let props = feature["properties"].as_object().expect("properties");
    assert_eq!(props["device_id"], "fiji");
    assert!(!props.contains_key("lat") && !props.contains_key("lon"));
    assert!(props.contains_key("h3") && props.contains_key("ts_ms"));
}

/// Writes one device's track of `n` points, one per second from `t0`.
async fn track_fixture(h: &Harness, device: &str, t0: i64, n: i64) {
    let points: Vec<_> = (0..n)
        .map(|i| position(device, t0 + i * 1000, BERLIN.0 + i as f64 * 1e-4, BERLIN.1))
        .collect();
    h.write(&points).await;
}

#[tokio::test]
async fn track_pages_with_cursor() {
    let h = Harness::new().await;
    track_fixture(&h, "truck", 10_000, 5).await;

    let reply = h.get("/v1/vehicles/truck/track?limit=2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["device_id"], "truck");
    let ts = |body: &Value| -> Vec<i64> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["ts_ms"].as_i64().expect("ts"))
            .collect()
    };
    assert_eq!(ts(&body), [10_000, 11_000]);
    assert!(body["items"][0]["lat"].is_number());

    let mut seen = ts(&body);
    let mut body = body;
    while let Some(cursor) = body["next_cursor"].as_str() {
        let uri = format!("/v1/vehicles/truck/track?limit=2&cursor={}", encode(cursor));
        body = h.get(&uri).await.json();
        seen.extend(ts(&body));
    }
    assert_eq!(seen, [10_000, 11_000, 12_000, 13_000, 14_000]);
    assert!(body["next_cursor"].is_null());
    assert_eq!(body.as_object().map(|o| o.len()), Some(3));

    // A time window, inclusive at both ends.
    let body = h
        .get("/v1/vehicles/truck/track?from=11000&to=13000")
        .await
        .json();
    assert_eq!(ts(&body), [11_000, 12_000, 13_000]);
    assert!(body["next_cursor"].is_null());
}

#[tokio::test]
async fn track_as_geojson() {
    let h = Harness::new().await;
    track_fixture(&h, "truck", 10_000, 3).await;
    let reply = h
        .get("/v1/vehicles/truck/track?format=geojson&limit=2")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type(), "application/geo+json");
    let body = reply.json();
    assert_eq!(body["type"], "FeatureCollection");
    assert_eq!(body["device_id"], "truck");
    assert!(body["next_cursor"].is_string(), "{body}");
    let features = body["features"].as_array().expect("features");
    assert_eq!(features.len(), 2);
    assert_eq!(
        features[0]["geometry"]["coordinates"],
        json!([BERLIN.1, BERLIN.0])
    );
    assert_eq!(features[1]["properties"]["ts_ms"], 11_000);

    let body = h
        .get("/v1/vehicles/truck/track?format=geojson")
        .await
        .json();
    assert!(body["next_cursor"].is_null(), "{body}");
    assert_eq!(body["features"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn rejections_newest_first() {
    let h = Harness::new().await;
    for i in 0..3 {
        h.state.rejections.record(
            RejectReason::BadCoordinates,
            "fleet/x/pos",
            Some("x"),
            format!("sample {i}"),
            b"{}",
            i,
        );
    }
    let body = h.get("/v1/rejections?limit=2").await.json();
    let rejections = body["rejections"].as_array().expect("rejections");
    assert_eq!(rejections.len(), 2);
    assert_eq!(rejections[0]["detail"], "sample 2");
    assert_eq!(rejections[0]["reason"], "bad_coordinates");
    assert_eq!(rejections[1]["detail"], "sample 1");
    assert_eq!(
        h.get("/v1/rejections").await.json()["rejections"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::new().await;
    let reply = h.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));

    let reply = h.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json(), json!({"status": "ready"}));

    h.state.ready.store(false, Ordering::Release);
    let message = h
        .get("/readyz")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert!(message.contains("processor"), "{message}");
}

/// A backend that fails every call, for the 5xx paths.
struct BrokenStore;

#[async_trait::async_trait]
impl Store for BrokenStore {
    async fn write_batch(&self, _: std::sync::Arc<WriteBatch>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn latest(&self, _: &DeviceId) -> Result<Option<EnrichedPosition>, StoreError> {
        Err(StoreError::Corrupt("secret detail".into()))
    }
    async fn latest_in_area(
        &self,
        _: &AreaQuery,
        _: usize,
    ) -> Result<Vec<EnrichedPosition>, StoreError> {
        Err(StoreError::Unavailable("node 10.0.0.7 unreachable".into()))
    }
    async fn all_latest(&self) -> Result<Vec<EnrichedPosition>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn history(&self, _: &DeviceId, _: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn ready(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn vehicle_state(&self, _: &DeviceId) -> Result<Option<VehicleState>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn all_vehicle_states(&self) -> Result<Vec<(DeviceId, VehicleState)>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn trips(&self, _: &DeviceId, _: &TripQuery) -> Result<TripPage, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn trip(&self, _: &DeviceId, _: i64) -> Result<Option<Trip>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn alerts(&self, _: &AlertQuery) -> Result<AlertPage, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_device(&self, _: &DeviceId, _: &DeviceInfo) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn device(&self, _: &DeviceId) -> Result<Option<DeviceInfo>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_device(&self, _: &DeviceId) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn all_devices(&self) -> Result<Vec<(DeviceId, DeviceInfo)>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_geofence(&self, _: &StoredGeofence) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn geofence(&self, _: &GeofenceId) -> Result<Option<StoredGeofence>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_geofence(&self, _: &GeofenceId) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn all_geofences(&self) -> Result<Vec<StoredGeofence>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn geofence_members(
        &self,
        _: &GeofenceId,
        _: Option<&DeviceId>,
        _: usize,
    ) -> Result<MemberPage, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_credentials(&self, _: &[StoredCredential]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn credential(&self, _: &Principal) -> Result<Option<StoredCredential>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_credential(&self, _: &Principal) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_token(&self, _: &StoredToken) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn all_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_token(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn put_webhook(&self, _: &fleetd_schemas::StoredWebhook) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn all_webhooks(&self) -> Result<Vec<fleetd_schemas::StoredWebhook>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn delete_webhook(&self, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn store_failures_hide_their_cause() {
    // The access service's tokens come from a working store: it could not
    // open over a broken one.
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Arc::new(FjallStore::open(dir.path()).expect("open store"));
    let state = ApiState::new(
        Arc::new(BrokenStore),
        open_access(tokens, true).await,
        Arc::new(RejectionLog::new(1)),
        PrometheusBuilder::new().build_recorder().handle(),
        Arc::new(AtomicBool::new(true)),
    );
    let app = router(state);
    let message = send(app.clone(), Method::GET, "/v1/vehicles/x")
        .await
        .assert_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!message.contains("secret"), "{message}");
    let message = send(app.clone(), Method::GET, "/v1/vehicles?bbox=0,0,1,1")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(!message.contains("10.0.0.7"), "{message}");
    let message = send(app, Method::GET, "/readyz")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert!(message.contains("store"), "{message}");
    assert!(!message.contains("processor"), "{message}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let recorder = PrometheusBuilder::new().build_recorder();
    // A thread-local recorder: the current-thread test runtime runs every
    // handler on this thread, and no global recorder is installed.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let h = Harness::with_metrics(recorder.handle()).await;
    h.get("/v1/vehicles/a").await;
    h.get("/v1/vehicles/b").await;
    h.get("/no/such/route").await;

    let reply = h.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "text/plain; version=0.0.4");
    let text = &reply.text;
    assert!(
        text.contains(r#"fleetd_http_requests_total{route="/v1/vehicles/{id}",status="404"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"fleetd_http_requests_total{route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("fleetd_http_request_seconds"), "{text}");
    assert!(
        !text.contains("/v1/vehicles/a"),
        "raw paths leak into labels: {text}"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_requests_time_out_as_json() {
    let app = Router::new()
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(1),
            crate::middleware::timeout,
        ));
    send(app, Method::GET, "/slow")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
}

#[tokio::test]
async fn serve_stops_when_cancelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::serve(
        listener,
        h.state.clone(),
        crate::ConnectionLimits::default(),
        shutdown.clone(),
    ));

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve stops promptly")
        .expect("task");
}

/// Serves the harness's router with `limits` on a fresh loopback port.
async fn serve_limited(
    h: &Harness,
    limits: crate::ConnectionLimits,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::serve(
        listener,
        h.state.clone(),
        limits,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Reads until the peer closes; the time it took and what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> (Duration, String) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection");
    (
        started.elapsed(),
        String::from_utf8_lossy(&got).into_owned(),
    )
}

#[tokio::test]
async fn connections_that_send_no_complete_head_are_closed() {
    use tokio::io::AsyncWriteExt;

    let h = Harness::new().await;
    let limits = crate::ConnectionLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        max_connections: 100,
    };
    let (addr, _shutdown) = serve_limited(&h, limits).await;

    // Never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (took, got) = read_until_closed(&mut silent).await;
    assert!(got.is_empty(), "{got}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // Sends its head one byte every 100 ms: never done within 300 ms.
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let drip = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });
    let mut slow = drip.await.expect("drip");
    let (_, got) = read_until_closed(&mut slow).await;
    assert!(!got.contains("200 OK"), "{got}");

    // A kept-alive connection: served, then closed after the idle timeout,
    // not the header-read one.
    let mut kept = tokio::net::TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let (took, got) = read_until_closed(&mut kept).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    use tokio::io::AsyncWriteExt;

    let h = Harness::new().await;
    let limits = crate::ConnectionLimits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 2,
    };
    let (addr, shutdown) = serve_limited(&h, limits).await;
    let _first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Accepted in order: the third waits behind the two held ones.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (took, got) = read_until_closed(&mut third).await;
    assert!(got.is_empty(), "over the cap: {got}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Once one closes, new connections are served again.
    drop(_first);
    let served = async {
        loop {
            let mut next = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = next
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await;
            let (_, got) = read_until_closed(&mut next).await;
            if got.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("served after a slot freed");
    // Shutdown waits for held connections only as long as they are idle.
    shutdown.cancel();
}

/// Percent-encodes a cursor for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn device_registry_crud_and_validation() {
    let h = Harness::new().await;
    let put = |body: &'static str| {
        send_body(
            router(h.state.clone()),
            Method::PUT,
            "/v1/devices/truck-7",
            Body::from(body),
        )
    };
    let reply = put(r#"{"name": "Truck 7", "class": "truck", "speed_limit_kmh": 80, "tags": {"depot": "north"}}"#).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["device_id"], "truck-7");
    assert_eq!(body["speed_limit_kmh"], 80.0);
    assert_eq!(body["tags"]["depot"], "north");
    // The processor's cache sees it at once.
    let cached = h
        .state
        .registry
        .get(&DeviceId::parse("truck-7").expect("id"));
    assert_eq!(cached.and_then(|i| i.speed_limit_kmh), Some(80.0));
    let reply = put(r#"{"name": "Truck 7b"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = h.get("/v1/devices/truck-7").await;
    assert_eq!(reply.json()["name"], "Truck 7b");
    assert!(reply.json().get("speed_limit_kmh").is_none());
    let reply = h.get("/v1/devices").await;
    assert_eq!(reply.json()["count"], 1);

    for (body, needle) in [
        (r#"{"speed_limit_kmh": -5}"#, "speed_limit_kmh"),
        (r#"{"class": "big truck"}"#, "class"),
        (r#"{"nmae": "typo"}"#, "nmae"),
        (r#"{"name": "#, "invalid JSON"),
        ("", "empty"),
        (r#"{"tags": {"a": 5}}"#, "invalid JSON"),
    ] {
        let message = put(body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(message.contains(needle), "{body}: {message}");
    }
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    send_body(
        router(h.state.clone()),
        Method::PUT,
        "/v1/devices/truck-7",
        Body::from(huge),
    )
    .await
    .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    send_body(
        router(h.state.clone()),
        Method::PUT,
        "/v1/devices/bad%20id",
        Body::from("{}"),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    let reply = h.request(Method::DELETE, "/v1/devices/truck-7").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    h.request(Method::DELETE, "/v1/devices/truck-7")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/devices/truck-7")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    assert!(h.state.registry.is_empty());
}

#[tokio::test]
async fn alerts_and_trips_are_served_and_validated() {
    let h = Harness::new().await;
    let p = position("car-1", 1_700_000_000_000, 52.52, 13.405);
    h.write(std::slice::from_ref(&p)).await;
    let trip = Trip {
        start_ts_ms: 1_699_999_000_000,
        start: (52.5, 13.4),
        end_ts_ms: Some(1_699_999_600_000),
        end: Some((52.52, 13.405)),
        last_ts_ms: 1_699_999_600_000,
        last: (52.52, 13.405),
        distance_m: 4_200.0,
        max_speed_mps: 16.0,
        points: 600,
    };
    let open = Trip {
        start_ts_ms: 1_699_999_900_000,
        end_ts_ms: None,
        end: None,
        ..trip.clone()
    };
    let alert = Alert::new(
        AlertKind::Overspeed,
        DeviceId::parse("car-1").expect("id"),
        None,
        1_699_999_300_000,
        (52.51, 13.40),
        AlertDetail {
            speed_kmh: Some(97.0),
            limit_kmh: Some(80.0),
            ..AlertDetail::default()
        },
    );
    let state = VehicleState {
        ts_ms: p.report.ts_ms,
        odometer_m: 9_000.0,
        trip: Some(Box::new(open.clone())),
        ..VehicleState::default()
    };
    h.store
        .write_batch(
            WriteBatch {
                states: vec![(p.report.device_id.clone(), state)],
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

    let body = h.get("/v1/vehicles/car-1").await.json();
    assert_eq!(body["odometer_m"], 9000.0);
    assert_eq!(body["trip"]["open"], true);

    let body = h.get("/v1/vehicles/car-1/trips").await.json();
    let trips = body["trips"].as_array().expect("trips");
    assert_eq!(trips.len(), 2, "{body}");
    assert_eq!(trips[0]["open"], true, "open trip first");
    assert_eq!(trips[1]["distance_m"], 4200.0);
    assert_eq!(trips[1]["duration_s"], 600.0);
    assert_eq!(trips[1]["avg_speed_mps"], 7.0);
    let track_url = trips[1]["track"].as_str().expect("track url").to_owned();
    let reply = h.get(&track_url).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = h.get("/v1/vehicles/car-1/trips/1699999000000").await;
    assert_eq!(reply.json()["end_ts_ms"], 1_699_999_600_000_i64);
    h.get("/v1/vehicles/car-1/trips/123")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/vehicles/car-1/trips/abc")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.get("/v1/vehicles/nobody/trips")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    let body = h.get("/v1/alerts?kind=overspeed&device=car-1").await.json();
    assert_eq!(body["alerts"][0]["id"], alert.id.as_str());
    assert_eq!(body["alerts"][0]["kind"], "overspeed");
    assert_eq!(body["alerts"][0]["detail"]["limit_kmh"], 80.0);
    let body = h.get("/v1/alerts?kind=enter").await.json();
    assert_eq!(body["alerts"], json!([]));
    for uri in [
        "/v1/alerts?kind=speeding",
        "/v1/alerts?since=yesterday",
        "/v1/alerts?since=10&until=5",
        "/v1/alerts?limit=0",
        "/v1/alerts?cursor=garbage",
        "/v1/alerts?geofence=a/b",
        "/v1/vehicles/car-1/trips?limit=5000",
        "/v1/vehicles/car-1/track?filtered=maybe",
    ] {
        h.get(uri)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn geofence_crud_validation_and_membership() {
    let h = Harness::new().await;
    let square = json!({
        "type": "Feature",
        "properties": {"name": "Depot", "dwell_s": 60, "team": "night"},
        "geometry": {"type": "Polygon", "coordinates": [[[13.39, 52.51], [13.41, 52.51], [13.41, 52.52], [13.39, 52.52], [13.39, 52.51]]]}
    });
    let reply = h.put("/v1/geofences/depot", &square).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["id"], "depot");
    assert_eq!(body["properties"]["team"], "night");
    assert!(body["updated_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(
        h.put("/v1/geofences/depot", &square).await.status,
        StatusCode::OK
    );
    let circle = json!({"center": [13.4, 52.5], "radius_m": 50.0});
    assert_eq!(
        h.put("/v1/geofences/a-circle", &circle).await.status,
        StatusCode::CREATED
    );
    assert_eq!(h.state.geofences.len(), 2, "the processor's index follows");

    let reply = h.get("/v1/geofences/depot").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["geometry"]["type"], "Polygon");
    let list = h.get("/v1/geofences?limit=1").await.json();
    assert_eq!(list["geofences"][0]["id"], "a-circle");
    assert_eq!(list["total"], 2);
    let next = list["next_cursor"].as_str().expect("cursor").to_owned();
    let list = h
        .get(&format!("/v1/geofences?limit=1&cursor={next}"))
        .await
        .json();
    assert_eq!(list["geofences"][0]["id"], "depot");
    assert_eq!(list["next_cursor"], Value::Null);

    // Every bad input is a 400 that says what is wrong.
    let cases = [
        (
            json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}),
            "intersects itself",
        ),
        (
            json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}),
            "not closed",
        ),
        (
            json!({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}),
            "position",
        ),
        (
            json!({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]}),
            "out of range",
        ),
        (
            json!({"type": "Point", "coordinates": [0, 0]}),
            "unsupported geometry",
        ),
        (json!({"center": [0, 0], "radius_m": -5}), "radius_m"),
        (json!([1, 2]), "JSON object"),
    ];
    for (body, expected) in cases {
        let message = h
            .put("/v1/geofences/bad", &body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(message.contains(expected), "{body}: {message}");
    }
    h.put("/v1/geofences/bad%20id", &circle)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    h.get("/v1/geofences/bad")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/geofences?limit=0")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");

    // Membership as the processor writes it.
    let depot = GeofenceId::parse("depot").expect("id");
    let mut state = VehicleState::default();
    state.fences.members.push(fleetd_schemas::Membership {
        fence: depot.clone(),
        entered_ms: 1_000,
        outside_since_ms: None,
        dwell_fired: false,
    });
    h.write(&[position("car-1", 1_000, 52.515, 13.4)]).await;
    h.store
        .write_batch(
            WriteBatch {
                states: vec![(DeviceId::parse("car-1").expect("id"), state)],
                memberships: vec![fleetd_schemas::MembershipChange {
                    fence: depot.clone(),
                    device: DeviceId::parse("car-1").expect("id"),
                    ts_ms: 1_000,
                    entered: true,
                }],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    let inside = h.get("/v1/geofences/depot/vehicles").await.json();
    assert_eq!(
        inside["vehicles"],
        json!([{"device_id": "car-1", "entered_ms": 1000}])
    );
    let fences = h.get("/v1/vehicles/car-1/geofences").await.json();
    assert_eq!(
        fences["geofences"],
        json!([{"geofence_id": "depot", "name": "Depot", "entered_ms": 1000}])
    );
    h.get("/v1/geofences/nope/vehicles")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/vehicles/nobody/geofences")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    // Deleting ends the membership everywhere.
    assert_eq!(
        h.delete("/v1/geofences/depot").await.status,
        StatusCode::NO_CONTENT
    );
    h.delete("/v1/geofences/depot")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    h.get("/v1/geofences/depot/vehicles")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let fences = h.get("/v1/vehicles/car-1/geofences").await.json();
    assert_eq!(fences["count"], 0);
    assert_eq!(h.state.geofences.len(), 1);
}
