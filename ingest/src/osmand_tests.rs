//! Requests as the apps send them, written from the protocol (Traccar
//! Client's `ProtocolFormatter`, OsmAnd's online-tracking URL template,
//! Traccar Client 9's JSON), not from this decoder.

use fleetd_schemas::RejectReason;

use super::*;

fn read(query: &str) -> OsmandFix {
    read_request(query, b"", SpeedUnit::Knots).expect("a fix")
}

fn refused(query: &str, body: &str) -> Reject {
    read_request(query, body.as_bytes(), SpeedUnit::Knots).expect_err("refused")
}

#[test]
fn traccar_client_query() {
    // Traccar Client for Android: POST with the fix in the query, speed in
    // knots, timestamp in Unix seconds.
    let fix = read(
        "id=123456&timestamp=1700000000&lat=52.5219&lon=13.4132&speed=10.0&bearing=90.5&altitude=34.0&accuracy=5.0&batt=80.0&charge=true",
    );
    assert_eq!(fix.device, "123456");
    assert_eq!(fix.key, None);
    let p = fix.position;
    assert_eq!(p.ts_ms, Some(1_700_000_000_000));
    assert_eq!((p.lat, p.lon), (Some(52.5219), Some(13.4132)));
    // 10 knots = 5.1444 m/s.
    assert!((p.speed_mps.expect("speed") - 5.144_444).abs() < 1e-5);
    assert_eq!(p.heading_deg, Some(90.5));
    assert_eq!(p.altitude_m, Some(34.0));
    assert_eq!(p.accuracy_m, Some(5.0));
    assert_eq!(p.battery_pct, Some(80.0));
}

#[test]
fn osmand_template_with_ms_and_hdop() {
    // OsmAnd: ?id=X&lat={0}&lon={1}&timestamp={2}&hdop={3}&altitude={4}&speed={5}&bearing={6}
    // ({2} in milliseconds, {5} in m/s: set speed_unit = "mps").
    let fix = read_request(
        "id=phone-1&lat=48.8566&lon=2.3522&timestamp=1700000000123&hdop=12&altitude=35&speed=3.5&bearing=180",
        b"",
        SpeedUnit::Mps,
    )
    .expect("a fix");
    let p = fix.position;
    assert_eq!(p.ts_ms, Some(1_700_000_000_123));
    assert_eq!(p.accuracy_m, Some(12.0), "hdop stands in for accuracy");
    assert_eq!(p.speed_mps, Some(3.5));
    assert_eq!(p.heading_deg, Some(180.0));
}

#[test]
fn deviceid_location_and_key() {
    let fix = read("deviceid=truck%2F7&location=52.5%2C13.4&timestamp=1700000000&key=s3cret");
    assert_eq!(fix.device, "truck/7");
    assert_eq!(fix.key.as_deref(), Some("s3cret"));
    assert_eq!(
        (fix.position.lat, fix.position.lon),
        (Some(52.5), Some(13.4))
    );
    // `password` is the other name of the key; names are case-insensitive.
    let fix = read("ID=a&LAT=1&LON=2&timestamp=1700000000&password=pw");
    assert_eq!((fix.device.as_str(), fix.key.as_deref()), ("a", Some("pw")));
}

#[test]
fn every_timestamp_form() {
    let ts = |v: &str| {
        read(&format!("id=a&lat=1&lon=2&timestamp={v}"))
            .position
            .ts_ms
    };
    assert_eq!(ts("1700000000"), Some(1_700_000_000_000));
    assert_eq!(ts("1700000000000"), Some(1_700_000_000_000));
    assert_eq!(ts("1700000000.5"), Some(1_700_000_000_500));
    assert_eq!(ts("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
    assert_eq!(ts("2023-11-14T23:13:20%2B01:00"), Some(1_700_000_000_000));
    assert_eq!(ts("2023-11-14T22:13:20.250Z"), Some(1_700_000_000_250));
    assert_eq!(ts("2023-11-14%2022:13:20"), Some(1_700_000_000_000));
    assert_eq!(
        ts("2023-11-14+22:13:20"),
        Some(1_700_000_000_000),
        "+ is a space in a query"
    );
    let r = refused("id=a&lat=1&lon=2&timestamp=yesterday", "");
    assert_eq!(r.reason, RejectReason::BadField);
    assert!(r.detail.contains("yesterday"), "{}", r.detail);
}

#[test]
fn form_body_and_query_together() {
    // A POST with the fix in a form body; the body's values win.
    let fix = read_request(
        "id=from-query",
        b"id=from-body&lat=1.5&lon=2.5&timestamp=1700000000&speed=0",
        SpeedUnit::Knots,
    )
    .expect("a fix");
    assert_eq!(fix.device, "from-body");
    assert_eq!(fix.position.lat, Some(1.5));
}

#[test]
fn traccar_client_json() {
    // Traccar Client 9+ (its background-geolocation library's shape):
    // speed in m/s, battery level 0–1, -1 for what was not measured.
    let body = r#"{
      "location": {
        "timestamp": "2023-11-14T22:13:20.000Z",
        "coords": {"latitude": 52.5219, "longitude": 13.4132, "accuracy": 4.7,
                   "speed": 8.3, "heading": -1, "altitude": 41.2},
        "is_moving": true, "odometer": 1234.5, "event": "motionchange",
        "battery": {"level": 0.62, "is_charging": false},
        "activity": {"type": "in_vehicle"}, "extras": {}
      },
      "device_id": "123456"
    }"#;
    let fix = read_request("", body.as_bytes(), SpeedUnit::Knots).expect("a fix");
    assert_eq!(fix.device, "123456");
    let p = fix.position;
    assert_eq!(p.ts_ms, Some(1_700_000_000_000));
    assert_eq!((p.lat, p.lon), (Some(52.5219), Some(13.4132)));
    assert_eq!(p.speed_mps, Some(8.3), "m/s, not knots");
    assert_eq!(p.heading_deg, None, "-1 is not measured");
    assert_eq!(p.accuracy_m, Some(4.7));
    assert_eq!(p.altitude_m, Some(41.2));
    assert!((p.battery_pct.expect("battery") - 62.0).abs() < 1e-9);
    // A key in the query of a JSON post.
    let fix = read_request("key=pw", body.as_bytes(), SpeedUnit::Knots).expect("a fix");
    assert_eq!(fix.key.as_deref(), Some("pw"));
}

#[test]
fn bad_requests_say_why() {
    let r = refused("lat=1&lon=2&timestamp=1700000000", "");
    assert_eq!(r.reason, RejectReason::BadDeviceId);
    let r = refused("id=a&lat=north&lon=2", "");
    assert_eq!(r.reason, RejectReason::BadField);
    assert!(r.detail.contains("lat"), "{}", r.detail);
    let r = refused("id=a&location=52.5", "");
    assert_eq!(r.reason, RejectReason::BadField);
    let r = refused("id=a&lat=1&lon=2&valid=false", "");
    assert_eq!(r.reason, RejectReason::BadCoordinates);
    let r = refused("", "");
    assert_eq!(r.reason, RejectReason::Malformed);
    let r = refused("", "{\"device_id\": \"a\"");
    assert_eq!(r.reason, RejectReason::Malformed);
    let r = refused("", "{\"device_id\": \"a\", \"location\": {}}");
    assert_eq!(r.reason, RejectReason::BadCoordinates);
    let r = read_request("", &[0xff, 0xfe], SpeedUnit::Knots).expect_err("not UTF-8");
    assert_eq!(r.reason, RejectReason::Malformed);
}

#[test]
fn speed_units() {
    let speed = |unit| {
        read_request("id=a&lat=1&lon=2&speed=36", b"", unit)
            .expect("a fix")
            .position
            .speed_mps
            .expect("speed")
    };
    assert!((speed(SpeedUnit::Kmh) - 10.0).abs() < 1e-9);
    assert!((speed(SpeedUnit::Mps) - 36.0).abs() < 1e-9);
    assert!((speed(SpeedUnit::Mph) - 16.09344).abs() < 1e-9);
    assert!((speed(SpeedUnit::Knots) - 18.52).abs() < 1e-9);
}
