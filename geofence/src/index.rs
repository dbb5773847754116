//! `GeofenceIndex`: which fences contain a point, through an H3 cell map.
//!
//! Every fence is covered by H3 cells at a resolution chosen for its size
//! (see `cover`). One hash map holds all cells of all fences, keyed by cell
//! index (which encodes the resolution). A query computes the point's cell at
//! the finest resolution in use, walks its parents over the resolutions in
//! use, and per hit either accepts the fence (interior cell) or tests it
//! exactly (boundary cell: bbox, then point-in-polygon with geo, or geodesic
//! distance for circles). Inserting, replacing or removing a fence touches
//! only that fence's cells.

use std::collections::HashMap;
use std::mem::size_of;

use fleetd_schemas::GeofenceId;
use geo::{BoundingRect, Contains, Coord, Distance, Geodesic, Haversine, Point, Rect};
use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::FxHashMap;

use crate::cover::{self, Cover};
use crate::model::{Geofence, Shape};

/// Metres per degree on the mean-radius sphere (6,371,008.8 m), for the
/// local plane in which boundary distances are measured.
const M_PER_DEG: f64 = 111_194.93;

/// Index tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSettings {
    /// Target number of H3 cells per fence. More cells mean fewer exact
    /// tests and more memory; a fence gets at most four times this many.
    pub cell_budget: usize,
    /// Finest resolution of any cover. A lookup starts from the point's
    /// cell at the finest resolution in use; the processor already has
    /// every fix's cell at its detail resolution (9 by default), so with
    /// covers no finer than that a lookup computes no H3 cell of its own
    /// (half the cost of a check). Fences smaller than a cell (res 9: edge
    /// ~170 m) then get boundary cells only, each hit tested exactly.
    pub max_res: Resolution,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            cell_budget: 48,
            max_res: Resolution::Nine,
        }
    }
}

/// Where a point is relative to a fence, allowing for its position error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// Inside, and at least the margin away from the boundary.
    Inside,
    /// Outside, and at least the margin away from the boundary.
    Outside,
    /// Within the margin of the boundary: the accuracy circle straddles it.
    Straddling,
}

/// A fence whose cover is computed ([`GeofenceIndex::prepare`]).
#[derive(Debug)]
pub struct PreparedFence {
    fence: Geofence,
    cover: Cover,
    settings: IndexSettings,
}

impl PreparedFence {
    /// The fence.
    pub fn fence(&self) -> &Geofence {
        &self.fence
    }
}

/// The fences, indexed for point queries. Not internally synchronised: one
/// owner mutates it, readers share it (`Arc`, or a lock around updates).
#[derive(Debug, Default)]
pub struct GeofenceIndex {
    settings: IndexSettings,
    slots: Vec<Option<Slot>>,
    /// Bounding box per slot, dense and apart from the slots: most
    /// boundary-cell candidates are rejected here without touching the
    /// fence (a cache miss each).
    boxes: Vec<Rect<f64>>,
    free: Vec<u32>,
    by_id: HashMap<GeofenceId, u32>,
    /// Cell → entries `slot << 1 | interior`.
    cells: FxHashMap<u64, Bucket>,
    /// Cells per resolution, to know which resolutions a query must visit.
    res_cells: [u32; 16],
    /// Resolutions with at least one cell, ascending.
    used: Vec<Resolution>,
}

#[derive(Debug)]
struct Slot {
    fence: Geofence,
    /// Bounding box of each polygon of the shape (empty for circles).
    part_boxes: Box<[Rect<f64>]>,
    cells: Box<[u64]>,
}

/// Most cells belong to one fence; the rare shared ones spill to a Vec.
#[derive(Debug)]
enum Bucket {
    One(u32),
    Many(Vec<u32>),
}

impl GeofenceIndex {
    /// An empty index.
    pub fn new(settings: IndexSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Number of fences.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is no fence.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The fence with this id.
    pub fn get(&self, id: &GeofenceId) -> Option<&Geofence> {
        self.slot(id).map(|s| &s.fence)
    }

    /// Every fence, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Geofence> {
        self.slots.iter().flatten().map(|s| &s.fence)
    }

    /// Adds a fence, replacing (and returning) the one with the same id.
    /// Costs the cover of this fence only (~10–100 µs for ~50 vertices;
    /// milliseconds for a country): run it off the async runtime.
    pub fn insert(&mut self, fence: Geofence) -> Option<Geofence> {
        let prepared = Self::prepare(self.settings, fence);
        self.insert_prepared(prepared)
    }

    /// The settings the index covers fences with.
    pub fn settings(&self) -> IndexSettings {
        self.settings
    }

    /// Computes a fence's cover (the expensive part of an insert) without
    /// touching an index, so that a shared index is locked only for
    /// [`GeofenceIndex::insert_prepared`].
    pub fn prepare(settings: IndexSettings, fence: Geofence) -> PreparedFence {
        let cover = cover::cover(&fence.shape, settings.cell_budget, settings.max_res);
        PreparedFence {
            fence,
            cover,
            settings,
        }
    }

    /// Adds a prepared fence, replacing (and returning) the one with the
    /// same id. Cheap: it copies cells into the map. A fence prepared with
    /// other settings is covered again here.
    pub fn insert_prepared(&mut self, prepared: PreparedFence) -> Option<Geofence> {
        let PreparedFence {
            fence,
            mut cover,
            settings,
        } = prepared;
        if settings != self.settings {
            let s = self.settings;
            cover = cover::cover(&fence.shape, s.cell_budget, s.max_res);
        }
        let old = self.remove(&fence.id);
        let part_boxes = cover::polygons(&fence.shape)
            .iter()
            .filter_map(|p| p.bounding_rect())
            .collect();
        let bbox = shape_bbox(&fence.shape);
        let slot_idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.boxes.push(bbox);
                (self.slots.len() - 1) as u32
            }
        };
        self.boxes[slot_idx as usize] = bbox;
        let cells = self.add_cells(slot_idx, &cover);
        self.by_id.insert(fence.id.clone(), slot_idx);
        self.slots[slot_idx as usize] = Some(Slot {
            fence,
            part_boxes,
            cells,
        });
        old
    }

    /// Removes a fence; returns it if it was there.
    pub fn remove(&mut self, id: &GeofenceId) -> Option<Geofence> {
        let slot_idx = self.by_id.remove(id)?;
        let slot = self.slots.get_mut(slot_idx as usize)?.take()?;
        for &cell in slot.cells.iter() {
            let mut now_empty = false;
            if let Some(bucket) = self.cells.get_mut(&cell) {
                match bucket {
                    Bucket::One(e) => now_empty = *e >> 1 == slot_idx,
                    Bucket::Many(v) => {
                        v.retain(|e| e >> 1 != slot_idx);
                        if let [last] = v.as_slice() {
                            let last = *last;
                            *bucket = Bucket::One(last);
                        }
                    }
                }
            }
            if now_empty {
                self.cells.remove(&cell);
            }
            self.count_cell(cell, -1);
        }
        self.free.push(slot_idx);
        Some(slot.fence)
    }

    /// Appends to `out` every fence containing the point (boundary excluded).
    pub fn containing<'a>(&'a self, lat: f64, lon: f64, out: &mut Vec<&'a Geofence>) {
        self.visit(lat, lon, None, |slot| out.push(&slot.fence));
    }

    /// [`GeofenceIndex::containing`] for a point whose H3 cell is known:
    /// `cell` must be the cell `LatLng::to_cell` gives for the point at its
    /// resolution (not a parent of a finer one). When that resolution is at
    /// least the finest the index uses, the lookup needs no H3 computation;
    /// otherwise it computes the cell itself.
    pub fn containing_in_cell<'a>(
        &'a self,
        lat: f64,
        lon: f64,
        cell: CellIndex,
        out: &mut Vec<&'a Geofence>,
    ) {
        self.visit(lat, lon, Some(cell), |slot| out.push(&slot.fence));
    }

    /// Where the point is relative to fence `id`, with `margin_m` metres of
    /// position error; `None` if there is no such fence.
    pub fn containment(
        &self,
        id: &GeofenceId,
        lat: f64,
        lon: f64,
        margin_m: f64,
    ) -> Option<Containment> {
        self.slot(id).map(|s| s.containment(lat, lon, margin_m))
    }

    /// [`GeofenceIndex::containment`] with the fence itself, one lookup.
    pub(crate) fn fence_containment(
        &self,
        id: &GeofenceId,
        lat: f64,
        lon: f64,
        margin_m: f64,
    ) -> Option<(&Geofence, Containment)> {
        self.slot(id)
            .map(|s| (&s.fence, s.containment(lat, lon, margin_m)))
    }

    /// Distance in metres from the point to the boundary of fence `id`
    /// (inside or out); `None` if there is no such fence.
    ///
    /// Circles: geodesic distance to the centre minus the radius.
    /// Polygons: distance to the nearest edge in a local equirectangular
    /// plane at the point, within 1 % of the geodesic distance up to 10 km
    /// below 70° latitude.
    pub fn distance_to_boundary_m(&self, id: &GeofenceId, lat: f64, lon: f64) -> Option<f64> {
        self.slot(id).map(|s| s.boundary_distance_m(lat, lon, None))
    }

    /// Approximate heap and inline bytes held by the index.
    pub fn memory_bytes(&self) -> usize {
        let bucket_heap: usize = self
            .cells
            .values()
            .map(|b| match b {
                Bucket::One(_) => 0,
                Bucket::Many(v) => v.capacity() * size_of::<u32>(),
            })
            .sum();
        let slots: usize = self.slots.iter().flatten().map(Slot::heap_bytes).sum();
        self.slots.capacity() * size_of::<Option<Slot>>()
            + self.boxes.capacity() * size_of::<Rect<f64>>()
            + self.by_id.capacity() * (size_of::<(GeofenceId, u32)>() + 1)
            + self.cells.capacity() * (size_of::<(u64, Bucket)>() + 1)
            + bucket_heap
            + slots
    }

    /// Number of H3 cells held for fence `id`.
    pub fn cell_count(&self, id: &GeofenceId) -> Option<usize> {
        self.slot(id).map(|s| s.cells.len())
    }

    /// Whether no cell is left in the map (all fences removed cleanly).
    #[cfg(test)]
    pub(crate) fn holds_no_cells(&self) -> bool {
        self.cells.is_empty() && self.used.is_empty() && self.res_cells.iter().all(|n| *n == 0)
    }

    fn slot(&self, id: &GeofenceId) -> Option<&Slot> {
        let i = *self.by_id.get(id)?;
        self.slots.get(i as usize)?.as_ref()
    }

    /// Calls `f` with every slot whose fence contains the point.
    fn visit<'a>(
        &'a self,
        lat: f64,
        lon: f64,
        known: Option<CellIndex>,
        mut f: impl FnMut(&'a Slot),
    ) {
        let Some(&finest) = self.used.last() else {
            return;
        };
        if !(lat.abs() <= 90.0 && lon.abs() <= 180.0) {
            return;
        }
        let cell = match known {
            Some(cell) if cell.resolution() >= finest => cell,
            _ => match LatLng::new(lat, lon) {
                Ok(ll) => ll.to_cell(finest),
                Err(_) => return,
            },
        };
        for &res in &self.used {
            let Some(c) = cell.parent(res) else { continue };
            let entries: &[u32] = match self.cells.get(&u64::from(c)) {
                None => continue,
                Some(Bucket::One(e)) => std::slice::from_ref(e),
                Some(Bucket::Many(v)) => v,
            };
            for &e in entries {
                let i = (e >> 1) as usize;
                let interior = e & 1 == 1;
                if !interior
                    && !self
                        .boxes
                        .get(i)
                        .is_some_and(|b| bbox_contains(b, lon, lat))
                {
                    continue;
                }
                let Some(Some(slot)) = self.slots.get(i) else {
                    continue;
                };
                if interior || slot.contains(lat, lon) {
                    f(slot);
                }
            }
        }
    }

    fn add_cells(&mut self, slot_idx: u32, cover: &Cover) -> Box<[u64]> {
        let mut all = Vec::with_capacity(cover.len());
        let tagged = cover
            .boundary
            .iter()
            .map(|c| (*c, 0))
            .chain(cover.interior.iter().map(|c| (*c, 1)));
        for (cell, interior) in tagged {
            let key = u64::from(cell);
            let e = slot_idx << 1 | interior;
            match self.cells.get_mut(&key) {
                None => {
                    self.cells.insert(key, Bucket::One(e));
                }
                Some(bucket) => match bucket {
                    Bucket::One(first) => {
                        let first = *first;
                        *bucket = Bucket::Many(vec![first, e]);
                    }
                    Bucket::Many(v) => v.push(e),
                },
            }
            self.count_cell(key, 1);
            all.push(key);
        }
        all.into_boxed_slice()
    }

    fn count_cell(&mut self, cell: u64, delta: i32) {
        let Ok(c) = CellIndex::try_from(cell) else {
            return;
        };
        let r = u8::from(c.resolution()) as usize;
        let before = self.res_cells[r];
        self.res_cells[r] = before.saturating_add_signed(delta);
        if (before == 0) != (self.res_cells[r] == 0) {
            self.used = Resolution::range(Resolution::Zero, Resolution::Fifteen)
                .filter(|r| self.res_cells[u8::from(*r) as usize] > 0)
                .collect();
        }
    }
}

impl Slot {
    fn contains(&self, lat: f64, lon: f64) -> bool {
        let pt = Point::new(lon, lat);
        match &self.fence.shape {
            Shape::Circle(c) => circle_distance_m(c.center, pt, c.radius_m) < c.radius_m,
            shape => cover::polygons(shape)
                .iter()
                .zip(self.part_boxes.iter())
                .any(|(p, bbox)| bbox_contains(bbox, lon, lat) && p.contains(&pt)),
        }
    }

    fn containment(&self, lat: f64, lon: f64, margin_m: f64) -> Containment {
        let inside = self.contains(lat, lon);
        if margin_m > 0.0 && self.boundary_distance_m(lat, lon, Some(margin_m)) < margin_m {
            Containment::Straddling
        } else if inside {
            Containment::Inside
        } else {
            Containment::Outside
        }
    }

    /// Distance to the boundary. With `within: Some(m)` the caller only
    /// asks whether it is below `m`: the search stops at the first edge
    /// closer than `m` and skips polygons whose bbox is farther than `m`.
    fn boundary_distance_m(&self, lat: f64, lon: f64, within: Option<f64>) -> f64 {
        match &self.fence.shape {
            Shape::Circle(c) => {
                (Geodesic.distance(Point::from(c.center), Point::new(lon, lat)) - c.radius_m).abs()
            }
            shape => {
                let kx = M_PER_DEG * lat.to_radians().cos();
                let ky = M_PER_DEG;
                // Degrees that `enough` metres can span, to skip far parts.
                let (dlon, dlat, stop) = match within {
                    Some(m) => (m / kx.max(1e-9), m / ky, m),
                    None => (f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY),
                };
                let to_local = |c: Coord<f64>| ((c.x - lon) * kx, (c.y - lat) * ky);
                let mut best = f64::INFINITY;
                for (p, bbox) in cover::polygons(shape).iter().zip(self.part_boxes.iter()) {
                    if lon < bbox.min().x - dlon
                        || lon > bbox.max().x + dlon
                        || lat < bbox.min().y - dlat
                        || lat > bbox.max().y + dlat
                    {
                        continue;
                    }
                    for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
                        for line in ring.lines() {
                            let d = point_segment(to_local(line.start), to_local(line.end));
                            if d < best {
                                best = d;
                                if best < stop {
                                    return best;
                                }
                            }
                        }
                    }
                }
                best
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let coords: usize = cover::polygons(&self.fence.shape)
            .iter()
            .map(|p| {
                size_of::<geo::LineString<f64>>() * (1 + p.interiors().len())
                    + size_of::<Coord<f64>>()
                        * (p.exterior().0.capacity()
                            + p.interiors().iter().map(|r| r.0.capacity()).sum::<usize>())
            })
            .sum();
        let name = self.fence.name.as_ref().map_or(0, String::capacity);
        coords
            + name
            + self.fence.id.as_str().len()
            + self.part_boxes.len() * size_of::<Rect<f64>>()
            + self.cells.len() * size_of::<u64>()
            + self.fence.properties.len() * 64
    }
}

/// A box holding the whole shape. For circles it is widened by 1 % and
/// becomes the whole world near the poles or the antimeridian, where a
/// lon/lat box would not hold a geodesic circle.
fn shape_bbox(shape: &Shape) -> Rect<f64> {
    let world = Rect::new(
        Coord {
            x: -180.0,
            y: -90.0,
        },
        Coord { x: 180.0, y: 90.0 },
    );
    match shape {
        Shape::Circle(c) => {
            // 110 km is less than any degree of latitude (110.57–111.69 km).
            let dlat = c.radius_m * 1.01 / 110_000.0;
            let lat_far = c.center.y.abs() + dlat;
            if lat_far >= 89.0 {
                return world;
            }
            let dlon = dlat / lat_far.to_radians().cos();
            if c.center.x.abs() + dlon >= 180.0 {
                return world;
            }
            Rect::new(
                Coord {
                    x: c.center.x - dlon,
                    y: c.center.y - dlat,
                },
                Coord {
                    x: c.center.x + dlon,
                    y: c.center.y + dlat,
                },
            )
        }
        shape => cover::polygons(shape)
            .iter()
            .filter_map(|p| p.bounding_rect())
            .reduce(|a, b| {
                Rect::new(
                    Coord {
                        x: a.min().x.min(b.min().x),
                        y: a.min().y.min(b.min().y),
                    },
                    Coord {
                        x: a.max().x.max(b.max().x),
                        y: a.max().y.max(b.max().y),
                    },
                )
            })
            .unwrap_or(world),
    }
}

fn bbox_contains(bbox: &Rect<f64>, lon: f64, lat: f64) -> bool {
    lon >= bbox.min().x && lon <= bbox.max().x && lat >= bbox.min().y && lat <= bbox.max().y
}

/// Geodesic distance from the centre, computed with haversine first: it is
/// within 0.6 % of the WGS84 geodesic, so only points near the radius pay
/// for the exact (Karney) computation.
fn circle_distance_m(center: Coord<f64>, pt: Point<f64>, radius_m: f64) -> f64 {
    let d = Haversine.distance(Point::from(center), pt);
    if (d - radius_m).abs() > 0.01 * radius_m {
        d
    } else {
        Geodesic.distance(Point::from(center), pt)
    }
}

/// Distance from the origin to segment a–b in a plane.
fn point_segment(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        ((-a.0 * dx - a.1 * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (a.0 + t * dx).hypot(a.1 + t * dy)
}
