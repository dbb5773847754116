//! The embedded backend's in-memory index of latest positions.
//!
//! Every device's latest position lives in RAM, compact, bucketed by its
//! res-7 H3 cell: an area query is a cover ([`crate::cover`]), one hash
//! lookup per cover cell and an exact test of the bucket's entries, and a
//! `latest` read is one lookup. The `latest` keyspace stays the durable
//! copy; the index is rebuilt from it when the store opens.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleetd_schemas::{
    DeviceId, DeviceSlots, EnrichedPosition, H3Cells, PositionReport, RejectReason,
};
use h3o::{CellIndex, Resolution};
use tracing::warn;

use crate::area::{AreaQuery, BBox};
use crate::{LatestUpdate, StoreError, cover, keys};

/// Updates applied under one write lock: a reader waits at most for this
/// many (~0.1 ms), not for a whole batch.
const WRITE_CHUNK: usize = 1_024;

/// Slack added around a circle's bounding box before it is used to reject
/// candidates cheaply (~0.1 mm): the exact test decides, so the quick one
/// must never be stricter than it, whatever the rounding.
const PREFILTER_SLACK_DEG: f64 = 1e-9;

/// `Slot::at` of a device whose position has no valid area cell: kept for
/// `latest` reads, in no bucket.
const NOT_INDEXED: u32 = u32::MAX;

/// Latest positions of every device, by device and by res-7 cell.
///
/// A batch is applied in chunks of [`WRITE_CHUNK`] devices, each under the
/// write lock: a concurrent reader sees every device either before or after
/// its update, never twice or missing, but may see part of a batch.
#[derive(Debug, Default)]
pub(crate) struct LatestIndex {
    inner: RwLock<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// Device → handle (index into `slots`). Handles are never reused: the
    /// store has no way to forget a device's latest position.
    handles: DeviceSlots,
    slots: Vec<Slot>,
    /// Res-7 cell → the devices whose latest position lies in it.
    cells: HashMap<u64, Bucket>,
}

/// One device: its id and latest position.
#[derive(Debug)]
struct Slot {
    id: DeviceId,
    latest: Compact,
    /// Where the device's entry sits in its cell's bucket, or [`NOT_INDEXED`].
    at: u32,
}

/// The devices of one res-7 cell.
#[derive(Debug)]
struct Bucket {
    entries: Vec<Entry>,
    /// A lat/lon box around the cell, so a query skips cells that cannot
    /// hold a match without testing their entries (a cover adds a ring of
    /// cells around the area, most of which lie outside it); `None` where
    /// a box would not be tight (near the poles, across the antimeridian).
    bounds: Option<BBox>,
}

impl Bucket {
    fn new(cell: u64) -> Self {
        Self {
            entries: Vec::new(),
            bounds: cell_bounds(cell),
        }
    }
}

/// A bucket entry: what the exact test reads, next to each other in memory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    lat: f64,
    lon: f64,
    handle: u32,
}

/// An [`EnrichedPosition`] without its device id, in 80 bytes instead of
/// ~130: at a million devices the difference is ~50 MB.
#[derive(Debug, Clone, Copy)]
struct Compact {
    ts_ms: i64,
    received_ms: i64,
    lat: f64,
    lon: f64,
    seq: u64,
    area: u64,
    detail: u64,
    /// accuracy, altitude, speed, heading, battery; present per `present` bit.
    optional: [f32; 5],
    /// Bits 0–4: `optional[i]` is present; bit 5: `seq` is present.
    present: u8,
    speed_derived: bool,
    heading_derived: bool,
    flag: Option<RejectReason>,
}

const SEQ_BIT: u8 = 1 << 5;

impl Compact {
    fn new(p: &EnrichedPosition) -> Self {
        let r = &p.report;
        let fields = [
            r.accuracy_m,
            r.altitude_m,
            r.speed_mps,
            r.heading_deg,
            r.battery_pct,
        ];
        let mut optional = [0.0; 5];
        let mut present = 0u8;
        for (i, value) in fields.into_iter().enumerate() {
            if let Some(v) = value {
                optional[i] = v;
                present |= 1 << i;
            }
        }
        if r.seq.is_some() {
            present |= SEQ_BIT;
        }
        Self {
            ts_ms: r.ts_ms,
            received_ms: r.received_ms,
            lat: r.lat,
            lon: r.lon,
            seq: r.seq.unwrap_or_default(),
            area: p.h3.area,
            detail: p.h3.detail,
            optional,
            present,
            speed_derived: p.speed_derived,
            heading_derived: p.heading_derived,
            flag: p.flag,
        }
    }

    fn expand(&self, id: &DeviceId) -> EnrichedPosition {
        let field = |i: usize| (self.present & (1 << i) != 0).then_some(self.optional[i]);
        EnrichedPosition {
            report: PositionReport {
                device_id: id.clone(),
                ts_ms: self.ts_ms,
                lat: self.lat,
                lon: self.lon,
                accuracy_m: field(0),
                altitude_m: field(1),
                speed_mps: field(2),
                heading_deg: field(3),
                battery_pct: field(4),
                seq: (self.present & SEQ_BIT != 0).then_some(self.seq),
                received_ms: self.received_ms,
            },
            h3: H3Cells {
                area: self.area,
                detail: self.detail,
            },
            speed_derived: self.speed_derived,
            heading_derived: self.heading_derived,
            flag: self.flag,
        }
    }
}

impl LatestIndex {
    /// Makes each update the device's latest position (later entries of
    /// `updates` win), moving the device between cells as needed.
    pub(crate) fn apply(&self, updates: &[LatestUpdate]) {
        for chunk in updates.chunks(WRITE_CHUNK) {
            let mut index = self.write();
            for update in chunk {
                index.set(&update.position);
            }
        }
    }

    /// Adds positions read back from disk (at open), one at a time so
    /// that a million of them never sit in a vector; stops at the first
    /// error.
    pub(crate) fn restore(
        &self,
        positions: impl IntoIterator<Item = Result<EnrichedPosition, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut index = self.write();
        for position in positions {
            index.set(&position?);
        }
        Ok(())
    }

    /// `device`'s latest position.
    pub(crate) fn get(&self, device: &DeviceId) -> Option<EnrichedPosition> {
        let index = self.read();
        let slot = index.slots.get(index.handle(device)? as usize)?;
        Some(slot.latest.expand(&slot.id))
    }

    /// Every device's latest position.
    pub(crate) fn all(&self) -> Vec<EnrichedPosition> {
        let index = self.read();
        index.slots.iter().map(|s| s.latest.expand(&s.id)).collect()
    }

    /// How many devices have a latest position.
    pub(crate) fn len(&self) -> usize {
        self.read().slots.len()
    }

    /// Latest positions inside `area` (already validated), at most `limit`.
    ///
    /// The cover is planned before the lock is taken, so writers wait only
    /// for the lookups and tests.
    pub(crate) fn in_area(
        &self,
        area: &AreaQuery,
        limit: usize,
    ) -> Result<Vec<EnrichedPosition>, StoreError> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let test = Test::new(area);
        let Some(cover) = cover::cover(area)? else {
            let index = self.read();
            for slot in &index.slots {
                if test.contains(slot.latest.lat, slot.latest.lon) {
                    found.push(slot.latest.expand(&slot.id));
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            return Ok(found);
        };
        let index = self.read();
        let mut visit = |bucket: &Bucket| {
            if let (Some(query), Some(cell)) = (test.prefilter, bucket.bounds)
                && !overlaps(&query, &cell)
            {
                return false;
            }
            for entry in &bucket.entries {
                if test.contains(entry.lat, entry.lon)
                    && let Some(slot) = index.slots.get(entry.handle as usize)
                {
                    found.push(slot.latest.expand(&slot.id));
                    if found.len() >= limit {
                        return true;
                    }
                }
            }
            false
        };
        let area_res = keys::area_resolution();
        let children: usize = cover.iter().map(|c| descendants(*c, area_res)).sum();
        if children <= index.cells.len() {
            // Few enough res-7 cells to look each one up.
            for cell in &cover {
                for child in cell.children(area_res) {
                    if let Some(bucket) = index.cells.get(&u64::from(child))
                        && visit(bucket)
                    {
                        return Ok(found);
                    }
                }
            }
        } else {
            // A coarse cover over a sparse index: cheaper to walk the
            // occupied cells and keep those inside the cover's ranges.
            let ranges = cover::ranges(cover.iter().copied());
            for (cell, bucket) in &index.cells {
                let at = ranges.partition_point(|r| r.end() < cell);
                if ranges.get(at).is_some_and(|r| r.contains(cell)) && visit(bucket) {
                    return Ok(found);
                }
            }
        }
        Ok(found)
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        // The index is consistent between statements (no update panics
        // half-way through a device), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Index {
    /// `device`'s handle, if it has a latest position.
    fn handle(&self, device: &DeviceId) -> Option<u32> {
        let slots = &self.slots;
        self.handles.get(device, |h| &slots[h as usize].id)
    }

    /// Makes `position` its device's latest.
    fn set(&mut self, position: &EnrichedPosition) {
        let device = &position.report.device_id;
        let latest = Compact::new(position);
        let new_cell = is_area_cell(latest.area).then_some(latest.area);
        if new_cell.is_none() {
            // Without a valid cell no query would look for it; say so
            // rather than index it where nothing looks.
            warn!(
                device_id = %device,
                cell = format_args!("{:#x}", latest.area),
                "latest position has no valid res-7 area cell; left out of area queries"
            );
        }
        let handle = match self.handle(device) {
            Some(handle) => handle,
            None => {
                let Ok(handle) = u32::try_from(self.slots.len()) else {
                    warn!(device_id = %device, "latest index is full; device left out");
                    return;
                };
                self.slots.push(Slot {
                    id: device.clone(),
                    latest,
                    at: NOT_INDEXED,
                });
                let slots = &self.slots;
                self.handles
                    .insert(device, handle, |h| &slots[h as usize].id);
                handle
            }
        };
        let Some(slot) = self.slots.get_mut(handle as usize) else {
            return;
        };
        let old_cell = (slot.at != NOT_INDEXED).then_some(slot.latest.area);
        let old_at = slot.at;
        slot.latest = latest;
        let entry = Entry {
            lat: latest.lat,
            lon: latest.lon,
            handle,
        };
        if old_cell.is_some() && old_cell == new_cell {
            if let Some(e) = old_cell
                .and_then(|c| self.cells.get_mut(&c))
                .and_then(|bucket| bucket.entries.get_mut(old_at as usize))
            {
                *e = entry;
            }
            return;
        }
        if let Some(cell) = old_cell {
            self.remove(cell, old_at);
        }
        let at = match new_cell {
            Some(cell) => {
                let bucket = self.cells.entry(cell).or_insert_with(|| Bucket::new(cell));
                bucket.entries.push(entry);
                u32::try_from(bucket.entries.len() - 1).unwrap_or(NOT_INDEXED)
            }
            None => NOT_INDEXED,
        };
        if let Some(slot) = self.slots.get_mut(handle as usize) {
            slot.at = at;
        }
    }

    /// Takes the entry at `at` out of `cell`'s bucket, moving the bucket's
    /// last entry into its place.
    fn remove(&mut self, cell: u64, at: u32) {
        let Some(bucket) = self.cells.get_mut(&cell) else {
            return;
        };
        let entries = &mut bucket.entries;
        let at = at as usize;
        if at >= entries.len() {
            return;
        }
        entries.swap_remove(at);
        if let Some(moved) = entries.get(at)
            && let Some(slot) = self.slots.get_mut(moved.handle as usize)
        {
            slot.at = at as u32;
        }
        if entries.is_empty() {
            self.cells.remove(&cell);
        }
    }
}

/// The exact test of a query, with a cheap box test first for circles.
struct Test {
    area: AreaQuery,
    /// A box around the area (the query's own, or a circle's) that rejects
    /// whole cells, and most candidates, without trigonometry.
    prefilter: Option<BBox>,
}

impl Test {
    fn new(area: &AreaQuery) -> Self {
        let prefilter = match *area {
            AreaQuery::Near { lat, lon, radius_m } => {
                cover::circle_bbox(lat, lon, radius_m).map(|b| BBox {
                    min_lon: b.min_lon - PREFILTER_SLACK_DEG,
                    min_lat: b.min_lat - PREFILTER_SLACK_DEG,
                    max_lon: b.max_lon + PREFILTER_SLACK_DEG,
                    max_lat: b.max_lat + PREFILTER_SLACK_DEG,
                })
            }
            AreaQuery::BBox(bbox) => Some(bbox),
            AreaQuery::Cell(_) => None,
        };
        Self {
            area: *area,
            prefilter,
        }
    }

    fn contains(&self, lat: f64, lon: f64) -> bool {
        self.prefilter.is_none_or(|b| b.contains(lat, lon)) && self.area.contains(lat, lon)
    }
}

/// Margin around a cell's vertices, degrees of latitude (~11 m): a cell's
/// edges are great-circle arcs, which bow away from the straight lat/lon
/// line between two vertices by well under a metre at res 7 outside the
/// polar caps.
const CELL_MARGIN_DEG: f64 = 1e-4;
/// Beyond this latitude boxes are not worth it (longitude degrees shrink
/// to nothing and cells may hold a pole).
const MAX_BOUNDED_LAT: f64 = 80.0;

/// A box around a res-7 cell: its vertices' extent plus a margin; `None`
/// when the cell is invalid, near a pole or spans the antimeridian.
fn cell_bounds(raw: u64) -> Option<BBox> {
    let cell = CellIndex::try_from(raw).ok()?;
    let boundary = cell.boundary();
    let (mut min_lat, mut max_lat) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut min_lon, mut max_lon) = (f64::INFINITY, f64::NEG_INFINITY);
    for vertex in boundary.iter() {
        min_lat = min_lat.min(vertex.lat());
        max_lat = max_lat.max(vertex.lat());
        min_lon = min_lon.min(vertex.lng());
        max_lon = max_lon.max(vertex.lng());
    }
    let polar = max_lat.abs().max(min_lat.abs()) > MAX_BOUNDED_LAT;
    if !min_lat.is_finite() || polar || max_lon - min_lon > 180.0 {
        return None;
    }
    let lon_margin = CELL_MARGIN_DEG / MAX_BOUNDED_LAT.to_radians().cos();
    Some(BBox {
        min_lon: min_lon - lon_margin,
        min_lat: min_lat - CELL_MARGIN_DEG,
        max_lon: max_lon + lon_margin,
        max_lat: max_lat + CELL_MARGIN_DEG,
    })
}

/// Whether a query box (which may cross the antimeridian) meets a cell box
/// (which never does).
fn overlaps(query: &BBox, cell: &BBox) -> bool {
    let lat = query.min_lat <= cell.max_lat && cell.min_lat <= query.max_lat;
    let lon = if query.crosses_antimeridian() {
        cell.max_lon >= query.min_lon || cell.min_lon <= query.max_lon
    } else {
        query.min_lon <= cell.max_lon && cell.min_lon <= query.max_lon
    };
    lat && lon
}

/// How many res-`res` descendants `cell` has at most (`cell` itself when it
/// is that fine already).
fn descendants(cell: CellIndex, res: Resolution) -> usize {
    let depth = u8::from(res).saturating_sub(u8::from(cell.resolution()));
    7usize.saturating_pow(u32::from(depth))
}

/// Whether `raw` is an H3 cell at the area index resolution.
fn is_area_cell(raw: u64) -> bool {
    CellIndex::try_from(raw).is_ok_and(|cell| u8::from(cell.resolution()) == H3Cells::AREA_RES)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn position(device: &str, ts_ms: i64, lat: f64, lon: f64) -> EnrichedPosition {
        let mut p = fleetd_schemas::test_support::position(device, ts_ms, lat, lon);
        p.report.received_ms = ts_ms + 5;
        p
    }

    fn update(position: EnrichedPosition) -> LatestUpdate {
        LatestUpdate {
            position,
            previous_area_cell: None,
        }
    }

    #[test]
    fn compact_positions_keep_every_field() {
        let bare = position("a", 1_000, 52.5, 13.4);
        let mut full = position("b", 2_000, -33.9, 151.2);
        let r = &mut full.report;
        (r.accuracy_m, r.altitude_m, r.speed_mps) = (Some(3.5), Some(-2.0), Some(0.0));
        (r.heading_deg, r.battery_pct, r.seq) = (Some(359.5), Some(77.0), Some(u64::MAX));
        full.speed_derived = true;
        full.flag = Some(RejectReason::Teleport);
        let mut partial = position("c", 3_000, 0.0, 0.0);
        (partial.report.altitude_m, partial.report.seq) = (Some(12.0), Some(0));
        partial.heading_derived = true;
        for p in [bare, full, partial] {
            assert_eq!(Compact::new(&p).expand(&p.report.device_id), p);
        }
    }

    /// Devices wander between cells in random batches; after each batch
    /// every latest read and every area query matches a plain map of
    /// latest positions tested one by one.
    #[test]
    fn moves_keep_the_index_equal_to_brute_force() {
        let mut rng = SmallRng::seed_from_u64(7);
        let index = LatestIndex::default();
        let mut truth = std::collections::BTreeMap::new();
        for round in 0..60i64 {
            // A 30 × 30 km patch, in Berlin or (every other round, where a
            // degree of longitude is a third as long) in Tromsø: several
            // res-7 cells per device walk, and jumps between the two.
            let (lat0, lon0, lon_span) = if round % 2 == 0 {
                (52.4, 13.2, 0.44)
            } else {
                (69.5, 18.6, 0.78)
            };
            let batch: Vec<LatestUpdate> = (0..rng.random_range(1..300))
                .map(|_| {
                    let device = format!("d{}", rng.random_range(0..500));
                    let lat = lat0 + rng.random_range(0.0..0.27);
                    let lon = lon0 + rng.random_range(0.0..lon_span);
                    update(position(&device, round, lat, lon))
                })
                .collect();
            index.apply(&batch);
            for u in &batch {
                truth.insert(u.position.report.device_id.clone(), u.position.clone());
            }
            assert_eq!(index.len(), truth.len());
            for (id, p) in &truth {
                assert_eq!(index.get(id).as_ref(), Some(p));
            }
            let (lat, lon) = (
                lat0 + 0.1 + rng.random_range(0.0..0.1),
                lon0 + 0.1 + rng.random_range(0.0..lon_span / 2.0),
            );
            let radius_m = rng.random_range(0.0..5_000.0);
            let queries = [
                AreaQuery::Near { lat, lon, radius_m },
                AreaQuery::BBox(BBox {
                    min_lon: lon - 0.05,
                    min_lat: lat - 0.03,
                    max_lon: lon,
                    max_lat: lat,
                }),
                AreaQuery::Cell(position("x", 0, lat, lon).h3.area),
            ];
            for query in queries {
                let mut got: Vec<_> = index
                    .in_area(&query, usize::MAX)
                    .expect("valid")
                    .into_iter()
                    .map(|p| p.report.device_id)
                    .collect();
                got.sort();
                let want: Vec<_> = truth
                    .values()
                    .filter(|p| query.contains(p.report.lat, p.report.lon))
                    .map(|p| p.report.device_id.clone())
                    .collect();
                assert_eq!(got, want, "{query:?} in round {round}");
                let limited = index.in_area(&query, 2).expect("valid");
                assert_eq!(limited.len(), want.len().min(2));
            }
        }
        assert_eq!(index.all().len(), truth.len());
    }

    #[test]
    fn position_without_area_cell_is_read_but_not_indexed() {
        let index = LatestIndex::default();
        let mut odd = position("odd", 1, 52.5, 13.4);
        odd.h3.area = 0;
        index.apply(&[update(odd.clone())]);
        assert_eq!(index.get(&odd.report.device_id), Some(odd.clone()));
        let near = AreaQuery::Near {
            lat: 52.5,
            lon: 13.4,
            radius_m: 100.0,
        };
        assert!(index.in_area(&near, 10).expect("valid").is_empty());
        // Once it has a valid cell again it is found, and only once.
        let fixed = position("odd", 2, 52.5, 13.4);
        index.apply(&[update(fixed.clone())]);
        assert_eq!(index.in_area(&near, 10).expect("valid"), vec![fixed]);
    }

    #[test]
    fn coarse_cover_over_a_sparse_index_walks_occupied_cells() {
        // A 600 km box has a res-4-ish cover with far more res-7 children
        // than the two occupied cells, which takes the other branch.
        let index = LatestIndex::default();
        let inside = position("in", 1, 50.0, 10.0);
        let outside = position("out", 1, 40.0, 10.0);
        index.apply(&[update(inside.clone()), update(outside)]);
        let query = AreaQuery::BBox(BBox {
            min_lon: 7.0,
            min_lat: 48.0,
            max_lon: 13.0,
            max_lat: 52.0,
        });
        assert_eq!(index.in_area(&query, 10).expect("valid"), vec![inside]);
    }
}
