use fleetd_schemas::proto;
use prost::Message;

use super::*;
use crate::topic::route;

const NOW: i64 = 1_750_000_000_000;

fn decode(topic: &str, payload: &[u8]) -> (Vec<PositionReport>, Vec<Reject>, Outcome) {
    let decoder = Decoder::new(Limits::default());
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let outcome = decoder.decode(&route(topic), payload, NOW, &mut ok, &mut bad);
    (ok, bad, outcome)
}

fn reasons(rejects: &[Reject]) -> Vec<&'static str> {
    rejects.iter().map(|r| r.reason.code()).collect()
}

#[test]
fn protobuf_position() {
    let p = proto::Position {
        device_id: "ignored".into(),
        ts_ms: NOW - 1000,
        lat: 52.5,
        lon: 13.4,
        speed_mps: Some(10.0),
        heading_deg: Some(360.0),
        seq: Some(7),
        ..Default::default()
    };
    let (ok, bad, _) = decode("fleet/t1/pos", &p.encode_to_vec());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok.len(), 1);
    let r = &ok[0];
    assert_eq!(r.device_id.as_str(), "t1", "topic id wins");
    assert_eq!((r.ts_ms, r.lat, r.lon), (NOW - 1000, 52.5, 13.4));
    assert_eq!(r.speed_mps, Some(10.0));
    assert_eq!(r.heading_deg, Some(0.0), "360 normalised to 0");
    assert_eq!(r.seq, Some(7));
    assert_eq!(r.received_ms, NOW);
}

#[test]
fn json_position_and_batches() {
    let (ok, bad, _) = decode(
        "fleet/t1/pos",
        br#"{"ts_ms": 1749999999000, "lat": 1.5, "lon": 2.5, "accuracy_m": 4}"#,
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        (ok[0].lat, ok[0].lon, ok[0].accuracy_m),
        (1.5, 2.5, Some(4.0))
    );

    let batch = br#"[{"ts_ms": 1749999999000, "lat": 1, "lon": 2},
                     {"ts_ms": 1749999999500, "lat": 1, "lon": 999},
                     {"ts_ms": 1749999999900, "lat": 1.1, "lon": 2}]"#;
    let (ok, bad, _) = decode("fleet/t1/pos/batch", batch);
    assert_eq!(ok.len(), 2);
    assert_eq!(reasons(&bad), ["bad_coordinates"]);

    let obj = br#"{"positions": [{"ts_ms": 1749999999000, "lat": 1, "lon": 2}]}"#;
    assert_eq!(decode("fleet/t1/pos/batch", obj).0.len(), 1);

    let pb = proto::PositionBatch {
        device_id: String::new(),
        positions: (0..3)
            .map(|i| proto::Position {
                ts_ms: NOW - 3000 + i,
                lat: 10.0,
                lon: 20.0,
                ..Default::default()
            })
            .collect(),
    };
    let (ok, bad, _) = decode("fleet/t1/pos/batch", &pb.encode_to_vec());
    assert!(bad.is_empty());
    assert_eq!(ok.len(), 3);
}

#[test]
fn owntracks() {
    let msg = br#"{"_type":"location","tid":"ph","lat":48.85,"lon":2.35,"tst":1749999990,
                   "acc":12,"alt":35,"vel":36,"cog":90,"batt":80,"conn":"w"}"#;
    let (ok, bad, outcome) = decode("owntracks/alice/phone", msg);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(outcome, Outcome::Decoded);
    let r = &ok[0];
    assert_eq!(r.device_id.as_str(), "alice/phone");
    assert_eq!(r.ts_ms, 1_749_999_990_000);
    assert_eq!(r.speed_mps, Some(10.0), "36 km/h");
    assert_eq!(
        (r.accuracy_m, r.altitude_m, r.heading_deg, r.battery_pct),
        (Some(12.0), Some(35.0), Some(90.0), Some(80.0))
    );

    let (ok, bad, outcome) = decode(
        "owntracks/alice/phone",
        br#"{"_type":"transition","event":"enter"}"#,
    );
    assert!(ok.is_empty() && bad.is_empty());
    assert_eq!(outcome, Outcome::Ignored("owntracks_non_location"));

    let (_, bad, _) = decode("owntracks/alice/phone", br#"{"lat":1,"lon":2}"#);
    assert_eq!(reasons(&bad), ["malformed"]);
}

#[test]
fn garbage_is_rejected_with_reasons() {
    let good = proto::Position {
        ts_ms: NOW,
        lat: 1.0,
        lon: 1.0,
        ..Default::default()
    }
    .encode_to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("fleet/t1/pos", good[..good.len() - 3].to_vec(), "malformed"),
        ("fleet/t1/pos", b"{not json".to_vec(), "malformed"),
        (
            "fleet/t1/pos",
            br#"{"lat": NaN, "lon": 1, "ts_ms": 1749999999000}"#.to_vec(),
            "malformed",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 1, "lon": 1}"#.to_vec(),
            "malformed",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 999, "lon": 1, "ts_ms": 1749999999000}"#.to_vec(),
            "bad_coordinates",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 1, "lon": -181, "ts_ms": 1749999999000}"#.to_vec(),
            "bad_coordinates",
        ),
        (
            "fleet/t1/pos",
            br#"{"ts_ms": 1749999999000}"#.to_vec(),
            "bad_coordinates",
        ),
        (
            "fleet/t1/pos",
            proto::Position {
                ts_ms: NOW,
                lat: f64::NAN,
                lon: 1.0,
                ..Default::default()
            }
            .encode_to_vec(),
            "bad_coordinates",
        ),
        (
            "fleet/t1/pos",
            proto::Position {
                ts_ms: NOW,
                lat: 1.0,
                lon: 1.0,
                speed_mps: Some(f32::INFINITY),
                ..Default::default()
            }
            .encode_to_vec(),
            "bad_field",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 1, "lon": 1, "ts_ms": 1749999999000, "battery_pct": 140}"#.to_vec(),
            "bad_field",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 1, "lon": 1, "ts_ms": 1760000000000}"#.to_vec(),
            "future_timestamp",
        ),
        (
            "fleet/t1/pos",
            br#"{"lat": 1, "lon": 1, "ts_ms": 900000000000}"#.to_vec(),
            "stale_timestamp",
        ),
        ("fleet/t1/pos", vec![b'{'; 300 * 1024], "oversize"),
        (
            "fleet/t1/pos/batch",
            br#"{"positions": 3}"#.to_vec(),
            "malformed",
        ),
        ("fleet/bad id/pos", good.clone(), "bad_device_id"),
        ("fleet/t1/position", good.clone(), "unknown_topic"),
    ];
    for (topic, payload, want) in cases {
        let (ok, bad, _) = decode(topic, &payload);
        assert!(ok.is_empty(), "{topic} {want}: accepted");
        assert_eq!(reasons(&bad), [want], "{topic}: {:?}", bad);
    }
}

#[test]
fn batch_limit() {
    let many: Vec<String> = (0..1001)
        .map(|i| format!(r#"{{"ts_ms": {}, "lat": 1, "lon": 1}}"#, NOW - 10_000 + i))
        .collect();
    let payload = format!("[{}]", many.join(","));
    let (ok, bad, _) = decode("fleet/t1/pos/batch", payload.as_bytes());
    assert!(ok.is_empty());
    assert_eq!(reasons(&bad), ["batch_too_large"]);
}

fn decode_http(
    identity: &HttpIdentity,
    payload: &[u8],
) -> (Vec<PositionReport>, Vec<Reject>, Outcome) {
    let decoder = Decoder::new(Limits::default());
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    let decoded = decoder.decode_http(identity, payload, NOW, &mut ok, &mut bad);
    (ok, bad, decoded.outcome)
}

/// No identity: fleetd JSON unless the body is a typed OwnTracks message.
const ANONYMOUS: HttpIdentity = HttpIdentity {
    owntracks_user: None,
    owntracks_device: None,
    login: None,
};

fn identity(user: Option<&str>, device: Option<&str>, login: Option<&str>) -> HttpIdentity {
    HttpIdentity {
        owntracks_user: user.map(str::to_owned),
        owntracks_device: device.map(str::to_owned),
        login: login.map(str::to_owned),
    }
}

#[test]
fn json_positions_name_their_device() {
    let one = br#"{"device_id": "van-7", "ts_ms": 1749999999000, "lat": 1.5, "lon": 2.5, "speed_mps": 3}"#;
    let (ok, bad, outcome) = decode_http(&ANONYMOUS, one);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(outcome, Outcome::Decoded);
    assert_eq!(ok[0].device_id.as_str(), "van-7");
    assert_eq!(
        (ok[0].lat, ok[0].lon, ok[0].speed_mps),
        (1.5, 2.5, Some(3.0))
    );

    // Every element is validated on its own; rejections say which one.
    let many = br#"[{"device_id": "a", "ts_ms": 1749999999000, "lat": 1, "lon": 2},
                    {"ts_ms": 1749999999000, "lat": 1, "lon": 2},
                    {"device_id": "bad id", "ts_ms": 1749999999000, "lat": 1, "lon": 2},
                    {"device_id": "b", "ts_ms": 1749999999000, "lat": 1, "lon": 999},
                    {"device_id": "alice/phone", "ts_ms": 1749999999500, "lat": 1, "lon": 2}]"#;
    let (ok, bad, _) = decode_http(&ANONYMOUS, many);
    let ids: Vec<&str> = ok.iter().map(|r| r.device_id.as_str()).collect();
    assert_eq!(ids, ["a", "alice/phone"]);
    let got: Vec<_> = bad
        .iter()
        .map(|r| {
            (
                r.index,
                r.reason.code(),
                r.device.as_ref().map(|d| d.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some(1), "bad_device_id", None),
            (Some(2), "bad_device_id", None),
            (Some(3), "bad_coordinates", Some("b")),
        ]
    );
    assert!(
        bad[0].detail.contains("missing device_id"),
        "{}",
        bad[0].detail
    );

    // A single object's rejection has no index.
    let (_, bad, _) = decode_http(
        &ANONYMOUS,
        br#"{"device_id": "a", "ts_ms": 1760000000000, "lat": 1, "lon": 2}"#,
    );
    assert_eq!(reasons(&bad), ["future_timestamp"]);
    assert_eq!(bad[0].index, None);
}

#[test]
fn json_positions_garbage_and_limits() {
    for (payload, want) in [
        (b"".to_vec(), "malformed"),
        (b"  ".to_vec(), "malformed"),
        (b"42".to_vec(), "malformed"),
        (br#"{"device_id": "a", "lat": "x"}"#.to_vec(), "malformed"),
        (br#"[{"device_id": "a"}, 7]"#.to_vec(), "malformed"),
        (vec![b'['; 300 * 1024], "oversize"),
    ] {
        let (ok, bad, _) = decode_http(&ANONYMOUS, &payload);
        assert!(ok.is_empty());
        assert_eq!(
            reasons(&bad),
            [want],
            "{:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        );
    }
    let many: Vec<String> = (0..1001)
        .map(|i| {
            format!(
                r#"{{"device_id": "a", "ts_ms": {}, "lat": 1, "lon": 1}}"#,
                NOW - 10_000 + i
            )
        })
        .collect();
    let payload = format!("[{}]", many.join(","));
    let (ok, bad, _) = decode_http(&ANONYMOUS, payload.as_bytes());
    assert!(ok.is_empty());
    assert_eq!(reasons(&bad), ["batch_too_large"]);

    // An OwnTracks identity without its device, and no tid to fall back on.
    let (_, bad, _) = decode_http(&identity(Some("alice"), None, None), b"{}");
    assert_eq!(reasons(&bad), ["bad_device_id"]);
    assert!(bad[0].detail.contains("X-Limit-D"), "{}", bad[0].detail);
}

#[test]
fn owntracks_without_topic_decodes_like_the_topic() {
    let msg =
        br#"{"_type":"location","tid":"ph","lat":48.85,"lon":2.35,"tst":1749999990,"vel":36}"#;
    let alice = identity(Some("alice"), Some("phone"), None);
    let (ok, bad, outcome) = decode_http(&alice, msg);
    assert_eq!((ok.clone(), bad.clone(), outcome), {
        let (ok, bad, outcome) = decode("owntracks/alice/phone", msg);
        (ok, bad, outcome)
    });
    assert_eq!(ok[0].speed_mps, Some(10.0));

    // Zero-length messages (a deleted friend, a cleared retained message)
    // are not input, over either transport.
    let (ok, bad, outcome) = decode_http(&alice, b"");
    assert!(ok.is_empty() && bad.is_empty());
    assert_eq!(outcome, Outcome::Ignored("owntracks_empty"));
    assert_eq!(
        decode("owntracks/alice/phone", b"").2,
        Outcome::Ignored("owntracks_empty")
    );
}

#[test]
fn http_bodies_are_told_apart_by_type_and_identity() {
    let decoder = Decoder::new(Limits::default());
    let run = |identity: &HttpIdentity, body: &[u8]| {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        let decoded = decoder.decode_http(identity, body, NOW, &mut ok, &mut bad);
        (decoded, ok, bad)
    };
    let typed = br#"{"_type":"location","tid":"ph","lat":1,"lon":2,"tst":1749999990}"#;
    // A typed message with only a login: the login is the user, tid the device.
    let (d, ok, bad) = run(&identity(None, None, Some("bob")), typed);
    assert_eq!((d.format, bad.len()), (HttpFormat::OwnTracks, 0), "{bad:?}");
    assert_eq!(ok[0].device_id.as_str(), "bob/ph");
    assert_eq!(d.device.as_ref().map(|d| d.as_str()), Some("bob/ph"));
    // X-Limit-U/D win over the login and the tid.
    let (_, ok, _) = run(&identity(Some("alice"), Some("phone"), Some("bob")), typed);
    assert_eq!(ok[0].device_id.as_str(), "alice/phone");
    // A typed message with no user at all names what is missing.
    let (d, ok, bad) = run(&ANONYMOUS, typed);
    assert_eq!(d.format, HttpFormat::OwnTracks);
    assert!(ok.is_empty());
    assert_eq!(reasons(&bad), ["bad_device_id"]);
    // An untyped object with a login and no OwnTracks identity is fleetd JSON.
    let fleet = br#"{"device_id":"van-1","ts_ms":1749999999000,"lat":1,"lon":2}"#;
    let (d, ok, bad) = run(&identity(None, None, Some("bob")), fleet);
    assert_eq!(
        (d.format, ok.len(), bad.len()),
        (HttpFormat::FleetJson, 1, 0)
    );
    // The same body with an OwnTracks identity is an OwnTracks message
    // without `_type`: malformed, not silently read as fleetd JSON.
    let (d, ok, bad) = run(&identity(Some("alice"), Some("phone"), None), fleet);
    assert_eq!((d.format, ok.len()), (HttpFormat::OwnTracks, 0));
    assert_eq!(reasons(&bad), ["malformed"]);
    // Broken JSON is malformed whichever format it claims to be.
    for identity in [ANONYMOUS, identity(Some("a"), Some("b"), None)] {
        let (_, ok, bad) = run(&identity, b"{\"lat\": ");
        assert!(ok.is_empty());
        assert_eq!(reasons(&bad), ["malformed"]);
    }
}
