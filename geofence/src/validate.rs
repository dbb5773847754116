//! Topological validation of fence polygons: simple rings, rings that do not
//! cross, holes inside their outer ring, MultiPolygon parts that do not overlap.
//!
//! geo's `Validation` compares every segment with every other (quadratic,
//! seconds for a 10,000-vertex fence); this uses geo's sweep-line
//! `Intersections` instead and the same rules.

use geo::algorithm::sweep::{Cross, Intersections};
use geo::coordinate_position::CoordPos;
use geo::{
    BoundingRect, Coord, CoordinatePosition, Intersects, Line, LineIntersection, MultiPolygon,
    Polygon,
};

use crate::model::{GeofenceError, Location};

/// One edge, with the ring it belongs to, for the sweep.
#[derive(Debug, Clone, Copy)]
struct Edge {
    line: Line<f64>,
    /// Ring index within the polygon (or polygon index for parts checks).
    ring: usize,
    /// Edge index within its ring.
    idx: usize,
    /// Number of edges of its ring.
    ring_len: usize,
}

impl Cross for Edge {
    type Scalar = f64;
    fn line(&self) -> Line<f64> {
        self.line
    }
}

fn rings(p: &Polygon<f64>) -> impl Iterator<Item = &geo::LineString<f64>> {
    std::iter::once(p.exterior()).chain(p.interiors())
}

fn edges(ring_idx: usize, ring: &geo::LineString<f64>, out: &mut Vec<Edge>) {
    let ring_len = ring.0.len().saturating_sub(1);
    out.extend(ring.lines().enumerate().map(|(idx, line)| Edge {
        line,
        ring: ring_idx,
        idx,
        ring_len,
    }));
}

fn at(polygon: Option<usize>, ring: usize) -> Location {
    Location {
        polygon,
        ring,
        position: None,
    }
}

fn point_of(i: &LineIntersection<f64>) -> Coord<f64> {
    match i {
        LineIntersection::SinglePoint { intersection, .. } => *intersection,
        LineIntersection::Collinear { intersection } => intersection.start,
    }
}

/// Checks one polygon whose rings are closed, finite, in range and have at
/// least 4 positions with no consecutive repeats (the parser ensures it).
pub(crate) fn polygon(p: &Polygon<f64>, part: Option<usize>) -> Result<(), GeofenceError> {
    let mut all = Vec::new();
    for (i, ring) in rings(p).enumerate() {
        edges(i, ring, &mut all);
    }
    for (a, b, inter) in Intersections::from_iter(all) {
        if a.ring == b.ring {
            // Consecutive edges meet at their shared vertex; anything else
            // (a crossing, a touch, a fold back along the previous edge) is
            // a self-intersection.
            let shared = if (a.idx + 1) % a.ring_len == b.idx {
                Some(a.line.end)
            } else if (b.idx + 1) % b.ring_len == a.idx {
                Some(b.line.end)
            } else {
                None
            };
            let ok = matches!(
                (&inter, shared),
                (LineIntersection::SinglePoint { intersection, .. }, Some(v)) if *intersection == v
            );
            if !ok {
                let c = point_of(&inter);
                return Err(GeofenceError::SelfIntersection {
                    at: at(part, a.ring),
                    lon: c.x,
                    lat: c.y,
                });
            }
        } else {
            // Rings may touch at a point, never cross or share an edge.
            let touch = matches!(
                inter,
                LineIntersection::SinglePoint {
                    is_proper: false,
                    ..
                }
            );
            if !touch {
                let c = point_of(&inter);
                let (lo, hi) = (a.ring.min(b.ring), a.ring.max(b.ring));
                return Err(GeofenceError::RingsIntersect {
                    a: at(part, lo),
                    b: at(part, hi),
                    lon: c.x,
                    lat: c.y,
                });
            }
        }
    }
    // With no crossings, a ring is inside another exactly when one of its
    // vertices that is not on the other's boundary is inside it.
    let shell = Polygon::new(p.exterior().clone(), vec![]);
    let holes: Vec<Polygon<f64>> = p
        .interiors()
        .iter()
        .map(|r| Polygon::new(r.clone(), vec![]))
        .collect();
    for (i, hole) in holes.iter().enumerate() {
        if ring_position(hole, &shell) != Some(CoordPos::Inside) {
            return Err(GeofenceError::HoleOutsideShell {
                at: at(part, i + 1),
            });
        }
        for (j, other) in holes.iter().enumerate() {
            if i != j
                && bbox_overlap(hole, other)
                && ring_position(hole, other) == Some(CoordPos::Inside)
            {
                return Err(GeofenceError::HoleOutsideShell {
                    at: at(part, i + 1),
                });
            }
        }
    }
    Ok(())
}

/// Where the first vertex of `inner`'s outer ring that is not on `outer`'s
/// boundary lies relative to `outer`; `None` if all are on it.
fn ring_position(inner: &Polygon<f64>, outer: &Polygon<f64>) -> Option<CoordPos> {
    inner
        .exterior()
        .0
        .iter()
        .map(|c| outer.coordinate_position(c))
        .find(|pos| *pos != CoordPos::OnBoundary)
}

fn bbox_overlap(a: &Polygon<f64>, b: &Polygon<f64>) -> bool {
    match (a.bounding_rect(), b.bounding_rect()) {
        (Some(ra), Some(rb)) => ra.intersects(&rb),
        _ => false,
    }
}

/// Checks that the parts of a MultiPolygon (each already valid) neither
/// overlap nor share an edge; touching at points is allowed.
pub(crate) fn parts_disjoint(mp: &MultiPolygon<f64>) -> Result<(), GeofenceError> {
    let boxes: Vec<_> = mp.0.iter().map(|p| p.bounding_rect()).collect();
    for i in 0..mp.0.len() {
        for j in (i + 1)..mp.0.len() {
            let (Some(bi), Some(bj)) = (boxes[i], boxes[j]) else {
                continue;
            };
            if !bi.intersects(&bj) {
                continue;
            }
            let (a, b) = (&mp.0[i], &mp.0[j]);
            let mut all = Vec::new();
            for ring in rings(a) {
                edges(0, ring, &mut all);
            }
            for ring in rings(b) {
                edges(1, ring, &mut all);
            }
            let crossing = Intersections::from_iter(all).any(|(e1, e2, inter)| {
                e1.ring != e2.ring
                    && !matches!(
                        inter,
                        LineIntersection::SinglePoint {
                            is_proper: false,
                            ..
                        }
                    )
            });
            let overlap = crossing
                || ring_position(b, a) == Some(CoordPos::Inside)
                || ring_position(a, b) == Some(CoordPos::Inside);
            if overlap {
                return Err(GeofenceError::PolygonsOverlap { a: i, b: j });
            }
        }
    }
    Ok(())
}
