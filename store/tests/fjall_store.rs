//! Contract tests of [`FjallStore`] through the public [`Store`] trait, in a
//! temporary directory.

use std::collections::BTreeSet;

use fleetd_schemas::{DeviceId, EnrichedPosition};
use fleetd_store::{
    AreaQuery, BBox, FjallStore, HistoryQuery, LatestUpdate, Store, StoreError, WriteBatch,
};
use h3o::{LatLng, Resolution};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("test ids are valid")
}

fn cell(lat: f64, lon: f64, res: Resolution) -> u64 {
    LatLng::new(lat, lon).expect("finite").to_cell(res).into()
}

/// A position with every optional field set, so round trips check them all.
use fleetd_schemas::test_support::full_position as position;

fn new_latest(position: &EnrichedPosition) -> LatestUpdate {
    LatestUpdate {
        position: position.clone(),
        previous_area_cell: None,
    }
}

fn open(dir: &tempfile::TempDir) -> FjallStore {
    FjallStore::open(dir.path()).expect("open store")
}

fn ids(positions: &[EnrichedPosition]) -> BTreeSet<String> {
    positions
        .iter()
        .map(|p| p.report.device_id.to_string())
        .collect()
}

fn history_query(from_ms: i64, to_ms: i64, limit: usize) -> HistoryQuery {
    HistoryQuery {
        from_ms,
        to_ms,
        limit,
        cursor: None,
    }
}

#[tokio::test]
async fn round_trip_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let truck_1 = position("truck-1", 1_000, 52.52, 13.405);
    let truck_2 = position("truck-1", 2_000, 52.53, 13.41);
    let phone = position("alice/phone", -5_000, -33.86, 151.21);
    {
        let store = open(&dir);
        assert!(store.ready().await.is_ok());
        assert_eq!(store.latest(&id("truck-1")).await.expect("latest"), None);
        let batch = WriteBatch {
            history: vec![truck_2.clone(), truck_1.clone(), phone.clone()],
            latest: vec![new_latest(&truck_2), new_latest(&phone)],
            ..WriteBatch::default()
        };
        store.write_batch(batch.into()).await.expect("write");
        assert_eq!(
            store.latest(&id("truck-1")).await.expect("latest"),
            Some(truck_2.clone())
        );
        store.flush().await.expect("flush");
    }

    let store = open(&dir);
    assert_eq!(
        store.latest(&id("truck-1")).await.expect("latest"),
        Some(truck_2.clone())
    );
    assert_eq!(
        store.latest(&id("alice/phone")).await.expect("latest"),
        Some(phone.clone())
    );
    let mut all = store.all_latest().await.expect("all latest");
    all.sort_by(|a, b| a.report.device_id.cmp(&b.report.device_id));
    assert_eq!(all, vec![phone.clone(), truck_2.clone()]);
    let page = store
        .history(&id("truck-1"), &history_query(i64::MIN, i64::MAX, 10))
        .await
        .expect("history");
    assert_eq!(page.items, vec![truck_1, truck_2]);
    assert_eq!(page.next_cursor, None);
    let near_sydney = AreaQuery::Near {
        lat: -33.86,
        lon: 151.21,
        radius_m: 100.0,
    };
    assert_eq!(
        store.latest_in_area(&near_sydney, 10).await.expect("area"),
        vec![phone]
    );
}

#[tokio::test]
async fn moving_device_leaves_its_old_area() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let berlin = position("van-7", 1_000, 52.52, 13.405);
    let munich = position("van-7", 2_000, 48.137, 11.575);
    let around_berlin = AreaQuery::BBox(BBox {
        min_lon: 13.3,
        min_lat: 52.4,
        max_lon: 13.5,
        max_lat: 52.6,
    });
    let around_munich = AreaQuery::Near {
        lat: 48.137,
        lon: 11.575,
        radius_m: 1_000.0,
    };

    store
        .write_batch(
            WriteBatch {
                history: vec![berlin.clone()],
                latest: vec![new_latest(&berlin)],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    assert_eq!(
        store
            .latest_in_area(&around_berlin, 10)
            .await
            .expect("area"),
        vec![berlin.clone()]
    );
    assert_eq!(
        store
            .latest_in_area(&AreaQuery::Cell(berlin.h3.area), 10)
            .await
            .expect("area"),
        vec![berlin.clone()]
    );

    let moved = LatestUpdate {
        position: munich.clone(),
        previous_area_cell: Some(berlin.h3.area),
    };
    store
        .write_batch(
            WriteBatch {
                history: vec![munich.clone()],
                latest: vec![moved],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    assert_eq!(
        store
            .latest_in_area(&around_berlin, 10)
            .await
            .expect("area"),
        vec![]
    );
    assert_eq!(
        store
            .latest_in_area(&AreaQuery::Cell(berlin.h3.area), 10)
            .await
            .expect("area"),
        vec![]
    );
    assert_eq!(
        store
            .latest_in_area(&around_munich, 10)
            .await
            .expect("area"),
        vec![munich.clone()]
    );
    assert_eq!(store.all_latest().await.expect("all"), vec![munich.clone()]);

    // Moving within one cell keeps exactly one area entry.
    let nudged = position("van-7", 3_000, 48.1371, 11.5751);
    assert_eq!(nudged.h3.area, munich.h3.area);
    let same_cell = LatestUpdate {
        position: nudged.clone(),
        previous_area_cell: Some(munich.h3.area),
    };
    store
        .write_batch(
            WriteBatch {
                history: vec![],
                latest: vec![same_cell],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    assert_eq!(
        store
            .latest_in_area(&around_munich, 10)
            .await
            .expect("area"),
        vec![nudged]
    );
}

/// Brute-force reference for area queries, written independently of the
/// store's own filter.
fn brute_force(all: &[EnrichedPosition], query: &AreaQuery) -> BTreeSet<String> {
    let inside = |p: &EnrichedPosition| {
        let (lat, lon) = (p.report.lat, p.report.lon);
        match *query {
            AreaQuery::BBox(b) => {
                let lon_ok = if b.min_lon <= b.max_lon {
                    (b.min_lon..=b.max_lon).contains(&lon)
                } else {
                    lon >= b.min_lon || lon <= b.max_lon
                };
                lon_ok && (b.min_lat..=b.max_lat).contains(&lat)
            }
            AreaQuery::Near {
                lat: c_lat,
                lon: c_lon,
                radius_m,
            } => {
                let a = LatLng::new(c_lat, c_lon).expect("finite");
                let b = LatLng::new(lat, lon).expect("finite");
                // h3o's great-circle distance on the same mean radius.
                a.distance_rads(b) * 6_371_008.8 <= radius_m
            }
            AreaQuery::Cell(raw) => {
                let query_cell = h3o::CellIndex::try_from(raw).expect("valid test cell");
                cell(lat, lon, query_cell.resolution()) == raw
            }
        }
    };
    all.iter()
        .filter(|p| inside(p))
        .map(|p| p.report.device_id.to_string())
        .collect()
}

#[tokio::test]
async fn area_queries_match_brute_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut rng = SmallRng::seed_from_u64(42);
    let mut all = Vec::new();
    for i in 0..5_000 {
        let (lat, lon) = match i % 10 {
            // Berlin and surroundings.
            0..=7 => (rng.random_range(52.2..52.8), rng.random_range(12.9..13.9)),
            // Straddling the antimeridian.
            8 => {
                let lon: f64 = rng.random_range(178.0..182.0);
                (
                    rng.random_range(-5.0..5.0),
                    if lon > 180.0 { lon - 360.0 } else { lon },
                )
            }
            // Around the north pole.
            _ => (
                rng.random_range(88.0..=90.0),
                rng.random_range(-180.0..=180.0),
            ),
        };
        all.push(position(
            &format!("dev-{i}"),
            1_700_000_000_000 + i,
            lat,
            lon,
        ));
    }
    let batch = WriteBatch {
        history: Vec::new(),
        latest: all.iter().map(new_latest).collect(),
        ..WriteBatch::default()
    };
    store.write_batch(batch.into()).await.expect("write");

    let mut queries = vec![
        // Berlin, from a street corner to the whole region.
        AreaQuery::BBox(BBox {
            min_lon: 13.40,
            min_lat: 52.51,
            max_lon: 13.41,
            max_lat: 52.52,
        }),
        AreaQuery::BBox(BBox {
            min_lon: 13.35,
            min_lat: 52.48,
            max_lon: 13.45,
            max_lat: 52.55,
        }),
        AreaQuery::BBox(BBox {
            min_lon: 13.08,
            min_lat: 52.33,
            max_lon: 13.77,
            max_lat: 52.68,
        }),
        AreaQuery::BBox(BBox {
            min_lon: 5.0,
            min_lat: 47.0,
            max_lon: 15.0,
            max_lat: 55.0,
        }),
        // Crossing the antimeridian, narrow and wide.
        AreaQuery::BBox(BBox {
            min_lon: 179.5,
            min_lat: -2.0,
            max_lon: -179.5,
            max_lat: 2.0,
        }),
        AreaQuery::BBox(BBox {
            min_lon: 170.0,
            min_lat: -60.0,
            max_lon: -100.0,
            max_lat: 60.0,
        }),
        // The pole cap, and the world.
        AreaQuery::BBox(BBox {
            min_lon: -180.0,
            min_lat: 89.0,
            max_lon: 180.0,
            max_lat: 90.0,
        }),
        AreaQuery::BBox(BBox {
            min_lon: -180.0,
            min_lat: -90.0,
            max_lon: 180.0,
            max_lat: 90.0,
        }),
        AreaQuery::Near {
            lat: 52.52,
            lon: 13.405,
            radius_m: 300.0,
        },
        AreaQuery::Near {
            lat: 52.52,
            lon: 13.405,
            radius_m: 2_000.0,
        },
        AreaQuery::Near {
            lat: 52.45,
            lon: 13.3,
            radius_m: 15_000.0,
        },
        AreaQuery::Near {
            lat: 50.0,
            lon: 10.0,
            radius_m: 400_000.0,
        },
        AreaQuery::Near {
            lat: 0.0,
            lon: 180.0,
            radius_m: 100_000.0,
        },
        AreaQuery::Near {
            lat: 0.5,
            lon: -179.9,
            radius_m: 30_000.0,
        },
        AreaQuery::Near {
            lat: 90.0,
            lon: 0.0,
            radius_m: 150_000.0,
        },
        AreaQuery::Near {
            lat: 89.0,
            lon: 170.0,
            radius_m: 80_000.0,
        },
        AreaQuery::Near {
            lat: 0.0,
            lon: 0.0,
            radius_m: 2.0e7,
        },
    ];
    // Cells of stored positions at every resolution, so none is empty.
    for res in 0..=15u8 {
        let p = &all[usize::from(res) * 311];
        let res = Resolution::try_from(res).expect("valid");
        queries.push(AreaQuery::Cell(cell(p.report.lat, p.report.lon, res)));
    }

    let mut non_trivial = 0;
    for query in &queries {
        let expected = brute_force(&all, query);
        let found = store
            .latest_in_area(query, 10_000)
            .await
            .expect("area query");
        assert_eq!(found.len(), ids(&found).len(), "{query:?}: duplicates");
        assert_eq!(ids(&found), expected, "{query:?}");
        if expected.len() >= 5 {
            non_trivial += 1;
            // A limit stops early with a subset of the answer.
            let limited = store.latest_in_area(query, 3).await.expect("area query");
            assert_eq!(limited.len(), 3, "{query:?}");
            assert!(ids(&limited).is_subset(&expected), "{query:?}");
        }
    }
    assert!(
        non_trivial >= 20,
        "only {non_trivial} queries found something"
    );
    let world = AreaQuery::BBox(BBox {
        min_lon: -180.0,
        min_lat: -90.0,
        max_lon: 180.0,
        max_lat: 90.0,
    });
    assert_eq!(brute_force(&all, &world).len(), all.len());
}

#[tokio::test]
async fn invalid_area_queries_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    for query in [
        AreaQuery::Cell(0x1234),
        AreaQuery::BBox(BBox {
            min_lon: 0.0,
            min_lat: 10.0,
            max_lon: 1.0,
            max_lat: -10.0,
        }),
        AreaQuery::Near {
            lat: 0.0,
            lon: 0.0,
            radius_m: f64::NAN,
        },
    ] {
        let result = store.latest_in_area(&query, 10).await;
        assert!(
            matches!(result, Err(StoreError::InvalidQuery(_))),
            "{query:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn history_pages_return_every_row_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut rng = SmallRng::seed_from_u64(3);
    // Irregular timestamps around zero, written out of order; a device
    // whose id extends the first one's must never leak into its pages.
    let mut times: Vec<i64> = (0..257)
        .map(|i| i * 1_000 - 40_000 + rng.random_range(0..999))
        .collect();
    let mut history: Vec<_> = times
        .iter()
        .map(|&ts| position("bus", ts, 52.5, 13.4))
        .collect();
    history.extend(times.iter().map(|&ts| position("bus0", ts, 52.5, 13.4)));
    history.reverse();
    store
        .write_batch(
            WriteBatch {
                history,
                latest: vec![],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    times.sort_unstable();

    let (from_ms, to_ms) = (times[10], times[200]);
    let expected: Vec<i64> = times[10..=200].to_vec();
    for limit in [1, 7, 50, 191, 500] {
        let mut query = history_query(from_ms, to_ms, limit);
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = store.history(&id("bus"), &query).await.expect("history");
            assert!(page.items.len() <= limit);
            assert!(
                page.items
                    .iter()
                    .all(|p| p.report.device_id.as_str() == "bus")
            );
            seen.extend(page.items.iter().map(|p| p.report.ts_ms));
            pages += 1;
            match page.next_cursor {
                Some(cursor) => {
                    assert_eq!(page.items.len(), limit, "only full pages have a successor");
                    query.cursor = Some(cursor);
                }
                None => break,
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
        assert_eq!(pages, expected.len().div_ceil(limit), "limit {limit}");
    }

    // Bounds are inclusive on both ends; an empty range is an empty page.
    let one = store
        .history(&id("bus"), &history_query(times[5], times[5], 10))
        .await
        .expect("history");
    assert_eq!(
        one.items.iter().map(|p| p.report.ts_ms).collect::<Vec<_>>(),
        vec![times[5]]
    );
    let between = store
        .history(&id("bus"), &history_query(times[5] + 1, times[6] - 1, 10))
        .await
        .expect("history");
    assert!(between.items.is_empty() && between.next_cursor.is_none());
    let unknown = store
        .history(&id("bu"), &history_query(i64::MIN, i64::MAX, 10))
        .await
        .expect("history");
    assert!(unknown.items.is_empty());
}

#[tokio::test]
async fn rewriting_a_timestamp_replaces_the_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let first = position("car", 5_000, 52.5, 13.4);
    let second = position("car", 5_000, 52.6, 13.5);
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
                history: vec![second.clone()],
                latest: vec![],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    let page = store
        .history(&id("car"), &history_query(0, 10_000, 10))
        .await
        .expect("history");
    assert_eq!(page.items, vec![second]);
}

#[tokio::test]
async fn malformed_cursor_is_an_invalid_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    store
        .write_batch(
            WriteBatch {
                history: vec![position("car", 1, 0.0, 0.0)],
                latest: vec![],
                ..WriteBatch::default()
            }
            .into(),
        )
        .await
        .expect("write");
    for cursor in ["", "not-a-cursor", "12345", "zzzzzzzzzzzzzzzz"] {
        let query = HistoryQuery {
            cursor: Some(cursor.to_owned()),
            ..history_query(0, 10, 10)
        };
        let result = store.history(&id("car"), &query).await;
        assert!(
            matches!(result, Err(StoreError::InvalidQuery(_))),
            "{cursor:?}: {result:?}"
        );
    }
    let zero_limit = store.history(&id("car"), &history_query(0, 10, 0)).await;
    assert!(matches!(zero_limit, Err(StoreError::InvalidQuery(_))));
}

/// A data directory of an earlier version holds the area index on disk in an
/// `area` keyspace; opening it drops that keyspace and serves latest and area
/// reads from the `latest` keyspace it rebuilds its index from.
#[tokio::test]
async fn legacy_area_keyspace_is_dropped_at_open() {
    use prost::Message;

    let dir = tempfile::tempdir().expect("tempdir");
    let truck = position("truck-1", 1_000, 52.52, 13.405);
    {
        let db = fjall::Database::builder(dir.path())
            .open()
            .expect("open fjall");
        let latest = db
            .keyspace("latest", fjall::KeyspaceCreateOptions::default)
            .expect("latest keyspace");
        let area = db
            .keyspace("area", fjall::KeyspaceCreateOptions::default)
            .expect("area keyspace");
        let value = fleetd_schemas::storage::StoredPosition::from(&truck).encode_to_vec();
        latest.insert("truck-1", value.clone()).expect("insert");
        area.insert(b"stale area row".to_vec(), value)
            .expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    {
        let store = open(&dir);
        assert_eq!(
            store.latest(&id("truck-1")).await.expect("latest"),
            Some(truck.clone())
        );
        let around = AreaQuery::Near {
            lat: 52.52,
            lon: 13.405,
            radius_m: 50.0,
        };
        assert_eq!(
            store.latest_in_area(&around, 10).await.expect("area"),
            vec![truck]
        );
        store.flush().await.expect("flush");
    }
    let db = fjall::Database::builder(dir.path())
        .open()
        .expect("reopen fjall");
    assert!(!db.keyspace_exists("area"));
}
