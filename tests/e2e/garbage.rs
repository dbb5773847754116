//! Bad input is rejected with the right reason codes, counted and sampled,
//! while valid traffic from another device keeps flowing unharmed.

use std::collections::HashMap;
use std::time::Duration;

use fleetd_schemas::proto;
use prost::Message;
use rumqttc::QoS;

use crate::util::{Fleetd, now_ms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_rejected_while_valid_traffic_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Fleetd::start(&dir.path().join("data"), &["--window-ms", "200"]).await;

    // Valid traffic: 40 points at 20 Hz from one device, concurrently.
    let good = server.mqtt_client("e2e-good").await;
    let t0 = now_ms() - 10_000;
    let good_task = tokio::spawn(async move {
        for i in 0..40i64 {
            let p = proto::Position {
                ts_ms: t0 + i * 100,
                lat: 40.4168 + i as f64 * 1e-5,
                lon: -3.7038,
                ..Default::default()
            };
            good.publish(
                "fleet/good-1/pos",
                QoS::AtLeastOnce,
                false,
                p.encode_to_vec(),
            )
            .await
            .expect("publish good");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let valid = proto::Position {
        ts_ms: now_ms(),
        lat: 1.0,
        lon: 1.0,
        ..Default::default()
    }
    .encode_to_vec();
    let nan = proto::Position {
        ts_ms: now_ms(),
        lat: f64::NAN,
        lon: 1.0,
        ..Default::default()
    }
    .encode_to_vec();
    let now = now_ms();
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("fleet/bad-1/pos", valid[..valid.len() - 4].to_vec()),
        ("fleet/bad-1/pos", br#"{"lat": 1, "lon":"#.to_vec()),
        (
            "fleet/bad-1/pos",
            format!(r#"{{"ts_ms": {now}, "lat": NaN, "lon": 1}}"#).into_bytes(),
        ),
        ("fleet/bad-1/pos", nan),
        (
            "fleet/bad-1/pos",
            format!(r#"{{"ts_ms": {now}, "lat": 999, "lon": 999}}"#).into_bytes(),
        ),
        ("fleet/bad-1/pos", vec![b'x'; 1024 * 1024]),
        ("fleet/bad id/pos", valid.clone()),
        ("fleet/bad-1/unknown", valid.clone()),
        ("owntracks/bad/phone", br#"{"lat": 1, "lon": 2}"#.to_vec()),
        (
            "fleet/bad-1/pos",
            format!(r#"{{"ts_ms": {}, "lat": 1, "lon": 2}}"#, now + 86_400_000).into_bytes(),
        ),
    ];
    let garbage = server.mqtt_client("e2e-garbage").await;
    for (topic, payload) in corpus {
        garbage
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish garbage");
    }
    // The third-party client's garbage too.
    server.mosquitto_pub("fleet/bad-2/pos", b"garbage");
    good_task.await.expect("good publisher");

    let expected: HashMap<&str, f64> = HashMap::from([
        ("malformed", 5.0),
        ("bad_coordinates", 2.0),
        ("oversize", 1.0),
        ("bad_device_id", 1.0),
        ("unknown_topic", 1.0),
        ("future_timestamp", 1.0),
    ]);
    let total: f64 = expected.values().sum();
    let counted = server
        .wait_for(Duration::from_secs(10), || async {
            let text = server.get_text("/metrics").await;
            let counts: HashMap<&str, f64> = expected
                .keys()
                .map(|r| {
                    (
                        *r,
                        crate::util::parse_metric(
                            &text,
                            &format!("fleetd_rejected_total{{reason=\"{r}\"}}"),
                        ),
                    )
                })
                .collect();
            (counts.values().sum::<f64>() >= total).then_some(counts)
        })
        .await
        .unwrap_or_else(|| panic!("rejections not all counted; log:\n{}", server.log()));
    assert_eq!(counted, expected);

    // Samples name the reasons and keep only a bounded payload head.
    let (status, body) = server.get("/v1/rejections?limit=100").await;
    assert_eq!(status, 200);
    let samples = body["rejections"].as_array().expect("rejections");
    assert_eq!(samples.len(), total as usize);
    for reason in expected.keys() {
        assert!(
            samples.iter().any(|s| s["reason"] == *reason),
            "sample for {reason}"
        );
    }
    let oversize = samples
        .iter()
        .find(|s| s["reason"] == "oversize")
        .expect("oversize");
    assert_eq!(oversize["payload_len"], 1024 * 1024);
    assert!(oversize["payload_head"].as_str().map(str::len) <= Some(64 * 4));

    // Valid traffic was not harmed: every good point is stored.
    let stored = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, track) = server.get("/v1/vehicles/good-1/track?limit=1000").await;
            (track["items"].as_array().map(Vec::len) == Some(40)).then_some(())
        })
        .await;
    assert!(
        stored.is_some(),
        "all 40 good points stored; log:\n{}",
        server.log()
    );
    let (status, latest) = server.get("/v1/vehicles/good-1").await;
    assert_eq!(status, 200);
    assert_eq!(latest["ts_ms"], t0 + 39 * 100);
    let (status, _) = server.get("/v1/vehicles/bad-1").await;
    assert_eq!(status, 404, "nothing of the garbage was stored");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}
