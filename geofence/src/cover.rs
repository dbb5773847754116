//! H3 cover of a fence: the cells its boundary may pass through (checked
//! exactly at query time) and the cells certainly inside it (no check).
//!
//! Soundness does not rest on planar approximations of cell shapes. The
//! boundary is sampled densely along its (planar lon/lat) edges, every cell
//! holding a sample is a *core* cell, and core cells plus their neighbours
//! are the *boundary* cells. Any cell that holds a boundary point is within a
//! fifth of an edge of a sample, so it is core or a neighbour of one. Cells
//! that are neither hold no boundary point, so each is wholly inside or
//! wholly outside; those reached from the boundary cells whose centre is
//! inside are *interior* cells. The ring of neighbours also absorbs the H3
//! hierarchy's imperfect nesting (a fine cell's parent by index may be the
//! geometric neighbour of the cell that holds the point), so the index may
//! look up every resolution from one fine cell.

use geo::{ChamberlainDuquetteArea, Contains, Coord, MultiPolygon, Point, Polygon};
use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::FxHashSet;

use crate::model::{Circle, Shape};

/// Metres per degree of latitude, rounded up (the meridian degree is
/// 110.57–111.69 km), so sampling steps computed with it are never too long.
const M_PER_DEG_UPPER: f64 = 111_700.0;

/// The cells of one fence at one resolution (interior cells may be
/// compacted to coarser ones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cover {
    /// Cells where the fence must be tested exactly.
    pub(crate) boundary: Vec<CellIndex>,
    /// Cells wholly inside the fence.
    pub(crate) interior: Vec<CellIndex>,
}

impl Cover {
    pub(crate) fn len(&self) -> usize {
        self.boundary.len() + self.interior.len()
    }
}

/// Covers `shape` with about `budget` cells: the finest resolution whose
/// estimated cell count fits, made coarser while the real count exceeds four
/// times the budget (so a country and a parking lot both stay bounded).
/// No cell is finer than `max_res`.
pub(crate) fn cover(shape: &Shape, budget: usize, max_res: Resolution) -> Cover {
    let budget = budget.max(1);
    let (perimeter_m, area_m2, rings) = measure(shape);
    let mut res = pick_resolution(perimeter_m, area_m2, rings, budget, max_res);
    loop {
        let cap = 4 * budget;
        let built = match shape {
            Shape::Circle(c) => circle_cells(c, res, cap),
            Shape::Polygon(p) => polygon_cells(std::slice::from_ref(p), res, cap),
            Shape::MultiPolygon(mp) => polygon_cells(&mp.0, res, cap),
        };
        match (built, res.pred()) {
            (Some(cover), _) => return cover,
            (None, Some(coarser)) => res = coarser,
            // Resolution 0 has 122 cells: no fence exceeds that by much.
            (None, None) => {
                return match shape {
                    Shape::Circle(c) => circle_cells(c, res, usize::MAX),
                    Shape::Polygon(p) => polygon_cells(std::slice::from_ref(p), res, usize::MAX),
                    Shape::MultiPolygon(mp) => polygon_cells(&mp.0, res, usize::MAX),
                }
                .unwrap_or_default();
            }
        }
    }
}

/// Perimeter (m), area (m²) and ring count of a shape, for the estimate.
fn measure(shape: &Shape) -> (f64, f64, usize) {
    match shape {
        Shape::Circle(c) => (
            std::f64::consts::TAU * c.radius_m,
            std::f64::consts::PI * c.radius_m * c.radius_m,
            1,
        ),
        Shape::Polygon(p) => measure_polygons(std::slice::from_ref(p)),
        Shape::MultiPolygon(mp) => measure_polygons(&mp.0),
    }
}

fn measure_polygons(polygons: &[Polygon<f64>]) -> (f64, f64, usize) {
    let mut perimeter = 0.0;
    let mut area = 0.0;
    let mut rings = 0;
    for p in polygons {
        area += p.chamberlain_duquette_unsigned_area();
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            rings += 1;
            for line in ring.lines() {
                perimeter += upper_len_m(line.start, line.end);
            }
        }
    }
    (perimeter, area, rings)
}

fn pick_resolution(
    perimeter_m: f64,
    area_m2: f64,
    rings: usize,
    budget: usize,
    max_res: Resolution,
) -> Resolution {
    let mut res = Resolution::Zero;
    for r in Resolution::range(Resolution::Zero, max_res) {
        // Boundary cells: ~one core cell per 1.6 edges of perimeter, tripled
        // by the neighbour ring; interior cells before compaction.
        let estimate =
            2.0 * perimeter_m / r.edge_length_m() + 7.0 * rings as f64 + area_m2 / r.area_m2();
        if estimate <= budget as f64 {
            res = r;
        } else {
            break;
        }
    }
    res
}

/// An upper bound of the length of the planar segment a–b in metres.
fn upper_len_m(a: Coord<f64>, b: Coord<f64>) -> f64 {
    (b.x - a.x).hypot(b.y - a.y) * M_PER_DEG_UPPER
}

fn cell_of(c: Coord<f64>, res: Resolution) -> Option<CellIndex> {
    LatLng::new(c.y, c.x).ok().map(|ll| ll.to_cell(res))
}

fn polygon_cells(polygons: &[Polygon<f64>], res: Resolution, cap: usize) -> Option<Cover> {
    // A fifth of the mean edge: well under the inradius of the smallest
    // cells of a resolution (pentagons and distorted hexagons).
    let step = res.edge_length_m() / 5.0;
    let mut core = FxHashSet::default();
    for p in polygons {
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            for line in ring.lines() {
                let n = (upper_len_m(line.start, line.end) / step).ceil().max(1.0) as usize;
                let mut last = None;
                for k in 0..=n {
                    let t = k as f64 / n as f64;
                    let c = Coord {
                        x: line.start.x + t * (line.end.x - line.start.x),
                        y: line.start.y + t * (line.end.y - line.start.y),
                    };
                    let Some(cell) = cell_of(c, res) else {
                        continue;
                    };
                    if last != Some(cell) {
                        core.insert(cell);
                        last = Some(cell);
                    }
                }
                if core.len() > cap {
                    return None;
                }
            }
        }
    }
    let inside = |cell: CellIndex| {
        let ll = LatLng::from(cell);
        let pt = Point::new(ll.lng(), ll.lat());
        polygons.iter().any(|p| p.contains(&pt))
    };
    finish(core, res, cap, inside)
}

fn circle_cells(circle: &Circle, res: Resolution, cap: usize) -> Option<Cover> {
    let center = LatLng::new(circle.center.y, circle.center.x).ok()?;
    let center_cell = center.to_cell(res);
    let r = circle.radius_m;
    let mut k = (r / (1.5 * res.edge_length_m())).ceil() as u32 + 2;
    loop {
        let mut core = FxHashSet::default();
        let mut outer_reached = false;
        let disk: Vec<(CellIndex, u32)> = center_cell.grid_disk_distances(k);
        if disk.len() > cap.saturating_mul(8) {
            return None;
        }
        for (cell, ring) in disk {
            let cc = LatLng::from(cell);
            let d = center.distance_m(cc);
            let rho = cell
                .boundary()
                .iter()
                .map(|v| cc.distance_m(*v))
                .fold(0.0, f64::max);
            // The cell lies within rho of its centre; the slack also covers
            // the haversine-vs-ellipsoid difference (< 0.5 %).
            let slack = 1.5 * rho + 0.01 * r + 1.0;
            if (d - r).abs() <= slack {
                core.insert(cell);
                outer_reached |= ring == k;
            } else if d < r {
                outer_reached |= ring == k;
            }
        }
        if !outer_reached {
            if core.len() > cap {
                return None;
            }
            let inside = |cell: CellIndex| center.distance_m(LatLng::from(cell)) < r;
            return finish(core, res, cap, inside);
        }
        k += 2;
    }
}

/// Boundary cells are the core plus its neighbours; interior cells are the
/// rest of the region flood-filled from the boundary, seeded where `inside`
/// says a neighbour's centre is in the fence.
fn finish(
    core: FxHashSet<CellIndex>,
    res: Resolution,
    cap: usize,
    inside: impl Fn(CellIndex) -> bool,
) -> Option<Cover> {
    let mut boundary = core.clone();
    for cell in &core {
        for n in cell.grid_disk::<Vec<_>>(1) {
            boundary.insert(n);
        }
    }
    if boundary.len() > cap {
        return None;
    }
    let mut interior = FxHashSet::default();
    let mut outside = FxHashSet::default();
    let mut queue = Vec::new();
    for cell in &boundary {
        for n in cell.grid_disk::<Vec<_>>(1) {
            if boundary.contains(&n) || interior.contains(&n) || outside.contains(&n) {
                continue;
            }
            if inside(n) {
                interior.insert(n);
                queue.push(n);
            } else {
                outside.insert(n);
            }
        }
    }
    // Interior cells hold no boundary point, so their non-boundary
    // neighbours are inside too.
    let interior_cap = cap.saturating_mul(16);
    while let Some(cell) = queue.pop() {
        for n in cell.grid_disk::<Vec<_>>(1) {
            if !boundary.contains(&n) && interior.insert(n) {
                queue.push(n);
            }
        }
        if interior.len() > interior_cap {
            return None;
        }
    }
    let mut interior: Vec<CellIndex> = interior.into_iter().collect();
    let uncompacted = interior.clone();
    if CellIndex::compact(&mut interior).is_err() {
        interior = uncompacted;
    }
    let mut boundary: Vec<CellIndex> = boundary.into_iter().collect();
    boundary.sort_unstable();
    interior.sort_unstable();
    let cover = Cover { boundary, interior };
    debug_assert!(cover.boundary.iter().all(|c| c.resolution() == res));
    (cover.len() <= cap).then_some(cover)
}

/// The shape's polygons (empty for a circle).
pub(crate) fn polygons(shape: &Shape) -> &[Polygon<f64>] {
    match shape {
        Shape::Circle(_) => &[],
        Shape::Polygon(p) => std::slice::from_ref(p),
        Shape::MultiPolygon(MultiPolygon(ps)) => ps,
    }
}
