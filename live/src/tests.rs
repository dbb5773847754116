//! Hub tests: sequence numbers, replay and gaps, lag, and live cell counts
//! against a brute-force count.

use std::collections::HashMap;
use std::time::Duration;

use fleetd_schemas::{Alert, AlertDetail, AlertKind, BBox, DeviceId};
use h3o::{LatLng, Resolution};
use tokio::sync::broadcast::error::TryRecvError;

use super::*;

/// A published position (without vehicle state).
fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> LivePosition {
    fleetd_schemas::test_support::position(device, ts_ms, lat, lon).into()
}

fn alert(device: &str, ts_ms: i64) -> Alert {
    Alert::new(
        AlertKind::Overspeed,
        DeviceId::parse(device).expect("id"),
        None,
        ts_ms,
        (52.5, 13.4),
        AlertDetail::default(),
    )
}

fn hub(settings: LiveSettings) -> LiveHub {
    LiveHub::with_base_seq(settings, 100)
}

fn seqs(events: &[Arc<SeqEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[test]
fn sequence_numbers_are_consecutive_and_broadcast_per_batch() {
    let hub = hub(LiveSettings::default());
    let mut sub = hub.subscribe(None, KindSet::ALL);
    assert_eq!(sub.last_seq, 99);
    hub.publish(
        vec![position("a", 1, 52.5, 13.4), position("b", 1, 52.5, 13.4)],
        vec![alert("a", 1)],
    );
    hub.publish(vec![position("a", 2, 52.5, 13.4)], vec![]);
    hub.publish(vec![], vec![]);
    let first = sub.receiver.try_recv().expect("first batch");
    assert_eq!(seqs(&first.events), [100, 101, 102]);
    assert_eq!(first.events[2].event.kind(), EventKind::Alert);
    let second = sub.receiver.try_recv().expect("second batch");
    assert_eq!(seqs(&second.events), [103]);
    assert!(matches!(sub.receiver.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(hub.published(), 4);
}

#[test]
fn resume_replays_what_followed_in_order_and_by_kind() {
    let hub = hub(LiveSettings::default());
    hub.publish(vec![position("a", 1, 1.0, 1.0)], vec![alert("a", 1)]); // 100, 101
    hub.publish(vec![position("a", 2, 1.0, 1.0)], vec![alert("a", 2)]); // 102, 103
    hub.publish(vec![position("a", 3, 1.0, 1.0)], vec![]); // 104
    let sub = hub.subscribe(Some(100), KindSet::ALL);
    assert_eq!(seqs(&sub.replay), [101, 102, 103, 104]);
    assert!(sub.gaps.is_empty());
    assert_eq!(sub.last_seq, 104);
    let alerts_only = KindSet {
        positions: false,
        alerts: true,
    };
    let sub = hub.subscribe(Some(99), alerts_only);
    assert_eq!(seqs(&sub.replay), [101, 103]);
    assert!(hub.subscribe(Some(104), KindSet::ALL).replay.is_empty());
}

#[test]
fn evicted_events_are_named_as_gaps_per_kind() {
    let hub = hub(LiveSettings {
        replay_positions: 2,
        replay_alerts: 10,
        ..LiveSettings::default()
    });
    hub.publish(vec![position("a", 1, 1.0, 1.0)], vec![alert("a", 1)]); // 100 p, 101 a
    for ts in 2..=4 {
        hub.publish(vec![position("a", ts, 1.0, 1.0)], vec![]); // 102, 103, 104
    }
    // Positions 100 and 102 were evicted; the alert is still there.
    let sub = hub.subscribe(Some(99), KindSet::ALL);
    assert_eq!(
        sub.gaps,
        [Gap {
            kind: EventKind::Position,
            from_seq: 100,
            to_seq: 102,
            reason: GapReason::Expired,
        }]
    );
    assert_eq!(seqs(&sub.replay), [101, 103, 104]);
    let alerts_only = KindSet {
        positions: false,
        alerts: true,
    };
    let sub = hub.subscribe(Some(99), alerts_only);
    assert!(sub.gaps.is_empty(), "{:?}", sub.gaps);
    assert_eq!(seqs(&sub.replay), [101]);
    // Resuming after the evicted range is not a gap.
    assert!(hub.subscribe(Some(102), KindSet::ALL).gaps.is_empty());
}

#[test]
fn old_events_expire_by_age() {
    let hub = hub(LiveSettings {
        replay_age: Duration::from_millis(30),
        ..LiveSettings::default()
    });
    hub.publish(vec![], vec![alert("a", 1)]); // 100
    std::thread::sleep(Duration::from_millis(60));
    hub.publish(vec![], vec![alert("a", 2)]); // 101
    let sub = hub.subscribe(Some(99), KindSet::ALL);
    assert_eq!(seqs(&sub.replay), [101]);
    assert_eq!(sub.gaps.len(), 1);
    assert_eq!(
        (sub.gaps[0].kind, sub.gaps[0].to_seq),
        (EventKind::Alert, 100)
    );
}

#[test]
fn ids_from_before_start_or_from_the_future_are_gaps() {
    let hub = hub(LiveSettings::default());
    hub.publish(vec![], vec![alert("a", 1)]); // 100
    let sub = hub.subscribe(Some(42), KindSet::ALL);
    assert_eq!(sub.gaps.len(), 2);
    assert!(
        sub.gaps
            .iter()
            .all(|g| g.reason == GapReason::BeforeStart && g.from_seq == 43 && g.to_seq == 99)
    );
    assert_eq!(seqs(&sub.replay), [100]);
    let sub = hub.subscribe(Some(500), KindSet::ALL);
    assert_eq!(sub.gaps[0].reason, GapReason::UnknownSequence);
    assert!(sub.replay.is_empty());
}

#[test]
fn new_hubs_number_after_older_processes() {
    let a = LiveHub::new(LiveSettings::default());
    a.publish(vec![], vec![alert("a", 1)]);
    let last = a.subscribe(None, KindSet::ALL).last_seq;
    std::thread::sleep(Duration::from_millis(2));
    let b = LiveHub::new(LiveSettings::default());
    assert!(b.subscribe(None, KindSet::ALL).last_seq > last);
}

#[test]
fn a_slow_receiver_lags_without_slowing_publish() {
    let hub = hub(LiveSettings {
        broadcast_batches: 2,
        ..LiveSettings::default()
    });
    let mut sub = hub.subscribe(None, KindSet::ALL);
    for ts in 0..5 {
        hub.publish(vec![position("a", ts, 1.0, 1.0)], vec![]);
    }
    assert!(matches!(
        sub.receiver.try_recv(),
        Err(TryRecvError::Lagged(3))
    ));
    // What it missed is still in the replay buffer.
    let again = hub.subscribe(Some(99), KindSet::ALL);
    assert_eq!(seqs(&again.replay), [100, 101, 102, 103, 104]);
}

#[test]
fn replay_and_live_meet_without_gap_or_overlap_under_concurrent_publish() {
    let hub = hub(LiveSettings {
        broadcast_batches: 100_000,
        ..LiveSettings::default()
    });
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            for ts in 0..2000 {
                hub.publish(vec![], vec![alert("a", ts)]);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1));
    let mut sub = hub.subscribe(Some(99), KindSet::ALL);
    publisher.join().expect("publisher");
    let mut got = seqs(&sub.replay);
    while let Ok(batch) = sub.receiver.try_recv() {
        got.extend(seqs(&batch.events));
    }
    let expected: Vec<u64> = (100..2100).collect();
    assert_eq!(got, expected);
}

/// Counts per cell by brute force: every device's newest position, its res-9
/// cell and that cell's H3 parent at `res`.
fn brute_force(
    latest: &HashMap<String, (f64, f64)>,
    res: Resolution,
) -> HashMap<h3o::CellIndex, u32> {
    let mut counts = HashMap::new();
    for (lat, lon) in latest.values() {
        let cell = LatLng::new(*lat, *lon)
            .expect("ll")
            .to_cell(Resolution::Nine)
            .parent(res)
            .expect("parent");
        *counts.entry(cell).or_insert(0) += 1;
    }
    counts
}

#[test]
fn cell_counts_follow_moving_devices_at_every_resolution() {
    let hub = hub(LiveSettings::default());
    let mut latest: HashMap<String, (f64, f64)> = HashMap::new();
    let devices = ["a", "b", "c", "d", "e", "f"];
    // A deterministic walk around Berlin, with devices crossing cells.
    let mut step = 0u32;
    for round in 0..40 {
        let mut batch = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            step = step.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let lat = 52.40 + f64::from(step % 2000) / 10_000.0;
            let lon = 13.30 + f64::from((step / 2000) % 3000) / 10_000.0 + i as f64 * 0.01;
            batch.push(position(d, round, lat, lon));
            latest.insert((*d).to_owned(), (lat, lon));
        }
        hub.publish(batch.clone(), vec![]);
    }
    for res in CELL_RESOLUTIONS {
        let res = Resolution::try_from(res).expect("res");
        let answer = hub.cells(res, None, 10_000).expect("served");
        let got: HashMap<_, _> = answer.cells.iter().map(|c| (c.cell, c.count)).collect();
        assert_eq!(got, brute_force(&latest, res), "res {res}");
        assert_eq!(answer.vehicles, devices.len() as u64);
        assert!(!answer.truncated);
    }
    assert!(hub.cells(Resolution::Ten, None, 10).is_none());
    assert!(hub.cells(Resolution::Four, None, 10).is_none());
}

#[test]
fn cell_queries_filter_by_bbox_and_limit() {
    let hub = hub(LiveSettings::default());
    hub.publish(
        vec![
            position("a", 1, 52.52, 13.40),
            position("b", 1, 52.52, 13.40),
            position("c", 1, 48.85, 2.35),
        ],
        vec![],
    );
    let berlin = BBox {
        min_lon: 13.0,
        min_lat: 52.0,
        max_lon: 14.0,
        max_lat: 53.0,
    };
    let answer = hub
        .cells(Resolution::Seven, Some(&berlin), 100)
        .expect("served");
    assert_eq!(answer.cells.len(), 1);
    assert_eq!(answer.cells[0].count, 2);
    let all = hub.cells(Resolution::Seven, None, 1).expect("served");
    assert!(all.truncated);
    assert_eq!(all.cells[0].count, 2, "busiest first");
}

#[test]
fn silent_devices_leave_the_counts_and_seeded_ones_count() {
    let hub = hub(LiveSettings {
        cells_max_age: Duration::from_millis(40),
        ..LiveSettings::default()
    });
    hub.seed(&[position("old", 1, 52.52, 13.40).position]);
    assert_eq!(lock(&hub.inner.cells).devices(), 1);
    std::thread::sleep(Duration::from_millis(80));
    hub.publish(vec![position("new", 2, 52.52, 13.40)], vec![]);
    let answer = hub.cells(Resolution::Nine, None, 10).expect("served");
    assert_eq!(answer.vehicles, 1);
    assert_eq!(lock(&hub.inner.cells).devices(), 1);
}
