//! Turning an [`AreaQuery`] into the res-7 cells that may hold its points.
//!
//! The area index (in RAM for the embedded store, `devices_by_cell` in
//! ScyllaDB) is keyed by each device's res-7 cell. An area is read as the
//! res-7 descendants of a coarse *cover* of the area; all res-7 descendants
//! of a coarser cell form one contiguous range of index values
//! ([`keys::area_children`]). The cover only has to be a superset: every
//! candidate is then tested exactly with [`AreaQuery::contains`].
//!
//! # Why the cover is complete
//!
//! A box (a circle is first widened to its bounding box) is sampled on a
//! lat/lon grid fine enough that every point `q` of the box lies within
//! `δ / √2` metres of a sample `s`, where `δ` is half the average edge length
//! at the cover resolution `r`. The shortest H3 edge at any resolution is
//! about 0.70 of the average (measured over all cells of res 0–6), so `q` is
//! closer to `s` than the shortest edge. A path shorter than that cannot
//! cross a whole cell between two non-adjacent edges, so `q`'s res-`r` cell
//! is `s`'s cell or one of its neighbours: the cells of the samples plus a
//! ring of 1 contain every point of the box.
//!
//! A device is stored under its res-7 cell, and the *logical* res-`r`
//! ancestor of that cell (the one whose range holds the key) is not always
//! the res-`r` cell that contains the point geometrically: near cell edges
//! they can be neighbours (H3 children stick out of their parent a little).
//! For `r < 7` the cover therefore adds a second ring.
//! `cover_tests::logical_ancestor_is_a_geometric_neighbour` checks that
//! premise on random points at every resolution.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use h3o::{CellIndex, LatLng, Resolution};

use crate::StoreError;
use crate::area::{AreaQuery, BBox, EARTH_RADIUS_M, parse_cell};
use crate::keys;

/// Largest cover worth answering with range scans; above it a full scan of
/// `latest` is as cheap and simpler.
pub(crate) const MAX_COVER_CELLS: usize = 200;
/// Most sample points tried at one resolution, which bounds the CPU time of
/// planning (~0.5 µs per sample) before moving to a coarser resolution.
const MAX_SAMPLES: usize = 8_192;
/// Sample spacing as a fraction of the average edge length (see module doc).
const SAMPLE_SPACING_EDGES: f64 = 0.5;

/// How to find the candidates of an area query, as ranges of res-7 cells:
/// the form in which the tests check that a cover is complete.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanPlan {
    /// Scan these inclusive ranges of res-7 cells in the `area` index;
    /// disjoint and sorted.
    Ranges(Vec<RangeInclusive<u64>>),
    /// The area is too large for the index to help: scan every latest.
    FullScan,
}

/// Plans the scans for `query`, which must be valid
/// ([`AreaQuery::validate`]).
#[cfg(test)]
pub(crate) fn plan(query: &AreaQuery) -> Result<ScanPlan, StoreError> {
    Ok(match cover(query)? {
        Some(cells) => ScanPlan::Ranges(ranges(cells)),
        None => ScanPlan::FullScan,
    })
}

/// The cover of `query` (valid, see [`AreaQuery::validate`]): cells of one
/// resolution between 1 and 7 whose res-7 descendants hold every candidate,
/// or `None` when the area is too large for a cover to help.
///
/// The ScyllaDB backend expands these to their res-7 children, one
/// `devices_by_cell` partition each; the embedded backend looks their
/// children up in its in-memory index.
pub(crate) fn cover(query: &AreaQuery) -> Result<Option<Vec<CellIndex>>, StoreError> {
    match *query {
        AreaQuery::Cell(raw) => Ok(Some(cell_cover(parse_cell(raw)?))),
        AreaQuery::BBox(bbox) => bbox_cover(&bbox),
        AreaQuery::Near { lat, lon, radius_m } => match circle_bbox(lat, lon, radius_m) {
            Some(bbox) => bbox_cover(&bbox),
            None => Ok(None),
        },
    }
}

/// Cell queries: points geometrically inside `cell`.
///
/// * res 7: exactly the cell's own range.
/// * res < 7: the cell and its neighbours, since a point inside the cell may
///   be stored under a res-7 cell whose logical ancestor is a neighbour.
/// * res > 7: the res-7 ancestor and its neighbours, for the same reason.
fn cell_cover(cell: CellIndex) -> Vec<CellIndex> {
    let area_res = keys::area_resolution();
    let base = cell.parent(area_res).unwrap_or(cell);
    let ring = if cell.resolution() == area_res { 0 } else { 1 };
    base.grid_disk::<Vec<_>>(ring)
}

/// Box queries: the finest resolution whose cover stays within
/// [`MAX_COVER_CELLS`], coarsening one step at a time.
fn bbox_cover(bbox: &BBox) -> Result<Option<Vec<CellIndex>>, StoreError> {
    let area_res = keys::area_resolution();
    // Res 0 is skipped: its 122 cells cover a quarter of the earth each
    // pass, no better than a full scan.
    for res in Resolution::range(Resolution::One, area_res).rev() {
        let Some(samples) = sample_cells(bbox, res)? else {
            continue;
        };
        let ring = if res == area_res { 1 } else { 2 };
        let mut cover = HashSet::new();
        for cell in samples {
            cover.extend(cell.grid_disk::<Vec<_>>(ring));
            if cover.len() > MAX_COVER_CELLS {
                break;
            }
        }
        if cover.len() <= MAX_COVER_CELLS {
            return Ok(Some(cover.into_iter().collect()));
        }
    }
    Ok(None)
}

/// The distinct res-`res` cells of a sample grid over `bbox`, or `None` when
/// the grid or its cells exceed the budgets (the resolution is too fine).
fn sample_cells(bbox: &BBox, res: Resolution) -> Result<Option<HashSet<CellIndex>>, StoreError> {
    let spacing_m = SAMPLE_SPACING_EDGES * res.edge_length_m();
    let lat_step = (spacing_m / EARTH_RADIUS_M).to_degrees();
    // Along a parallel, degrees are longest nearest the equator, so the
    // step that is fine enough there is fine enough everywhere in the box.
    let equatorward_lat = if bbox.min_lat <= 0.0 && 0.0 <= bbox.max_lat {
        0.0
    } else {
        bbox.min_lat.abs().min(bbox.max_lat.abs())
    };
    let lon_step = (spacing_m / (EARTH_RADIUS_M * equatorward_lat.to_radians().cos()))
        .to_degrees()
        .min(360.0);
    let Some(lats) = steps(bbox.min_lat, bbox.max_lat, lat_step) else {
        return Ok(None);
    };
    let lon_spans = if bbox.crosses_antimeridian() {
        vec![(bbox.min_lon, 180.0), (-180.0, bbox.max_lon)]
    } else {
        vec![(bbox.min_lon, bbox.max_lon)]
    };
    let mut lons = Vec::new();
    for (lo, hi) in lon_spans {
        let Some(span) = steps(lo, hi, lon_step) else {
            return Ok(None);
        };
        lons.extend(span);
    }
    if lats.len().saturating_mul(lons.len()) > MAX_SAMPLES {
        return Ok(None);
    }
    let mut cells = HashSet::new();
    for &lat in &lats {
        for &lon in &lons {
            let point = LatLng::new(lat, lon)
                .map_err(|err| StoreError::InvalidQuery(format!("({lat}, {lon}): {err}")))?;
            cells.insert(point.to_cell(res));
        }
        if cells.len() > MAX_COVER_CELLS {
            return Ok(None);
        }
    }
    Ok(Some(cells))
}

/// Evenly spaced values from `lo` to `hi` (both included), at most `step`
/// apart; `None` if there would be more than [`MAX_SAMPLES`].
fn steps(lo: f64, hi: f64, step: f64) -> Option<Vec<f64>> {
    let span = hi - lo;
    let gaps = (span / step).ceil();
    if !(gaps.is_finite() && gaps < MAX_SAMPLES as f64) {
        return None;
    }
    // In range and integral by the check above.
    let gaps = gaps as usize;
    if gaps == 0 {
        return Some(vec![lo]);
    }
    Some(
        (0..=gaps)
            .map(|i| {
                if i == gaps {
                    hi
                } else {
                    lo + span * i as f64 / gaps as f64
                }
            })
            .collect(),
    )
}

/// The bounding box of a spherical cap, or `None` when the cap is the
/// whole sphere.
///
/// Latitude widens by the angular radius. Longitude widens by
/// `asin(sin(ρ) / cos(φ))`, the half-width of a cap that does not contain a
/// pole; a cap that does spans every longitude.
pub(crate) fn circle_bbox(lat: f64, lon: f64, radius_m: f64) -> Option<BBox> {
    let rho = radius_m / EARTH_RADIUS_M;
    if rho >= std::f64::consts::PI {
        return None;
    }
    let d_lat = rho.to_degrees();
    let (min_lat, max_lat) = (lat - d_lat, lat + d_lat);
    if max_lat >= 90.0 || min_lat <= -90.0 {
        return Some(BBox {
            min_lon: -180.0,
            max_lon: 180.0,
            min_lat: min_lat.max(-90.0),
            max_lat: max_lat.min(90.0),
        });
    }
    // Without a pole in the cap, ρ < 90° − |φ|, so the ratio is below 1.
    let d_lon = (rho.sin() / lat.to_radians().cos())
        .min(1.0)
        .asin()
        .to_degrees();
    let (mut min_lon, mut max_lon) = (lon - d_lon, lon + d_lon);
    if max_lon - min_lon >= 360.0 {
        (min_lon, max_lon) = (-180.0, 180.0);
    } else {
        // Wrap into [-180, 180]; a box that then has min > max crosses the
        // antimeridian, which BBox expresses the same way.
        if min_lon < -180.0 {
            min_lon += 360.0;
        }
        if max_lon > 180.0 {
            max_lon -= 360.0;
        }
    }
    Some(BBox {
        min_lon,
        min_lat,
        max_lon,
        max_lat,
    })
}

/// The res-7 ranges of `cells`, sorted. Cells of one resolution never
/// overlap, so neither do their ranges.
pub(crate) fn ranges(cells: impl IntoIterator<Item = CellIndex>) -> Vec<RangeInclusive<u64>> {
    let mut ranges: Vec<_> = cells.into_iter().map(keys::area_children).collect();
    ranges.sort_by_key(|r| *r.start());
    ranges.dedup();
    ranges
}

#[cfg(test)]
#[path = "cover_tests.rs"]
mod cover_tests;
