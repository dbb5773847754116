//! Positions replayed from the journal after a restart: the journal keeps a
//! segment until the store has all of it, so part of what comes back is
//! already stored. Those are dropped here, before the state machine, so a
//! replay never rewrites a stored fix (as a late one) or moves the
//! odometer twice.

use std::collections::{HashMap, HashSet};

use fleetd_schemas::{DeviceId, PositionReport};
use fleetd_store::{HistoryQuery, Store, StoreError};

/// History rows read per query while looking for stored fixes.
const PAGE: usize = 1_000;

/// `replayed` without the fixes the store's history already has.
pub(crate) async fn drop_stored(
    store: &dyn Store,
    replayed: Vec<PositionReport>,
) -> Result<Vec<PositionReport>, StoreError> {
    let mut ranges: HashMap<DeviceId, (i64, i64)> = HashMap::new();
    for p in &replayed {
        let range = ranges
            .entry(p.device_id.clone())
            .or_insert((p.ts_ms, p.ts_ms));
        range.0 = range.0.min(p.ts_ms);
        range.1 = range.1.max(p.ts_ms);
    }
    let mut stored: HashSet<(DeviceId, i64)> = HashSet::new();
    for (device, (from_ms, to_ms)) in ranges {
        let mut query = HistoryQuery {
            from_ms,
            to_ms,
            limit: PAGE,
            cursor: None,
        };
        loop {
            let page = store.history(&device, &query).await?;
            stored.extend(page.items.iter().map(|p| (device.clone(), p.report.ts_ms)));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
    }
    let before = replayed.len();
    let kept: Vec<PositionReport> = replayed
        .into_iter()
        .filter(|p| !stored.contains(&(p.device_id.clone(), p.ts_ms)))
        .collect();
    metrics::counter!("fleetd_replay_already_stored_total").increment((before - kept.len()) as u64);
    metrics::counter!("fleetd_replay_positions_total").increment(kept.len() as u64);
    Ok(kept)
}
