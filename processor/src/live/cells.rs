//! Live vehicle counts per H3 cell at resolutions 5–9, maintained
//! incrementally as positions are published.
//!
//! A vehicle counts in its res-9 cell and in that cell's H3 parents, so the
//! counts of the children always add up to the parent's. Near cell edges a
//! parent can differ from the cell H3 would assign the point to directly at
//! the coarser resolution (H3 cells do not nest exactly).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetd_schemas::{DeviceId, EnrichedPosition};
use fleetd_store::BBox;
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

#[derive(Debug)]
struct DeviceCells {
    /// The device's cell at resolutions 5..=9.
    cells: [CellIndex; N_RES],
    seen: Instant,
}

/// Per-device cells and per-cell counts. A device counts in the cell of its
/// newest position until it has been silent for `max_age`.
#[derive(Debug)]
pub(super) struct CellCounts {
    devices: HashMap<DeviceId, DeviceCells>,
    counts: [HashMap<CellIndex, u32>; N_RES],
    max_age: Duration,
    last_sweep: Option<Instant>,
}

impl CellCounts {
    pub(super) fn new(max_age: Duration) -> Self {
        Self {
            devices: HashMap::new(),
            counts: Default::default(),
            max_age,
            last_sweep: None,
        }
    }

    /// Moves the device to the cells of `p` (positions arrive newest-last
    /// per device: the processor publishes only new latest positions).
    pub(super) fn update(&mut self, p: &EnrichedPosition, now: Instant) {
        let Some(cells) = cells_of(p) else {
            return;
        };
        let device = &p.report.device_id;
        match self.devices.get_mut(device) {
            Some(known) => {
                let old = known.cells;
                known.cells = cells;
                known.seen = now;
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
                    .insert(device.clone(), DeviceCells { cells, seen: now });
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
        let max_age = self.max_age;
        let counts = &mut self.counts;
        self.devices.retain(|_, d| {
            let keep = now.saturating_duration_since(d.seen) <= max_age;
            if !keep {
                for (i, cell) in d.cells.iter().enumerate() {
                    decrement(&mut counts[i], *cell);
                }
            }
            keep
        });
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

/// The cells of `p` at resolutions 5..=9: parents of its detail cell when
/// that is fine enough (cheap bit operations), otherwise from its lat/lon.
fn cells_of(p: &EnrichedPosition) -> Option<[CellIndex; N_RES]> {
    let finest = match CellIndex::try_from(p.h3.detail) {
        Ok(cell) if cell.resolution() >= FINEST => cell.parent(FINEST)?,
        _ => LatLng::new(p.report.lat, p.report.lon)
            .ok()?
            .to_cell(FINEST),
    };
    let mut out = [finest; N_RES];
    for (i, res) in CELL_RESOLUTIONS.enumerate() {
        out[i] = finest.parent(Resolution::try_from(res).ok()?)?;
    }
    Some(out)
}
