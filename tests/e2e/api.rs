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

/// Metric names (`fleetd_…`, `process_…`) in `text`, with a histogram's
/// `_bucket`, `_sum` and `_count` kept as written.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = ["fleetd_", "process_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // A bare prefix ("process_*" in prose) names no series.
        if !name.ends_with('_') {
            names.insert(name);
        }
    }
    names
}

// Every series the README's Observability section and the Grafana
// dashboard name is in the very first scrape of a fresh node, with its
// HELP text: a healthy node shows 0, never "No data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_has_every_documented_and_dashboard_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = readme
        .find("## Observability")
        .expect("an Observability section");
    let end = start + readme[start..].find("\n## ").expect("a next section");
    let documented = metric_names(&readme[start..end]);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/dashboards/fleetd.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queried = std::collections::BTreeSet::new();
    fn exprs(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(expr)) => out.extend(metric_names(expr)),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    exprs(&dashboard, &mut queried);
    assert!(
        documented.len() > 30 && queried.len() > 10,
        "{documented:?} {queried:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &[]).await;
    let scrape = server.get_text("/metrics").await;
    let has_series = |name: &str| {
        scrape.lines().any(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
    };
    let base = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_owned()
    };
    // Exists only while a certificate is served (0 would read as expired).
    let tls_only = ["fleetd_tls_certificate_not_after_seconds"];
    let mut missing = Vec::new();
    for name in documented.iter().chain(&queried) {
        if tls_only.contains(&name.as_str()) {
            continue;
        }
        let help = format!("# HELP {} ", base(name));
        let series = match name.as_str() {
            // The README names histograms by their base name.
            n if documented.contains(n) && scrape.contains(&format!("{n}_bucket")) => true,
            n => has_series(n),
        };
        if !series || !scrape.contains(&help) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "not in the first scrape (or without HELP): {missing:?}\n{scrape}"
    );
    // The store's size on disk is there from the start: fjall's log at least.
    let wal = crate::util::parse_metric(&scrape, "fleetd_store_disk_bytes{keyspace=\"wal\"}");
    assert!(wal > 0.0, "the embedded store's log takes room: {wal}");
}
