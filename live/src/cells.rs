//! Live vehicle counts per H3 cell at resolutions 5–9, maintained
//! incrementally as positions are published.
//!
//! A vehicle counts in its res-9 cell and in that cell's H3 parents, so the
//! counts of the children always add up to the parent's. Near cell edges a
//! parent can differ from the cell H3 would assign the point to directly at
//! the coarser resolution (H3 cells do not nest exactly).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetd_schemas::{BBox, DeviceRows, EnrichedPosition};
use h3o::{CellIndex, LatLng, Resolution};

/// The resolutions `GET /v1/cells` serves.
pub const CELL_RESOLUTIONS: std::ops::RangeInclusive<u8> = 5..=9;

const N_RES: usize = 5;
const FINEST: Resolution = Resolution::Nine;

/// One occupied cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellCount {
    /// The cell.
    pub cell: CellIndex,
    /// Vehicles whose latest position lies in it.
    pub count: u32,
}

/// The answer of a cells query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellsAnswer {
    /// Cells, busiest first (ties by cell index).
    pub cells: Vec<CellCount>,
    /// Vehicles counted in the returned cells.
    pub vehicles: u64,
    /// More cells matched than were returned.
    pub truncated: bool,
}

/// Kept per device, so kept small (16 bytes; with its id and slot a million
/// devices cost ~45 MB, against ~150 MB for a `HashMap` of all five cells
/// and an `Instant`).
#[derive(Debug)]
struct DeviceCells {
    /// The device's res-9 cell; its coarser cells are its parents.
    finest: CellIndex,
    /// When it was last seen, in ms since [`CellCounts::epoch`].
    seen_ms: u64,
}

/// Per-device cells and per-cell counts. A device counts in the cell of its
/// newest position until it has been silent for `max_age`.
#[derive(Debug)]
pub(super) struct CellCounts {
    /// Packed rows behind 4-byte slots: a `HashMap<DeviceId, DeviceCells>`
    /// would be 32 bytes a bucket, and at ⅞ load at most that is ~70 MB
    /// for a million devices; the rows and slots are ~45 MB.
    devices: DeviceRows<DeviceCells>,
    counts: [HashMap<CellIndex, u32>; N_RES],
    max_age: Duration,
    last_sweep: Option<Instant>,
    /// Origin of `DeviceCells::seen_ms`.
    epoch: Instant,
}

impl CellCounts {
    pub(super) fn new(max_age: Duration) -> Self {
        Self {
            devices: DeviceRows::default(),
            counts: Default::default(),
            max_age,
            last_sweep: None,
            epoch: Instant::now(),
        }
    }

    /// Moves the device to the cells of `p` (positions arrive newest-last
    /// per device: the processor publishes only new latest positions).
    pub(super) fn update(&mut self, p: &EnrichedPosition, now: Instant) {
        let Some(finest) = finest_cell(p) else {
            return;
        };
        let cells = parents(finest);
        let seen_ms = self.ms_since_epoch(now);
        let device = &p.report.device_id;
        match self.devices.get_mut(device) {
            Some(known) => {
                let old = parents(known.finest);
                known.finest = finest;
                known.seen_ms = seen_ms;
                for (i, (old, new)) in old.into_iter().zip(cells).enumerate() {
                    if old != new {
                        decrement(&mut self.counts[i], old);
                        *self.counts[i].entry(new).or_insert(0) += 1;
                    }
                }
            }
            None => {
                for (i, cell) in cells.into_iter().enumerate() {
                    *self.counts[i].entry(cell).or_insert(0) += 1;
                }
                self.devices
                    .get_or_insert_with(device, || DeviceCells { finest, seen_ms });
            }
        }
    }

    /// Removes devices silent for longer than `max_age`; runs at most every
    /// tenth of `max_age`, so its linear cost is spread thin.
    pub(super) fn sweep_if_due(&mut self, now: Instant) {
        let every = self.max_age / 10;
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return;
        }
        self.last_sweep = Some(now);
        let max_age_ms = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let now_ms = self.ms_since_epoch(now);
        let counts = &mut self.counts;
        self.devices.retain(|_, d| {
            let keep = now_ms.saturating_sub(d.seen_ms) <= max_age_ms;
            if !keep {
                for (i, cell) in parents(d.finest).into_iter().enumerate() {
                    decrement(&mut counts[i], cell);
                }
            }
            keep
        });
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts at `res`, for cells whose centre lies in `bbox`; `None` when
    /// `res` is outside [`CELL_RESOLUTIONS`].
    pub(super) fn query(
        &self,
        res: Resolution,
        bbox: Option<&BBox>,
        limit: usize,
    ) -> Option<CellsAnswer> {
        let idx = usize::from(u8::from(res)).checked_sub(usize::from(*CELL_RESOLUTIONS.start()))?;
        let counts = self.counts.get(idx)?;
        let mut cells: Vec<CellCount> = counts
            .iter()
            .filter(|(cell, _)| {
                bbox.is_none_or(|b| {
                    let centre = LatLng::from(**cell);
                    b.contains(centre.lat(), centre.lng())
                })
            })
            .map(|(&cell, &count)| CellCount { cell, count })
            .collect();
        cells.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.cell.cmp(&b.cell)));
        let truncated = cells.len() > limit;
        cells.truncate(limit);
        let vehicles = cells.iter().map(|c| u64::from(c.count)).sum();
        Some(CellsAnswer {
            cells,
            vehicles,
            truncated,
        })
    }

    #[cfg(test)]
    pub(super) fn devices(&self) -> usize {
        self.devices.len()
    }
}

fn decrement(counts: &mut HashMap<CellIndex, u32>, cell: CellIndex) {
    if let Some(n) = counts.get_mut(&cell) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&cell);
        }
    }
}

/// The res-9 cell of `p`: the parent of its detail cell when that is fine
/// enough (cheap bit operations), otherwise from its lat/lon.
fn finest_cell(p: &EnrichedPosition) -> Option<CellIndex> {
    match CellIndex::try_from(p.h3.detail) {
        Ok(cell) if cell.resolution() >= FINEST => cell.parent(FINEST),
        _ => Some(
            LatLng::new(p.report.lat, p.report.lon)
                .ok()?
                .to_cell(FINEST),
        ),
    }
}

/// A res-9 cell and its parents at resolutions 5..=9 (bit operations).
fn parents(finest: CellIndex) -> [CellIndex; N_RES] {
    let mut out = [finest; N_RES];
    for (i, res) in CELL_RESOLUTIONS.enumerate() {
        // Every resolution of the range is coarser than or equal to res 9,
        // so both conversions succeed; `finest` stands in if not.
        if let Some(parent) = Resolution::try_from(res)
            .ok()
            .and_then(|r| finest.parent(r))
        {
            out[i] = parent;
        }
    }
    out
}

#[cfg(test)]
mod sweep_tests {
    use fleetd_schemas::test_support::position;

    use super::*;

    fn total(counts: &CellCounts) -> u32 {
        counts.counts[N_RES - 1].values().sum()
    }

    /// Silent devices leave from anywhere in the packed rows, and those
    /// that stay are still found (moved, not counted twice).
    #[test]
    fn a_sweep_keeps_the_survivors_findable() {
        let start = Instant::now();
        let mut counts = CellCounts::new(Duration::from_secs(10));
        for i in 0..100 {
            let lat = 52.0 + f64::from(i) * 0.01;
            counts.update(&position(&format!("d{i}"), 1, lat, 13.4), start);
        }
        // The even devices speak again later; the odd ones fall silent.
        let later = start + Duration::from_secs(8);
        for i in (0..100).step_by(2) {
            let lat = 52.0 + f64::from(i) * 0.01;
            counts.update(&position(&format!("d{i}"), 2, lat, 13.4), later);
        }
        counts.sweep_if_due(start + Duration::from_secs(15));
        assert_eq!(counts.devices(), 50);
        assert_eq!(total(&counts), 50);
        // Each survivor moves: found, so its old cell is given up.
        let moved = start + Duration::from_secs(16);
        for i in (0..100).step_by(2) {
            counts.update(&position(&format!("d{i}"), 3, 10.0, 10.0), moved);
        }
        assert_eq!(counts.devices(), 50);
        assert_eq!(total(&counts), 50);
        assert_eq!(counts.counts[N_RES - 1].len(), 1, "all in one cell");
        // A device that left comes back as new.
        counts.update(&position("d1", 4, 10.0, 10.0), moved);
        assert_eq!((counts.devices(), total(&counts)), (51, 51));
    }
}
