//! The geofence domain model and its GeoJSON form: parsing the HTTP input,
//! validating it, and writing it back (the text the store keeps).

use std::fmt;

use fleetd_schemas::GeofenceId;
use geo::{Coord, LineString, MultiPolygon, Polygon};
use serde_json::{Map, Value};

use crate::validate;

/// Limits a fence must keep to be accepted. They bound the work one fence
/// costs at insert time and per checked point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeofenceLimits {
    /// Most positions over all rings of a fence (closing positions count).
    pub max_vertices: usize,
    /// Largest circle radius, metres.
    pub max_radius_m: f64,
}

impl Default for GeofenceLimits {
    fn default() -> Self {
        Self {
            max_vertices: 10_000,
            max_radius_m: 1_000_000.0,
        }
    }
}

/// A circle on the WGS84 ellipsoid: the points whose geodesic distance from
/// `center` is below `radius_m`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circle {
    /// Centre; `x` is longitude, `y` latitude (degrees).
    pub center: Coord<f64>,
    /// Radius, metres (> 0).
    pub radius_m: f64,
}

/// The area a fence covers.
///
/// Polygon coordinates are WGS84 longitude/latitude degrees and edges are
/// straight lines in that plane (the GeoJSON and shapely convention).
/// Fences do not cross the antimeridian: one that does must be split there
/// into a MultiPolygon (RFC 7946 §3.1.9); an edge spanning more than 180° of
/// longitude is rejected. Circles may cross it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A GeoJSON Polygon (outer ring and holes).
    Polygon(Polygon<f64>),
    /// A GeoJSON MultiPolygon.
    MultiPolygon(MultiPolygon<f64>),
    /// A circle `{center: [lon, lat], radius_m}`.
    Circle(Circle),
}

/// One validated geofence.
#[derive(Debug, Clone, PartialEq)]
pub struct Geofence {
    /// Its id (from the URL it was PUT to).
    pub id: GeofenceId,
    /// `properties.name`, used in alerts.
    pub name: Option<String>,
    /// The input's `properties`, kept as they came (name, tags, dwell).
    pub properties: Map<String, Value>,
    /// `properties.dwell_s`: a `dwell` alert fires once per visit when the
    /// vehicle has been inside longer than this, seconds.
    pub dwell_s: Option<f64>,
    /// The area.
    pub shape: Shape,
}

/// Where in the input a problem is: polygon (for a MultiPolygon), ring
/// (0 is the outer ring) and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index of the polygon in a MultiPolygon.
    pub polygon: Option<usize>,
    /// Index of the ring; 0 is the outer ring, 1.. are holes.
    pub ring: usize,
    /// Index of the position in the ring.
    pub position: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.polygon {
            write!(f, "polygon {p} ")?;
        }
        if self.ring == 0 {
            write!(f, "ring 0 (outer)")?;
        } else {
            write!(f, "ring {} (hole {})", self.ring, self.ring - 1)?;
        }
        if let Some(i) = self.position {
            write!(f, " position {i}")?;
        }
        Ok(())
    }
}

/// Why a geofence was refused. The HTTP layer answers 400 with the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GeofenceError {
    /// The body is not JSON.
    #[error("invalid json: {0}")]
    Json(String),
    /// The JSON has the wrong structure (missing member, wrong type).
    #[error("{0}")]
    Malformed(String),
    /// A geometry type fleetd does not fence with.
    #[error(
        "unsupported geometry type {0:?}: expected Polygon, MultiPolygon or a circle {{\"center\": [lon, lat], \"radius_m\": r}}"
    )]
    UnsupportedGeometry(String),
    /// A Polygon or MultiPolygon without any ring.
    #[error("geometry has no coordinates")]
    Empty,
    /// A coordinate is NaN or infinite.
    #[error("{at}: coordinate is not finite")]
    NonFinite {
        /// Where.
        at: Location,
    },
    /// A coordinate outside longitude -180..180 or latitude -90..90.
    #[error("{at}: [{lon}, {lat}] is out of range (longitude -180..180, latitude -90..90)")]
    OutOfRange {
        /// Where.
        at: Location,
        /// The longitude given.
        lon: f64,
        /// The latitude given.
        lat: f64,
    },
    /// A ring with fewer than 4 positions (3 distinct ones and the closing one).
    #[error(
        "{at}: ring has {count} positions, at least 4 are needed (3 distinct and the first repeated)"
    )]
    TooFewPositions {
        /// Where.
        at: Location,
        /// Positions after dropping consecutive repeats.
        count: usize,
    },
    /// A ring whose last position differs from its first.
    #[error("{at}: ring is not closed: first position {first:?}, last position {last:?}")]
    UnclosedRing {
        /// Where.
        at: Location,
        /// First position, `[lon, lat]`.
        first: [f64; 2],
        /// Last position, `[lon, lat]`.
        last: [f64; 2],
    },
    /// An edge jumping more than 180° in longitude: the fence crosses the
    /// antimeridian, which fleetd does not support in one polygon.
    #[error(
        "{at}: edge from longitude {from_lon} to {to_lon} spans more than 180 degrees; split a fence that crosses the antimeridian into a MultiPolygon"
    )]
    CrossesAntimeridian {
        /// Where (the edge's end position).
        at: Location,
        /// Longitude of the edge's start.
        from_lon: f64,
        /// Longitude of the edge's end.
        to_lon: f64,
    },
    /// More positions than [`GeofenceLimits::max_vertices`].
    #[error("too many vertices: {count} (at most {max})")]
    TooManyVertices {
        /// Positions seen (counting stops soon after the limit).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A ring crosses or touches itself.
    #[error("{at}: ring intersects itself near [{lon}, {lat}]")]
    SelfIntersection {
        /// Where (the ring).
        at: Location,
        /// Longitude of the intersection.
        lon: f64,
        /// Latitude of the intersection.
        lat: f64,
    },
    /// Two rings of one polygon cross or share an edge.
    #[error("{a} and {b} intersect near [{lon}, {lat}]")]
    RingsIntersect {
        /// One ring.
        a: Location,
        /// The other ring.
        b: Location,
        /// Longitude of the intersection.
        lon: f64,
        /// Latitude of the intersection.
        lat: f64,
    },
    /// A hole that is not inside its polygon's outer ring, or lies inside
    /// another hole.
    #[error("{at}: hole is not inside the outer ring or lies inside another hole")]
    HoleOutsideShell {
        /// Where (the hole).
        at: Location,
    },
    /// Two polygons of a MultiPolygon overlap or share an edge.
    #[error("polygons {a} and {b} of the multipolygon overlap or share an edge")]
    PolygonsOverlap {
        /// One polygon.
        a: usize,
        /// The other.
        b: usize,
    },
    /// A circle centre outside the valid range.
    #[error("circle center [{lon}, {lat}] is out of range (longitude -180..180, latitude -90..90)")]
    BadCenter {
        /// The longitude given.
        lon: f64,
        /// The latitude given.
        lat: f64,
    },
    /// A circle radius that is not positive or above the limit.
    #[error("radius_m {radius_m} is out of range: must be > 0 and at most {max}")]
    BadRadius {
        /// The radius given.
        radius_m: f64,
        /// The limit.
        max: f64,
    },
    /// A known property with the wrong type or value.
    #[error("property {name:?}: {reason}")]
    BadProperty {
        /// The property.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Geofence {
    /// Parses and validates a geofence from the HTTP body: a GeoJSON Feature
    /// with Polygon or MultiPolygon geometry, a bare Polygon/MultiPolygon
    /// geometry, or a circle `{"center": [lon, lat], "radius_m": r,
    /// "properties": {...}}`. An `id` in the body is ignored: `id` wins.
    pub fn parse(
        id: GeofenceId,
        json: &str,
        limits: &GeofenceLimits,
    ) -> Result<Self, GeofenceError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| GeofenceError::Json(e.to_string()))?;
        Self::from_value(id, &value, limits)
    }

    /// Reads a fence back from the text the store keeps. It was validated
    /// when it was written; the size limits are not applied again, so that
    /// lowering them in the configuration never drops a stored fence.
    pub fn from_stored(id: GeofenceId, json: &str) -> Result<Self, GeofenceError> {
        let unbounded = GeofenceLimits {
            max_vertices: usize::MAX,
            max_radius_m: f64::MAX,
        };
        Self::parse(id, json, &unbounded)
    }

    /// [`Geofence::parse`] for an already decoded JSON value.
    pub fn from_value(
        id: GeofenceId,
        value: &Value,
        limits: &GeofenceLimits,
    ) -> Result<Self, GeofenceError> {
        let obj = value
            .as_object()
            .ok_or_else(|| malformed("geofence must be a JSON object"))?;
        let (shape, properties) = if obj.contains_key("center") || obj.contains_key("radius_m") {
            (parse_circle(obj, limits)?, properties_of(obj)?)
        } else {
            match obj.get("type").and_then(Value::as_str) {
                Some("Feature") => {
                    let geometry = obj
                        .get("geometry")
                        .filter(|g| !g.is_null())
                        .ok_or_else(|| malformed("feature has no geometry"))?;
                    (parse_geometry(geometry, limits)?, properties_of(obj)?)
                }
                Some(_) => (parse_geometry(value, limits)?, Map::new()),
                None => {
                    return Err(malformed(
                        "expected a GeoJSON Feature or geometry (member \"type\") or a circle (members \"center\" and \"radius_m\")",
                    ));
                }
            }
        };
        let name = match properties.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(GeofenceError::BadProperty {
                    name: "name",
                    reason: format!("must be a string, got {other}"),
                });
            }
        };
        let dwell_s = match properties.get("dwell_s") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(s) if s.is_finite() && s > 0.0 => Some(s),
                _ => {
                    return Err(GeofenceError::BadProperty {
                        name: "dwell_s",
                        reason: format!("must be a positive number of seconds, got {v}"),
                    });
                }
            },
        };
        Ok(Self {
            id,
            name,
            properties,
            dwell_s,
            shape,
        })
    }

    /// The fence as JSON: a GeoJSON Feature for polygons, the circle object
    /// for circles (a circle stays a circle). [`Geofence::parse`] reads it
    /// back to an equal fence.
    pub fn to_geojson(&self) -> Value {
        let mut out = Map::new();
        match &self.shape {
            Shape::Circle(c) => {
                out.insert("id".into(), self.id.as_str().into());
                out.insert("center".into(), serde_json::json!([c.center.x, c.center.y]));
                out.insert("radius_m".into(), c.radius_m.into());
            }
            Shape::Polygon(p) => {
                out.insert("type".into(), "Feature".into());
                out.insert("id".into(), self.id.as_str().into());
                out.insert(
                    "geometry".into(),
                    serde_json::json!({"type": "Polygon", "coordinates": polygon_json(p)}),
                );
            }
            Shape::MultiPolygon(mp) => {
                out.insert("type".into(), "Feature".into());
                out.insert("id".into(), self.id.as_str().into());
                let parts: Vec<Value> = mp.0.iter().map(polygon_json).collect();
                out.insert(
                    "geometry".into(),
                    serde_json::json!({"type": "MultiPolygon", "coordinates": parts}),
                );
            }
        }
        out.insert("properties".into(), Value::Object(self.properties.clone()));
        Value::Object(out)
    }

    /// [`Geofence::to_geojson`] as text, the form the store keeps.
    pub fn to_geojson_string(&self) -> String {
        self.to_geojson().to_string()
    }

    /// Number of positions over all rings (1 for a circle).
    pub fn vertex_count(&self) -> usize {
        match &self.shape {
            Shape::Circle(_) => 1,
            Shape::Polygon(p) => ring_positions(p),
            Shape::MultiPolygon(mp) => mp.0.iter().map(ring_positions).sum(),
        }
    }
}

fn ring_positions(p: &Polygon<f64>) -> usize {
    p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>()
}

fn polygon_json(p: &Polygon<f64>) -> Value {
    let ring = |r: &LineString<f64>| -> Value {
        Value::Array(r.0.iter().map(|c| serde_json::json!([c.x, c.y])).collect())
    };
    let mut rings = vec![ring(p.exterior())];
    rings.extend(p.interiors().iter().map(ring));
    Value::Array(rings)
}

fn malformed(msg: impl Into<String>) -> GeofenceError {
    GeofenceError::Malformed(msg.into())
}

fn properties_of(obj: &Map<String, Value>) -> Result<Map<String, Value>, GeofenceError> {
    match obj.get("properties") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(malformed(format!(
            "\"properties\" must be an object, got {other}"
        ))),
    }
}

fn parse_circle(obj: &Map<String, Value>, limits: &GeofenceLimits) -> Result<Shape, GeofenceError> {
    let center = obj
        .get("center")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("circle needs \"center\": [lon, lat]"))?;
    let (lon, lat) = match center.as_slice() {
        [lon, lat] => (
            lon.as_f64()
                .ok_or_else(|| malformed("circle center longitude must be a number"))?,
            lat.as_f64()
                .ok_or_else(|| malformed("circle center latitude must be a number"))?,
        ),
        _ => {
            return Err(malformed(format!(
                "circle center must be [lon, lat], got {} numbers",
                center.len()
            )));
        }
    };
    if !(lon.is_finite() && lat.is_finite() && lon.abs() <= 180.0 && lat.abs() <= 90.0) {
        return Err(GeofenceError::BadCenter { lon, lat });
    }
    let radius_v = obj
        .get("radius_m")
        .ok_or_else(|| malformed("circle needs \"radius_m\""))?;
    let radius_m = radius_v
        .as_f64()
        .ok_or_else(|| malformed(format!("radius_m must be a number, got {radius_v}")))?;
    if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= limits.max_radius_m) {
        return Err(GeofenceError::BadRadius {
            radius_m,
            max: limits.max_radius_m,
        });
    }
    Ok(Shape::Circle(Circle {
        center: Coord { x: lon, y: lat },
        radius_m,
    }))
}

fn parse_geometry(geometry: &Value, limits: &GeofenceLimits) -> Result<Shape, GeofenceError> {
    let kind = geometry
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("geometry needs a string member \"type\""))?;
    let coords = geometry
        .get("coordinates")
        .ok_or_else(|| malformed(format!("{kind} geometry needs \"coordinates\"")))?;
    let mut budget = Budget {
        used: 0,
        max: limits.max_vertices,
    };
    match kind {
        "Polygon" => {
            let polygon = parse_polygon(coords, None, &mut budget)?;
            validate::polygon(&polygon, None)?;
            Ok(Shape::Polygon(polygon))
        }
        "MultiPolygon" => {
            let parts = coords.as_array().ok_or_else(|| {
                malformed("MultiPolygon coordinates must be an array of polygons")
            })?;
            if parts.is_empty() {
                return Err(GeofenceError::Empty);
            }
            let mut polygons = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                let polygon = parse_polygon(part, Some(i), &mut budget)?;
                validate::polygon(&polygon, Some(i))?;
                polygons.push(polygon);
            }
            let mp = MultiPolygon(polygons);
            validate::parts_disjoint(&mp)?;
            Ok(Shape::MultiPolygon(mp))
        }
        other => Err(GeofenceError::UnsupportedGeometry(other.to_string())),
    }
}

/// Counts positions so an oversized input is refused before it is built.
struct Budget {
    used: usize,
    max: usize,
}

fn parse_polygon(
    coords: &Value,
    polygon: Option<usize>,
    budget: &mut Budget,
) -> Result<Polygon<f64>, GeofenceError> {
    let rings = coords
        .as_array()
        .ok_or_else(|| malformed("polygon coordinates must be an array of rings"))?;
    if rings.is_empty() {
        return Err(GeofenceError::Empty);
    }
    let mut parsed = Vec::with_capacity(rings.len());
    for (ring_idx, ring) in rings.iter().enumerate() {
        let at = Location {
            polygon,
            ring: ring_idx,
            position: None,
        };
        parsed.push(parse_ring(ring, at, budget)?);
    }
    let exterior = parsed.remove(0);
    Ok(Polygon::new(exterior, parsed))
}

fn parse_ring(
    ring: &Value,
    at: Location,
    budget: &mut Budget,
) -> Result<LineString<f64>, GeofenceError> {
    let positions = ring
        .as_array()
        .ok_or_else(|| malformed(format!("{at}: ring must be an array of positions")))?;
    budget.used += positions.len();
    if budget.used > budget.max {
        return Err(GeofenceError::TooManyVertices {
            count: budget.used,
            max: budget.max,
        });
    }
    let mut coords: Vec<Coord<f64>> = Vec::with_capacity(positions.len());
    let mut last_raw = None;
    for (i, position) in positions.iter().enumerate() {
        let at = Location {
            position: Some(i),
            ..at
        };
        let (lon, lat) = match position.as_array().map(Vec::as_slice) {
            // Altitude (a third number) is allowed by GeoJSON and ignored.
            Some([lon, lat, ..]) => match (lon.as_f64(), lat.as_f64()) {
                (Some(lon), Some(lat)) => (lon, lat),
                _ => return Err(malformed(format!("{at}: position must hold numbers"))),
            },
            _ => {
                return Err(malformed(format!(
                    "{at}: position must be [lon, lat], got {position}"
                )));
            }
        };
        if !(lon.is_finite() && lat.is_finite()) {
            return Err(GeofenceError::NonFinite { at });
        }
        if lon.abs() > 180.0 || lat.abs() > 90.0 {
            return Err(GeofenceError::OutOfRange { at, lon, lat });
        }
        let c = Coord { x: lon, y: lat };
        last_raw = Some(c);
        if let Some(prev) = coords.last() {
            if (prev.x - lon).abs() > 180.0 {
                return Err(GeofenceError::CrossesAntimeridian {
                    at,
                    from_lon: prev.x,
                    to_lon: lon,
                });
            }
            // Repeated consecutive positions are common in real data and
            // add nothing; dropping them keeps the ring checks simple.
            if *prev == c {
                continue;
            }
        }
        coords.push(c);
    }
    if let (Some(first), Some(last)) = (coords.first(), last_raw)
        && *first != last
    {
        return Err(GeofenceError::UnclosedRing {
            at,
            first: [first.x, first.y],
            last: [last.x, last.y],
        });
    }
    // Counted after dropping repeats: [a, b, b, a] is a line, not a ring.
    let count = coords.len();
    if count < 4 {
        return Err(GeofenceError::TooFewPositions { at, count });
    }
    Ok(LineString(coords))
}
