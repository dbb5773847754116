//! Track exports through the real binary: GPX validated against the GPX
//! 1.1 schema and KML against OGC KML 2.2 (xmllint; the schemas as Debian
//! ships them, fetched by scripts/test), GPX read back by gpxpy (PyPI),
//! CSV and GeoJSON parsed, a trip's export, a bad format refused; a day at 1 Hz
//! streams (its first bytes come long before its last) without the
//! server holding it.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::util::{Fleetd, now_ms, rss_bytes, stored_ts};

/// The GPX 1.1 schema (TopoGrafix), as Debian's pytrainer ships it.
const GPX_XSD: &str = "Topografix_gpx11.xsd";
/// The OGC KML 2.2 schema, from the same package.
const KML_XSD: &str = "ogckml22.xsd";

/// The Python with gpxpy that scripts/test makes.
fn python() -> String {
    std::env::var("FLEETD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FLEETD_TEST_PYTHON is not set: run scripts/test, which installs gpxpy for this test"
        )
    })
}

/// Posts `fixes` (fleetd JSON positions) in requests of 1,000.
async fn post_all(server: &Fleetd, fixes: &[Value]) {
    for chunk in fixes.chunks(1000) {
        let r = server
            .client
            .post(format!("{}/v1/positions", server.http))
            .json(&chunk)
            .send()
            .await
            .expect("POST /v1/positions");
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
}

fn fix(device: &str, ts_ms: i64, i: i64) -> Value {
    json!({
        "device_id": device, "ts_ms": ts_ms,
        "lat": 52.5 + i as f64 * 1e-4, "lon": 13.4,
        "speed_mps": 11.0, "heading_deg": 0.0, "altitude_m": 30.0 + i as f64 * 0.5,
        "accuracy_m": 5.0
    })
}

async fn download(server: &Fleetd, path: &str) -> (u16, String, String) {
    let r = server
        .client
        .get(format!("{}{path}", server.http))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    let media = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, media, r.text().await.expect("body"))
}

/// Writes `text` to `dir/name` and validates it with `xmllint` against
/// `schema` (a file of the schemas scripts/test fetches: GPX 1.1, KML 2.2).
fn valid(text: &str, dir: &std::path::Path, name: &str, schema: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write export");
    let schemas = std::env::var("FLEETD_TEST_SCHEMAS").unwrap_or_else(|_| {
        panic!("FLEETD_TEST_SCHEMAS is not set: run scripts/test, which fetches the GPX and KML schemas")
    });
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(std::path::Path::new(&schemas).join(schema))
        .arg(&path)
        .output()
        .expect("xmllint is installed (scripts/test installs libxml2-utils)");
    assert!(
        out.status.success(),
        "{name} does not validate against {schema}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpx_csv_and_kml_exports_read_back_with_third_party_parsers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "200"]).await;
    // 150 fixes a second apart, a 10-minute gap, 150 more.
    let base = now_ms() - 3 * 3_600_000;
    let ts = |i: i64| base + i * 1000 + if i >= 150 { 600_000 } else { 0 };
    let fixes: Vec<Value> = (0..300).map(|i| fix("exp-1", ts(i), i)).collect();
    post_all(&server, &fixes).await;
    let stored = server
        .wait_for(Duration::from_secs(20), || async {
            let n = stored_ts(&server, "exp-1", base).await.len();
            (n == 300).then_some(n)
        })
        .await;
    assert_eq!(stored, Some(300), "stored; log:\n{}", server.log());

    let range = format!("from={base}&to={}", ts(299));
    let (status, media, gpx) = download(
        &server,
        &format!("/v1/vehicles/exp-1/track?format=gpx&{range}"),
    )
    .await;
    assert_eq!(
        (status, media.as_str()),
        (200, "application/gpx+xml"),
        "{gpx}"
    );
    let file = valid(&gpx, dir.path(), "exp-1.gpx", GPX_XSD);
    let script = r#"
import json, sys, gpxpy
g = gpxpy.parse(open(sys.argv[1]))
t = g.tracks[0]
p = t.segments[0].points[0]
print(json.dumps({
  "tracks": len(g.tracks), "name": t.name,
  "segments": [len(s.points) for s in t.segments],
  "first": [p.latitude, p.longitude, p.elevation, int(p.time.timestamp() * 1000)],
  "last_time": int(t.segments[-1].points[-1].time.timestamp() * 1000),
  "hdop": p.horizontal_dilution,
}))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "gpxpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).expect("gpxpy summary");
    assert_eq!(read["tracks"], 1, "{read}");
    assert_eq!(read["name"], "exp-1", "{read}");
    assert_eq!(
        read["segments"],
        json!([150, 150]),
        "a segment per gap: {read}"
    );
    assert_eq!(read["first"], json!([52.5, 13.4, 30.0, ts(0)]), "{read}");
    assert_eq!(read["last_time"], ts(299), "{read}");
    assert_eq!(read["hdop"], 5.0, "{read}");
    assert!(
        gpx.contains("<gpxtpx:speed>11</gpxtpx:speed>"),
        "speed extension"
    );

    let (status, media, csv) = download(
        &server,
        &format!("/v1/vehicles/exp-1/track?format=csv&{range}"),
    )
    .await;
    assert_eq!((status, media.as_str()), (200, "text/csv; charset=utf-8"));
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 301, "a header and a row per fix");
    assert_eq!(rows[0][..5], ["device_id", "ts_ms", "time", "lat", "lon"]);
    assert_eq!(rows[1][0], "exp-1");
    assert_eq!(rows[1][1], ts(0).to_string());
    assert_eq!((rows[1][3], rows[1][4]), ("52.5", "13.4"));
    assert!(
        rows.iter().all(|r| r.len() == 10),
        "every row has every column"
    );

    let (status, _, kml) = download(
        &server,
        &format!("/v1/vehicles/exp-1/track?format=kml&{range}"),
    )
    .await;
    assert_eq!(status, 200);
    let file = valid(&kml, dir.path(), "exp-1.kml", KML_XSD);
    let count = |xpath: &str| {
        let out = Command::new("xmllint")
            .args(["--xpath", xpath])
            .arg(&file)
            .output()
            .expect("xmllint");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        count("count(//*[local-name()='Placemark'])"),
        "2",
        "a line per segment"
    );
    let coordinates = count("string(//*[local-name()='coordinates'][1])");
    assert_eq!(
        coordinates.split_whitespace().count(),
        150,
        "{coordinates:.200}"
    );
    assert_eq!(coordinates.split_whitespace().next(), Some("13.4,52.5,30"));

    // GeoJSON, a LineString per segment.
    let (status, media, lines) = download(
        &server,
        &format!("/v1/vehicles/exp-1/track?format=geojson-lines&{range}"),
    )
    .await;
    assert_eq!((status, media.as_str()), (200, "application/geo+json"));
    let lines: Value = serde_json::from_str(&lines).expect("GeoJSON");
    let features = lines["features"].as_array().expect("features");
    assert_eq!(features.len(), 2, "{lines:.300}");
    for (k, f) in features.iter().enumerate() {
        assert_eq!(f["geometry"]["type"], "LineString");
        assert_eq!(
            f["geometry"]["coordinates"].as_array().map(Vec::len),
            Some(150)
        );
        assert_eq!(f["properties"]["points"], 150);
        assert_eq!(f["properties"]["device_id"], "exp-1");
        let first = (k * 150) as i64;
        assert_eq!(f["properties"]["start_ts_ms"], ts(first));
        assert_eq!(f["properties"]["end_ts_ms"], ts(first + 149));
    }
    let first: Vec<f64> = features[0]["geometry"]["coordinates"][0]
        .as_array()
        .expect("a position")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(first, [13.4, 52.5, 30.0]);

    // One trip's export.
    let (_, trips) = server.get("/v1/vehicles/exp-1/trips").await;
    let trip = trips["trips"][0]["trip_id"]
        .as_str()
        .expect("a trip")
        .to_owned();
    let (status, _, trip_gpx) = download(
        &server,
        &format!("/v1/vehicles/exp-1/trips/{trip}/track?format=gpx"),
    )
    .await;
    assert_eq!(status, 200);
    valid(&trip_gpx, dir.path(), "trip.gpx", GPX_XSD);
    assert!(trip_gpx.contains("<trkpt "), "{trip_gpx:.300}");

    let (status, body) = server.get("/v1/vehicles/exp-1/track?format=shp").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpx")),
        "{body}"
    );
}

// A day at 1 Hz: the export arrives as a stream (first bytes long before
// the last), every fix once, and the server does not hold the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_long_gpx_export_streams() {
    const DAY: i64 = 86_400;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "500"]).await;
    let base = now_ms() - 2 * DAY * 1000;
    let fixes: Vec<Value> = (0..DAY)
        .map(|i| fix("day-1", base + i * 1000, i % 1000))
        .collect();
    post_all(&server, &fixes).await;
    let stored = server
        .wait_for(Duration::from_secs(60), || async {
            let n = server.metric("fleetd_positions_stored_total").await;
            (n >= DAY as f64).then_some(n)
        })
        .await;
    assert!(stored.is_some(), "a day stored; log:\n{}", server.log());

    let before = rss_bytes(server.pid());
    let started = Instant::now();
    let r = server
        .client
        .get(format!(
            "{}/v1/vehicles/day-1/track?format=gpx&from={base}&to={}",
            server.http,
            base + DAY * 1000
        ))
        .send()
        .await
        .expect("GET gpx");
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut first_at, mut bytes, mut points, mut peak) = (None, 0usize, 0usize, before);
    let mut tail = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        first_at.get_or_insert_with(|| started.elapsed());
        bytes += chunk.len();
        // Count `<trkpt ` across chunk boundaries.
        tail.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&tail);
        points += text.matches("<trkpt ").count();
        let keep = tail.len().saturating_sub(6);
        tail.drain(..keep);
        peak = peak.max(rss_bytes(server.pid()));
    }
    let total = started.elapsed();
    let first = first_at.expect("some bytes");
    let grew = peak.saturating_sub(before);
    eprintln!(
        "day export: {bytes} bytes, {points} points, first bytes after {first:?}, all after {total:?}, \
         server RSS {} MiB, +{} MiB at most",
        before >> 20,
        grew >> 20
    );
    assert_eq!(points, DAY as usize, "every fix once");
    assert!(
        first * 4 < total,
        "streamed: first bytes after {first:?} of {total:?}"
    );
    // The first-byte time is what shows the streaming; memory only has to
    // stay clear of holding several copies of the file (the store's block
    // cache grows while it reads the day, ~20 MiB here).
    assert!(
        grew < 64 << 20,
        "the server grew by {} MiB for a {} MiB export",
        grew >> 20,
        bytes >> 20
    );
}
