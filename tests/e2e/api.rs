//! HTTP errors over a real socket: JSON bodies with the right statuses.

use crate::util::Fleetd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_with_the_right_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    let cases = [
        ("/v1/vehicles/nobody", 404, "not_found"),
        ("/v1/vehicles/bad%20id", 400, "bad_request"),
        ("/v1/vehicles?bbox=1,2,3", 400, "bad_request"),
        ("/v1/vehicles?bbox=0,95,1,96", 400, "bad_request"),
        ("/v1/vehicles?near=52.5,13.4", 400, "bad_request"),
        (
            "/v1/vehicles?near=52.5,13.4&radius_m=-5",
            400,
            "bad_request",
        ),
        ("/v1/vehicles?cell=zzz", 400, "bad_request"),
        ("/v1/vehicles", 400, "bad_request"),
        (
            "/v1/vehicles?bbox=0,0,1,1&cell=871f1d489ffffff",
            400,
            "bad_request",
        ),
        ("/v1/vehicles/x/track?from=10&to=5", 400, "bad_request"),
        ("/v1/vehicles/x/track?limit=abc", 400, "bad_request"),
        ("/v1/nothing-here", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let (got, body) = server.get(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    let r = server
        .client
        .delete(format!("{}/v1/vehicles/x", server.http))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"]["code"].is_string(), "{body}");

    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = server.get("/readyz").await;
    assert_eq!(status, 200);
    let metrics = server.get_text("/metrics").await;
    for series in [
        "fleetd_rejected_total{reason=\"malformed\"}",
        "fleetd_http_requests_total",
    ] {
        assert!(
            metrics.contains(series),
            "/metrics lacks {series}:\n{metrics}"
        );
    }
}
