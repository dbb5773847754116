//! The store contract, run against every backend: always the embedded
//! fjall store, and ScyllaDB when `SCYLLA_URI` (or `FLEETD_SCYLLA_URI`) names
//! a cluster (`host:9042[,host2:9042]`); each ScyllaDB test then migrates
//! a fresh keyspace `fleetd_conformance_<pid>_<n>` with RF 1. With
//! `SCYLLA_TLS_CA` (a PEM file) it connects over TLS, with
//! `SCYLLA_TLS_CERT` and `SCYLLA_TLS_KEY` as client certificate and
//! `SCYLLA_TLS_SERVER_NAME` as the name to verify, if set.
//!
//! Without the variable the real-cluster half prints a skip message. The
//! ScyllaDB backend's own logic (day partitions, cursors, minute buckets,
//! cell moves, `USING TIMESTAMP`) always runs against the fake node of
//! `support/fake_scylla.rs` as well: scylla-proxy in dry mode with a tiny
//! in-memory CQL engine, which checks fleetd's side, not ScyllaDB's.

#[path = "support/fake_scylla.rs"]
mod fake_scylla;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetd_schemas::{
    Alert, AlertDetail, AlertKind, DeviceId, DeviceInfo, DeviceTrip, EnrichedPosition, Fix,
    GeofenceId, MembershipChange, Motion, RejectReason, Trip, VehicleState, now_ms,
};
use fleetd_store::{
    AlertQuery, AreaQuery, BBox, FjallStore, HistoryQuery, LatestUpdate, ScyllaSettings,
    ScyllaStore, Store, StoreError, StoredGeofence, TripQuery, WriteBatch,
};
use h3o::{LatLng, Resolution};

/// A backend under test; `_dir` keeps fjall's directory alive and `_fake`
/// the fake ScyllaDB node.
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    _fake: Option<fake_scylla::FakeScylla>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let fjall = FjallStore::open(dir.path()).expect("open fjall");
    let mut all = vec![Backend {
        name: "fjall",
        store: Arc::new(fjall),
        _dir: Some(dir),
        _fake: None,
    }];
    let fake = fake_scylla::FakeScylla::start().await;
    let settings = ScyllaSettings {
        contact_points: vec![fake.addr.to_string()],
        keyspace: fake_scylla::KEYSPACE.into(),
        ..ScyllaSettings::default()
    };
    let store = ScyllaStore::connect(settings, false)
        .await
        .expect("connect to the fake node");
    all.push(Backend {
        name: "scylla (fake node)",
        store: Arc::new(store),
        _dir: None,
        _fake: Some(fake),
    });
    let uri = std::env::var("SCYLLA_URI").or_else(|_| std::env::var("FLEETD_SCYLLA_URI"));
    match uri {
        Ok(uri) => {
            static N: AtomicUsize = AtomicUsize::new(0);
            let settings = ScyllaSettings {
                contact_points: ScyllaSettings::parse_contact_points(&uri).expect("SCYLLA_URI"),
                keyspace: format!(
                    "fleetd_conformance_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ),
                replication_factor: 1,
                consistency: fleetd_store::scylla::Consistency::One,
                tls: tls_from_env(),
                ..ScyllaSettings::default()
            };
            let store = ScyllaStore::connect(settings, true)
                .await
                .expect("connect to SCYLLA_URI and migrate");
            all.push(Backend {
                name: "scylla",
                store: Arc::new(store),
                _dir: None,
                _fake: None,
            });
        }
        Err(_) => eprintln!("conformance: SCYLLA_URI is not set; skipping the ScyllaDB backend"),
    }
    all
}

/// TLS settings for the real cluster, from `SCYLLA_TLS_*`.
fn tls_from_env() -> Option<fleetd_store::scylla::ScyllaTls> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let ca_file = var("SCYLLA_TLS_CA")?;
    let client_cert = match (var("SCYLLA_TLS_CERT"), var("SCYLLA_TLS_KEY")) {
        (Some(cert), Some(key)) => Some(fleetd_store::scylla::ClientCertificate {
            cert_file: cert.into(),
            key_file: key.into(),
        }),
        (None, None) => None,
        _ => panic!("set both SCYLLA_TLS_CERT and SCYLLA_TLS_KEY, or neither"),
    };
    Some(fleetd_store::scylla::ScyllaTls {
        ca_file: ca_file.into(),
        client_cert,
        server_name: var("SCYLLA_TLS_SERVER_NAME"),
    })
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

fn cell(lat: f64, lon: f64, res: Resolution) -> u64 {
    u64::from(LatLng::new(lat, lon).expect("finite").to_cell(res))
}

/// A position received now (area reads of ScyllaDB look at recent writes).
fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
    let mut p = fleetd_schemas::test_support::full_position(device, ts_ms, lat, lon);
    p.report.received_ms = now_ms();
    p
}

fn latest_of(positions: &[EnrichedPosition]) -> WriteBatch {
    WriteBatch {
        history: positions.to_vec(),
        latest: positions
            .iter()
            .map(|p| LatestUpdate {
                position: p.clone(),
                previous_area_cell: None,
            })
            .collect(),
        ..WriteBatch::default()
    }
}

fn ids(positions: &[EnrichedPosition]) -> BTreeSet<String> {
    positions
        .iter()
        .map(|p| p.report.device_id.to_string())
        .collect()
}

fn query(from_ms: i64, to_ms: i64, limit: usize, cursor: Option<String>) -> HistoryQuery {
    HistoryQuery {
        from_ms,
        to_ms,
        limit,
        cursor,
    }
}

#[tokio::test]
async fn latest_round_trips_every_field() {
    for b in backends().await {
        let store = &*b.store;
        let truck = position("truck-1", 1_700_000_000_000, 52.52, 13.405);
        let phone = position("alice/phone", 1_700_000_001_000, -33.86, 151.21);
        store
            .write_batch(latest_of(&[truck.clone(), phone.clone()]).into())
            .await
            .expect("write");
        assert_eq!(
            store.latest(&id("truck-1")).await.expect("read"),
            Some(truck.clone()),
            "{}",
            b.name
        );
        assert_eq!(
            store.latest(&id("alice/phone")).await.expect("read"),
            Some(phone.clone()),
            "{}",
            b.name
        );
        assert_eq!(
            store.latest(&id("nobody")).await.expect("read"),
            None,
            "{}",
            b.name
        );
        let all = store.all_latest().await.expect("all latest");
        assert_eq!(ids(&all), ids(&[truck, phone]), "{}", b.name);
        store.flush().await.expect("flush");
        store.ready().await.expect("ready");
    }
}

#[tokio::test]
async fn history_pages_cover_every_row_once_across_days() {
    for b in backends().await {
        let store = &*b.store;
        let day_ms = 86_400_000;
        let start = 1_700_000_000_000 - 1_700_000_000_000 % day_ms;
        // 30 rows spread over three days, written in two batches.
        let rows: Vec<EnrichedPosition> = (0..30)
            .map(|i| position("bus-7", start + i * (day_ms / 10), 48.1, 11.5))
            .collect();
        store
            .write_batch(latest_of(&rows[..15]).into())
            .await
            .expect("write");
        store
            .write_batch(
                WriteBatch {
                    history: rows[15..].to_vec(),
                    latest: vec![],
                    ..WriteBatch::default()
                }
                .into(),
            )
            .await
            .expect("write");

        let (from, to) = (start, start + 3 * day_ms);
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store
                .history(&id("bus-7"), &query(from, to, 7, cursor))
                .await
                .expect("page");
            assert!(page.items.len() <= 7);
            seen.extend(page.items.iter().map(|p| p.report.ts_ms));
            pages += 1;
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let expected: Vec<i64> = rows.iter().map(|p| p.report.ts_ms).collect();
        assert_eq!(seen, expected, "{}: ascending, each once", b.name);
        assert_eq!(pages, 5, "{}", b.name);

        // Inclusive bounds inside one day and across a day boundary.
        let inner = store
            .history(
                &id("bus-7"),
                &query(rows[3].report.ts_ms, rows[12].report.ts_ms, 100, None),
            )
            .await
            .expect("range");
        assert_eq!(inner.items.len(), 10, "{}", b.name);
        assert_eq!(inner.items[0], rows[3], "{}", b.name);
        assert!(inner.next_cursor.is_none());
        let empty = store
            .history(&id("bus-7"), &query(to, from, 10, None))
            .await
            .expect("empty");
        assert!(
            empty.items.is_empty() && empty.next_cursor.is_none(),
            "{}",
            b.name
        );
        let other = store
            .history(&id("bus-8"), &query(from, to, 10, None))
            .await
            .expect("none");
        assert!(other.items.is_empty(), "{}", b.name);
    }
}

#[tokio::test]
async fn rewriting_a_timestamp_replaces_the_row() {
    for b in backends().await {
        let store = &*b.store;
        let first = position("taxi-2", 1_700_000_000_000, 40.0, -3.7);
        let mut again = first.clone();
        again.report.lat = 40.001;
        store
            .write_batch(
                WriteBatch {
                    history: vec![first],
                    latest: vec![],
                    ..WriteBatch::default()
                }
                .into(),
            )
            .await
            .expect("write");
        store
            .write_batch(
                WriteBatch {
                    history: vec![again.clone()],
                    latest: vec![],
                    ..WriteBatch::default()
                }
                .into(),
            )
            .await
            .expect("write");
        let page = store
            .history(&id("taxi-2"), &query(0, i64::MAX, 10, None))
            .await
            .expect("history");
        assert_eq!(page.items, vec![again], "{}", b.name);
    }
}

#[tokio::test]
async fn invalid_queries_are_rejected() {
    for b in backends().await {
        let store = &*b.store;
        let zero = store.history(&id("x"), &query(0, 10, 0, None)).await;
        assert!(
            matches!(zero, Err(StoreError::InvalidQuery(_))),
            "{}: {zero:?}",
            b.name
        );
        let bad_cursor = store
            .history(&id("x"), &query(0, 10, 5, Some("nope".into())))
            .await;
        assert!(
            matches!(bad_cursor, Err(StoreError::InvalidQuery(_))),
            "{}",
            b.name
        );
        let bad_area = store
            .latest_in_area(
                &AreaQuery::Near {
                    lat: 95.0,
                    lon: 0.0,
                    radius_m: 10.0,
                },
                10,
            )
            .await;
        assert!(
            matches!(bad_area, Err(StoreError::InvalidQuery(_))),
            "{}",
            b.name
        );
        let bad_cell = store.latest_in_area(&AreaQuery::Cell(0), 10).await;
        assert!(
            matches!(bad_cell, Err(StoreError::InvalidQuery(_))),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn area_queries_find_exactly_the_devices_inside() {
    for b in backends().await {
        let store = &*b.store;
        let ts = 1_700_000_000_000;
        // A few devices around Berlin's centre, one in Potsdam, one in Sydney.
        let fleet = vec![
            position("a", ts, 52.5200, 13.4050),
            position("b", ts, 52.5210, 13.4100),
            position("c", ts, 52.5300, 13.3900),
            position("d", ts, 52.3900, 13.0650),
            position("e", ts, -33.8600, 151.2100),
        ];
        store
            .write_batch(latest_of(&fleet).into())
            .await
            .expect("write");
        let near = AreaQuery::Near {
            lat: 52.52,
            lon: 13.405,
            radius_m: 500.0,
        };
        let found = store.latest_in_area(&near, 100).await.expect("near");
        assert_eq!(ids(&found), ids(&fleet[..2]), "{}: near", b.name);

        let bbox = AreaQuery::BBox(BBox {
            min_lon: 13.0,
            min_lat: 52.3,
            max_lon: 13.5,
            max_lat: 52.6,
        });
        let found = store.latest_in_area(&bbox, 100).await.expect("bbox");
        assert_eq!(ids(&found), ids(&fleet[..4]), "{}: bbox", b.name);

        for res in [Resolution::Five, Resolution::Seven, Resolution::Nine] {
            let query = AreaQuery::Cell(cell(52.5200, 13.4050, res));
            let found = store.latest_in_area(&query, 100).await.expect("cell");
            let expected: Vec<_> = fleet
                .iter()
                .filter(|p| query.contains(p.report.lat, p.report.lon))
                .cloned()
                .collect();
            assert_eq!(ids(&found), ids(&expected), "{}: cell res {res}", b.name);
        }

        // The whole world: larger than any cover, answered by a scan.
        let world = AreaQuery::BBox(BBox {
            min_lon: -180.0,
            min_lat: -90.0,
            max_lon: 180.0,
            max_lat: 90.0,
        });
        let found = store.latest_in_area(&world, 100).await.expect("world");
        assert_eq!(ids(&found), ids(&fleet), "{}: world", b.name);
        let limited = store.latest_in_area(&world, 2).await.expect("limited");
        assert_eq!(limited.len(), 2, "{}: limit", b.name);
        assert!(
            store
                .latest_in_area(&world, 0)
                .await
                .expect("zero")
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_moving_device_leaves_its_old_area() {
    for b in backends().await {
        let store = &*b.store;
        let before = position("van-1", 1_700_000_000_000, 52.52, 13.405);
        store
            .write_batch(latest_of(std::slice::from_ref(&before)).into())
            .await
            .expect("write");
        let after = position("van-1", 1_700_000_060_000, 52.40, 13.07);
        let moved = WriteBatch {
            history: vec![after.clone()],
            latest: vec![LatestUpdate {
                position: after.clone(),
                previous_area_cell: Some(before.h3.area),
            }],
            ..WriteBatch::default()
        };
        store.write_batch(moved.into()).await.expect("write");
        let old_area = AreaQuery::Near {
            lat: 52.52,
            lon: 13.405,
            radius_m: 1_000.0,
        };
        let new_area = AreaQuery::Near {
            lat: 52.40,
            lon: 13.07,
            radius_m: 1_000.0,
        };
        assert!(
            store
                .latest_in_area(&old_area, 10)
                .await
                .expect("old")
                .is_empty(),
            "{}",
            b.name
        );
        assert_eq!(
            store.latest_in_area(&new_area, 10).await.expect("new"),
            vec![after],
            "{}",
            b.name
        );
    }
}

fn trip(start_ts_ms: i64, end: Option<i64>, distance_m: f64) -> Trip {
    Trip {
        start_ts_ms,
        start: (52.52, 13.405),
        end_ts_ms: end,
        end: end.map(|_| (52.53, 13.41)),
        last_ts_ms: end.unwrap_or(start_ts_ms + 60_000),
        last: (52.53, 13.41),
        distance_m,
        max_speed_mps: 14.5,
        points: 61,
    }
}

fn alert(kind: AlertKind, device: &str, fence: Option<&str>, ts_ms: i64) -> Alert {
    Alert::new(
        kind,
        id(device),
        fence.map(|f| GeofenceId::parse(f).expect("fence id")),
        ts_ms,
        (52.5, 13.4),
        AlertDetail {
            speed_kmh: Some(97.5),
            ..AlertDetail::default()
        },
    )
}

fn alert_query(limit: usize, cursor: Option<String>) -> AlertQuery {
    AlertQuery {
        since_ms: 0,
        until_ms: i64::MAX,
        device: None,
        geofence: None,
        kinds: Vec::new(),
        limit,
        cursor,
    }
}

#[tokio::test]
async fn vehicle_state_trips_and_registry_round_trip() {
    let now = now_ms();
    for b in backends().await {
        let state = VehicleState {
            ts_ms: now,
            motion: Motion::Moving,
            motion_since_ms: now - 5_000,
            odometer_m: 12_345.678,
            trip: Some(Box::new(trip(now - 60_000, None, 800.0))),
            last_fix: Some(Fix {
                ts_ms: now,
                lat: 52.52,
                lon: 13.405,
            }),
            ..VehicleState::default()
        };
        let trips = [
            trip(now - 7_200_000, Some(now - 6_000_000), 5_000.0),
            trip(now - 3_600_000, Some(now - 3_000_000), 2_500.0),
            trip(now - 60_000, None, 800.0),
        ];
        let batch = WriteBatch {
            states: vec![(id("car-1"), state.clone())],
            trips: trips
                .iter()
                .map(|t| DeviceTrip {
                    device_id: id("car-1"),
                    trip: t.clone(),
                })
                .collect(),
            ..WriteBatch::default()
        };
        b.store.write_batch(batch.into()).await.expect("write");
        let got = b.store.vehicle_state(&id("car-1")).await.expect("read");
        assert_eq!(got.as_ref(), Some(&state), "{}", b.name);
        assert_eq!(
            b.store.vehicle_state(&id("nobody")).await.expect("read"),
            None
        );
        let all = b.store.all_vehicle_states().await.expect("all");
        assert_eq!(all, vec![(id("car-1"), state.clone())], "{}", b.name);

        // Newest first, paged.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let q = TripQuery {
                from_ms: 0,
                to_ms: i64::MAX,
                limit: 2,
                cursor: cursor.take(),
            };
            let page = b.store.trips(&id("car-1"), &q).await.expect("trips");
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut expected = trips.to_vec();
        expected.reverse();
        assert_eq!(seen, expected, "{}", b.name);
        let one = b
            .store
            .trip(&id("car-1"), now - 3_600_000)
            .await
            .expect("trip");
        assert_eq!(one, Some(trips[1].clone()), "{}", b.name);
        assert_eq!(
            b.store
                .trip(&id("car-1"), now - 100_000)
                .await
                .expect("trip"),
            None
        );
        let q = TripQuery {
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 0,
            cursor: None,
        };
        assert!(matches!(
            b.store.trips(&id("car-1"), &q).await,
            Err(StoreError::InvalidQuery(_))
        ));

        // Registry.
        let info = DeviceInfo {
            name: Some("Truck 7".into()),
            class: Some("truck".into()),
            speed_limit_kmh: Some(80.0),
            tags: [("depot".to_owned(), "north".to_owned())].into(),
            updated_ms: now,
        };
        b.store
            .put_device(&id("truck-7"), &info)
            .await
            .expect("put");
        b.store
            .put_device(&id("van-1"), &DeviceInfo::default())
            .await
            .expect("put");
        assert_eq!(
            b.store.device(&id("truck-7")).await.expect("get"),
            Some(info.clone())
        );
        let mut all = b.store.all_devices().await.expect("all");
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all.len(), 2, "{}", b.name);
        assert_eq!(all[0], (id("truck-7"), info), "{}", b.name);
        assert!(b.store.delete_device(&id("truck-7")).await.expect("delete"));
        assert!(!b.store.delete_device(&id("truck-7")).await.expect("delete"));
        assert_eq!(b.store.device(&id("truck-7")).await.expect("get"), None);
    }
}

#[tokio::test]
async fn alerts_are_newest_first_filtered_and_paged() {
    let now = now_ms();
    for b in backends().await {
        let mut alerts = Vec::new();
        for i in 0..25i64 {
            let device = if i % 2 == 0 { "car-a" } else { "car-b" };
            let (kind, fence) = match i % 3 {
                0 => (AlertKind::Overspeed, None),
                1 => (AlertKind::Enter, Some("depot")),
                _ => (AlertKind::Exit, Some("yard")),
            };
            // Spread over three days, so ScyllaDB reads several partitions.
            alerts.push(alert(kind, device, fence, now - i * 3 * 3_600_000));
        }
        let batch = WriteBatch {
            // A repeated alert (a retried batch) is stored once.
            alerts: alerts.iter().cloned().chain([alerts[3].clone()]).collect(),
            ..WriteBatch::default()
        };
        b.store.write_batch(batch.into()).await.expect("write");

        let all_pages = |mut q: AlertQuery| {
            let store = Arc::clone(&b.store);
            async move {
                let mut seen = Vec::new();
                loop {
                    let page = store.alerts(&q).await.expect("alerts");
                    assert!(page.items.len() <= q.limit);
                    seen.extend(page.items);
                    match page.next_cursor {
                        Some(c) => q.cursor = Some(c),
                        None => return seen,
                    }
                }
            }
        };
        let seen = all_pages(alert_query(4, None)).await;
        assert_eq!(seen, alerts, "{}: every alert once, newest first", b.name);

        let mut q = alert_query(3, None);
        q.device = Some(id("car-b"));
        q.kinds = vec![AlertKind::Enter, AlertKind::Exit];
        let want: Vec<Alert> = alerts
            .iter()
            .filter(|a| a.device_id.as_str() == "car-b" && a.kind != AlertKind::Overspeed)
            .cloned()
            .collect();
        assert_eq!(all_pages(q).await, want, "{}", b.name);

        let mut q = alert_query(100, None);
        q.geofence = Some(GeofenceId::parse("depot").expect("id"));
        q.since_ms = now - 24 * 3_600_000;
        let want: Vec<Alert> = alerts
            .iter()
            .filter(|a| {
                a.geofence_id.as_ref().map(|g| g.as_str()) == Some("depot")
                    && a.ts_ms >= now - 24 * 3_600_000
            })
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(all_pages(q).await, want, "{}", b.name);

        for bad in ["", "x", "00000000000001-zzzzzzzzzzzzzzzz"] {
            assert!(
                matches!(
                    b.store.alerts(&alert_query(5, Some(bad.into()))).await,
                    Err(StoreError::InvalidQuery(_))
                ),
                "{}: {bad:?}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn flagged_positions_keep_their_flag() {
    let now = now_ms();
    for b in backends().await {
        let mut p = position("flagged-1", now, 52.52, 13.405);
        p.flag = Some(RejectReason::Teleport);
        b.store
            .write_batch(
                WriteBatch {
                    history: vec![p.clone()],
                    ..WriteBatch::default()
                }
                .into(),
            )
            .await
            .expect("write");
        let page = b
            .store
            .history(&id("flagged-1"), &query(0, i64::MAX, 10, None))
            .await
            .expect("history");
        assert_eq!(page.items, vec![p], "{}", b.name);
    }
}

fn fence_id(s: &str) -> GeofenceId {
    GeofenceId::parse(s).expect("fence id")
}

fn membership(fence: &str, device: &str, ts_ms: i64, entered: bool) -> MembershipChange {
    MembershipChange {
        fence: fence_id(fence),
        device: id(device),
        ts_ms,
        entered,
    }
}

async fn members(store: &dyn Store, fence: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut after: Option<DeviceId> = None;
    loop {
        let page = store
            .geofence_members(&fence_id(fence), after.as_ref(), 2)
            .await
            .expect("members");
        out.extend(
            page.items
                .iter()
                .map(|m| (m.device.to_string(), m.entered_ms)),
        );
        match page.next_cursor {
            Some(c) => after = Some(id(&c)),
            None => return out,
        }
    }
}

#[tokio::test]
async fn geofences_and_their_members() {
    let now = now_ms();
    for b in backends().await {
        let s = &*b.store;
        let name = b.name;
        let depot = StoredGeofence {
            id: fence_id("depot"),
            geojson: r#"{"center":[13.4,52.5],"radius_m":100.0,"id":"depot"}"#.into(),
            updated_ms: now,
        };
        let yard = StoredGeofence {
            id: fence_id("yard"),
            geojson: r#"{"type":"Feature","id":"yard","geometry":null}"#.into(),
            updated_ms: now + 1,
        };
        s.put_geofence(&depot).await.expect("put");
        s.put_geofence(&yard).await.expect("put");
        assert_eq!(
            s.geofence(&depot.id).await.expect("get"),
            Some(depot.clone()),
            "{name}"
        );
        assert_eq!(
            s.geofence(&fence_id("none")).await.expect("get"),
            None,
            "{name}"
        );
        let mut all = s.all_geofences().await.expect("all");
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(all, [depot.clone(), yard.clone()], "{name}");

        // Enters and exits, in order within one batch and across batches.
        let batch = WriteBatch {
            memberships: vec![
                membership("depot", "car-3", now - 5_000, true),
                membership("depot", "car-1", now - 4_000, true),
                membership("depot", "car-2", now - 3_000, true),
                // car-4 passes through within the batch: not a member.
                membership("depot", "car-4", now - 2_000, true),
                membership("depot", "car-4", now - 1_000, false),
                membership("yard", "car-1", now - 4_000, true),
            ],
            ..WriteBatch::default()
        };
        s.write_batch(batch.into()).await.expect("write");
        assert_eq!(
            members(s, "depot").await,
            [
                ("car-1".to_owned(), now - 4_000),
                ("car-2".to_owned(), now - 3_000),
                ("car-3".to_owned(), now - 5_000)
            ],
            "{name}: members by device id, paged by 2"
        );
        let exit = WriteBatch {
            memberships: vec![membership("depot", "car-2", now, false)],
            ..WriteBatch::default()
        };
        s.write_batch(exit.into()).await.expect("write");
        let depot_members: Vec<String> =
            members(s, "depot").await.into_iter().map(|m| m.0).collect();
        assert_eq!(depot_members, ["car-1", "car-3"], "{name}");
        let zero = s.geofence_members(&depot.id, None, 0).await;
        assert!(matches!(zero, Err(StoreError::InvalidQuery(_))), "{name}");

        // Deleting a fence removes it and its members, not other fences'.
        assert!(
            s.delete_geofence(&depot.id).await.expect("delete"),
            "{name}"
        );
        assert!(
            !s.delete_geofence(&depot.id).await.expect("delete"),
            "{name}"
        );
        assert_eq!(s.geofence(&depot.id).await.expect("get"), None, "{name}");
        assert!(members(s, "depot").await.is_empty(), "{name}");
        assert_eq!(members(s, "yard").await.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn credentials_and_tokens_round_trip() {
    use fleetd_schemas::{Principal, Scope, StoredCredential, StoredToken};
    for b in backends().await {
        let s = &*b.store;
        let truck = Principal::Device(id("truck-1"));
        let alice = Principal::user("alice").expect("user name");
        let credential = |principal: &Principal, hash: &str| StoredCredential {
            principal: principal.clone(),
            secret_sha256: hash.into(),
            issued_ms: 1_750_000_000_000,
        };
        assert_eq!(
            s.credential(&truck).await.expect("read"),
            None,
            "{}",
            b.name
        );
        s.put_credentials(&[credential(&truck, "aa"), credential(&alice, "bb")])
            .await
            .expect("provision");
        assert_eq!(
            s.credential(&truck).await.expect("read"),
            Some(credential(&truck, "aa")),
            "{}",
            b.name
        );
        // A device and a user of the same name are different principals.
        let alice_device = Principal::Device(id("alice"));
        assert_eq!(
            s.credential(&alice_device).await.expect("read"),
            None,
            "{}",
            b.name
        );
        // Rotation replaces.
        s.put_credentials(&[credential(&truck, "cc")])
            .await
            .expect("rotate");
        assert_eq!(
            s.credential(&truck)
                .await
                .expect("read")
                .map(|c| c.secret_sha256),
            Some("cc".into()),
            "{}",
            b.name
        );
        assert!(
            s.delete_credential(&truck).await.expect("revoke"),
            "{}",
            b.name
        );
        assert!(
            !s.delete_credential(&truck).await.expect("again"),
            "{}",
            b.name
        );
        assert_eq!(
            s.credential(&truck).await.expect("read"),
            None,
            "{}",
            b.name
        );
        assert!(
            s.credential(&alice).await.expect("read").is_some(),
            "{}",
            b.name
        );

        let token = |id: &str, scopes: Vec<Scope>| StoredToken {
            share: None,
            id: id.into(),
            name: format!("token {id}"),
            scopes,
            secret_sha256: format!("hash-{id}"),
            created_ms: 1_750_000_000_000,
            expires_ms: Some(1_760_000_000_000),
        };
        s.put_token(&token("t1", vec![Scope::Read]))
            .await
            .expect("token");
        s.put_token(&token("t2", vec![Scope::Write, Scope::Admin]))
            .await
            .expect("token");
        let mut all = s.all_tokens().await.expect("list");
        all.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            all,
            [
                token("t1", vec![Scope::Read]),
                token("t2", vec![Scope::Write, Scope::Admin])
            ],
            "{}",
            b.name
        );
        assert!(s.delete_token("t1").await.expect("revoke"), "{}", b.name);
        assert!(!s.delete_token("t1").await.expect("again"), "{}", b.name);
        let left: Vec<String> = s
            .all_tokens()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(left, ["t2"], "{}", b.name);
    }
}
