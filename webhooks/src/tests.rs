use std::time::Duration;

use fleetd_schemas::{Alert, AlertDetail, AlertKind, DeviceId, GeofenceId, WebhookFilter};

use super::*;

fn alert(device: &str, ts_ms: i64, kind: AlertKind) -> Alert {
    Alert::new(
        kind,
        DeviceId::parse(device).expect("device id"),
        Some(GeofenceId::parse("depot").expect("fence id")),
        ts_ms,
        (52.5, 13.4),
        AlertDetail::default(),
    )
}

fn hooks(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn fan_out_keeps_order_caps_each_hook_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let q = Queue::open(dir.path(), None, false).expect("open");
        let alerts: Vec<Alert> = (0..5)
            .map(|i| alert("truck-1", 1_000 + i, AlertKind::Enter))
            .collect();
        q.append(&alerts, 7).expect("append");
        let entries = q.outbox(100).expect("outbox");
        assert_eq!(entries.len(), 5);
        let targets: Vec<Vec<String>> = (0..5).map(|_| hooks(&["a", "b"])).collect();
        // Hook b already holds 2 (from an earlier round): its cap of 4
        // leaves room for 2 of these 5.
        let placed = q.fan_out(&entries, &targets, 5, 9).expect("fan out");
        assert!(placed.iter().all(|(_, p)| *p == Placed::Pending));
        assert!(q.outbox(100).expect("outbox").is_empty());
        q.append(&[alert("truck-1", 2_000, AlertKind::Exit)], 10)
            .expect("append");
        let more = q.outbox(100).expect("outbox");
        let placed = q
            .fan_out(&more, &[hooks(&["a", "b"])], 5, 11)
            .expect("fan out");
        assert_eq!(
            placed,
            vec![
                ("a".to_string(), Placed::QueueFull),
                ("b".to_string(), Placed::QueueFull)
            ]
        );
        assert_eq!(q.pending_len("a"), 5);
        let dead = q.dead_letters("a", None, 10).expect("dead");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "queue_full");
        assert_eq!(dead[0].alert.ts_ms, 2_000);
    }
    // Reopened: counts, order and the sequence carry on.
    let q = Queue::open(dir.path(), None, false).expect("reopen");
    assert_eq!(q.pending_len("a"), 5);
    let (seq, first) = q.first_pending("a").expect("read").expect("pending");
    assert_eq!(first.alert.ts_ms, 1_000);
    assert_eq!(first.queued_ms, 7);
    q.delivered("a", seq).expect("delivered");
    let (seq2, second) = q.first_pending("a").expect("read").expect("pending");
    assert!(seq2 > seq);
    assert_eq!(second.alert.ts_ms, 1_001);
    q.append(&[alert("truck-2", 5, AlertKind::Dwell)], 12)
        .expect("append");
    let (new_seq, _) = q.outbox(1).expect("outbox")[0].clone();
    assert!(new_seq > 6, "sequence numbers never repeat: {new_seq}");
    // Redelivery puts the dead letter back in order (its sequence number is
    // after every earlier alert of the hook).
    assert_eq!(q.redeliver("a").expect("redeliver"), 1);
    assert_eq!(q.pending_len("a"), 5);
    assert_eq!(q.dead_len("a").expect("dead"), 0);
    q.forget("b").expect("forget");
    assert_eq!(q.pending_len("b"), 0);
    assert!(q.first_pending("b").expect("read").is_none());
    assert_eq!(q.dead_len("b").expect("dead"), 0);
    assert_eq!(q.pending_len("a"), 5, "other hooks keep theirs");
}

#[test]
fn sealed_queue_keeps_no_coordinate_in_clear_and_needs_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = fleetd_store::StoreKey::generate();
    let sealer = Arc::new(Sealer::new(&key));
    let marker = alert("secret-truck-77", 1_234, AlertKind::Overspeed);
    {
        let q = Queue::open(dir.path(), Some(Arc::clone(&sealer)), true).expect("open");
        q.append(std::slice::from_ref(&marker), 1).expect("append");
        let entries = q.outbox(10).expect("outbox");
        q.fan_out(&entries, &[hooks(&["a"])], 10, 2)
            .expect("fan out");
    }
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("secret-truck-77"),
            "{} holds the device id",
            entry.display()
        );
    }
    let q = Queue::open(dir.path(), Some(Arc::new(Sealer::new(&key))), true).expect("reopen");
    let (_, got) = q.first_pending("a").expect("read").expect("pending");
    assert_eq!(got.alert, marker);
    let other = Sealer::new(&fleetd_store::StoreKey::generate());
    drop(q);
    let q = Queue::open(dir.path(), Some(Arc::new(other)), true).expect("reopen");
    assert!(matches!(q.first_pending("a"), Err(WebhookError::Store(_))));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn filters_match_kinds_fences_devices_and_tags() {
    let a = alert("truck-1", 1, AlertKind::Enter);
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("fleet".to_string(), "north".to_string());
    let all = WebhookFilter::default();
    assert!(all.matches(&a, None));
    let kinds = WebhookFilter {
        kinds: vec![AlertKind::Exit],
        ..WebhookFilter::default()
    };
    assert!(!kinds.matches(&a, None));
    let tagged = WebhookFilter {
        tags: vec!["fleet=north".into()],
        ..WebhookFilter::default()
    };
    assert!(tagged.matches(&a, Some(&tags)));
    assert!(!tagged.matches(&a, None));
    let key_only = WebhookFilter {
        tags: vec!["fleet".into()],
        devices: vec![DeviceId::parse("truck-1").expect("id")],
        geofences: vec![GeofenceId::parse("depot").expect("id")],
        ..WebhookFilter::default()
    };
    assert!(key_only.matches(&a, Some(&tags)));
    let other_fence = WebhookFilter {
        geofences: vec![GeofenceId::parse("yard").expect("id")],
        ..WebhookFilter::default()
    };
    assert!(!other_fence.matches(&a, None));
}

#[test]
fn urls_are_http_or_https_to_a_named_host() {
    for good in [
        "http://127.0.0.1:8080/hook",
        "https://ops.example.com/fleetd-alerts?team=night",
        "https://a-b.c",
        "http://127.0.0.1:65535/",
        "http://10.0.0.255/",
        "https://1.2.example/",
    ] {
        assert!(well_formed(good), "{good}");
        assert!(check_url(good).is_ok(), "{good}");
    }
    for bad in [
        "ftp://example.com/",
        "http://",
        "http://a..b/",
        "https://user@host/",
        "https://h:0/",
        "https://h:99999/",
        "https://h:65536/",
        "https://h:080/",
        "https://b.7i.S.5/",
        "http://1.2.3/",
        "http://1.2.3.256/",
        "http://01.2.3.4/",
        "https://h/<script>",
        "https://h/a b",
        "/relative",
    ] {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let mut s = WebhookSettings::new("/nonexistent".into());
    s.backoff_initial = Duration::from_millis(100);
    s.backoff_max = Duration::from_millis(1_000);
    for _ in 0..50 {
        let first = backoff(&s, 1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let third = backoff(&s, 3);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
        let late = backoff(&s, 40);
        assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1_000));
    }
}

#[test]
fn payload_is_type_timestamp_and_the_alert() {
    let a = alert("truck-1", 1_614_265_330_123, AlertKind::Exit);
    let body: serde_json::Value = serde_json::from_slice(&payload(&a)).expect("json");
    assert_eq!(body["type"], "alert.exit");
    assert_eq!(body["timestamp"], "2021-02-25T15:02:10.123Z");
    assert_eq!(body["data"]["id"], a.id.as_str());
    assert_eq!(body["data"]["device_id"], "truck-1");
}
