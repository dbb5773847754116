//! A drivable road network read from an OpenStreetMap `.osm.pbf` extract
//! ([`RoadMap`]), and shortest-time routes across it.
//!
//! Only ways a car may use are kept (by `highway` class and `access`), one
//! way streets keep their direction, and the network is cut down to its
//! largest strongly connected part so that every node can reach every other.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use osmpbf::{Element, ElementReader};
use petgraph::algo::{astar, kosaraju_scc};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::error::SimError;

/// The OpenStreetMap extract shipped with the simulator: central Helsinki,
/// about 1.6 × 1.7 km (© OpenStreetMap contributors, ODbL 1.0; see
/// `simulator/data/README.md`).
const EMBEDDED_HELSINKI: &[u8] = include_bytes!("../data/helsinki.osm.pbf");

/// Name under which [`RoadMap::named`] finds the embedded extract.
pub const EMBEDDED_MAP: &str = "helsinki";

/// Road classes a car drives on, with the urban speed assumed when a way has
/// no usable `maxspeed` tag (km/h).
const CLASS_SPEED_KMH: &[(&str, f64)] = &[
    ("motorway", 100.0),
    ("motorway_link", 60.0),
    ("trunk", 70.0),
    ("trunk_link", 50.0),
    ("primary", 50.0),
    ("primary_link", 40.0),
    ("secondary", 50.0),
    ("secondary_link", 40.0),
    ("tertiary", 40.0),
    ("tertiary_link", 30.0),
    ("unclassified", 30.0),
    ("residential", 30.0),
    ("living_street", 10.0),
    ("service", 15.0),
];

/// A point of the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoadNode {
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// Local metres east of the map's centre.
    pub x: f64,
    /// Local metres north of the map's centre.
    pub y: f64,
    /// Traffic lights here (`highway=traffic_signals`).
    pub signals: bool,
    /// A stop or give-way sign here.
    pub yield_sign: bool,
    /// Three or more streets meet here.
    pub intersection: bool,
}

/// One directed street segment between two consecutive nodes of a way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoadEdge {
    /// Length in metres.
    pub length_m: f64,
    /// Legal speed in m/s (from `maxspeed`, else the class default).
    pub speed_mps: f64,
}

/// A drivable, strongly connected road network.
#[derive(Debug, Clone)]
pub struct RoadMap {
    graph: DiGraph<RoadNode, RoadEdge>,
    center_lat: f64,
    center_lon: f64,
    max_speed_mps: f64,
}

/// A way as read from the file, before its nodes are known to exist.
struct RawWay {
    refs: Vec<i64>,
    speed_mps: f64,
    /// `Some(true)` one way along the node order, `Some(false)` against it.
    oneway: Option<bool>,
}

impl RoadMap {
    /// [`RoadMap::named`] for an optional `--map`, shared and logged; `None`
    /// for none. Parsing a large extract takes a while: call it off the
    /// async runtime.
    pub fn load(name_or_path: Option<&str>) -> Result<Option<Arc<RoadMap>>, SimError> {
        let Some(name) = name_or_path else {
            return Ok(None);
        };
        let roads = RoadMap::named(name)?;
        tracing::info!(
            map = name,
            nodes = roads.node_count(),
            segments = roads.edge_count(),
            km = roads.total_length_m() / 1000.0,
            "road map loaded"
        );
        Ok(Some(Arc::new(roads)))
    }

    /// The embedded extract by name ([`EMBEDDED_MAP`]), or else a `.osm.pbf`
    /// file at that path.
    pub fn named(name_or_path: &str) -> Result<RoadMap, SimError> {
        if name_or_path == EMBEDDED_MAP {
            return RoadMap::from_pbf(EMBEDDED_HELSINKI, EMBEDDED_MAP);
        }
        RoadMap::from_file(Path::new(name_or_path))
    }

    /// Reads a `.osm.pbf` file.
    pub fn from_file(path: &Path) -> Result<RoadMap, SimError> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|err| map_error(&path.display().to_string(), err.to_string()))?;
        RoadMap::from_pbf(&bytes, &path.display().to_string())
    }

    /// Builds the network from the bytes of an `.osm.pbf` extract; `source`
    /// names it in errors.
    pub fn from_pbf(bytes: &[u8], source: &str) -> Result<RoadMap, SimError> {
        let mut coords: HashMap<i64, (f64, f64)> = HashMap::new();
        let mut signals: HashSet<i64> = HashSet::new();
        let mut yields: HashSet<i64> = HashSet::new();
        let mut ways: Vec<RawWay> = Vec::new();
        let mut node_tags = |id: i64, tags: &mut dyn Iterator<Item = (&str, &str)>| {
            for (key, value) in tags {
                match (key, value) {
                    ("highway", "traffic_signals") => {
                        signals.insert(id);
                    }
                    ("highway", "stop" | "give_way") => {
                        yields.insert(id);
                    }
                    _ => {}
                }
            }
        };
        ElementReader::new(std::io::Cursor::new(bytes))
            .for_each(|element| match element {
                Element::Node(n) => {
                    coords.insert(n.id(), (n.lat(), n.lon()));
                    node_tags(n.id(), &mut n.tags());
                }
                Element::DenseNode(n) => {
                    coords.insert(n.id(), (n.lat(), n.lon()));
                    node_tags(n.id(), &mut n.tags());
                }
                Element::Way(w) => {
                    let tags: Vec<(&str, &str)> = w.tags().collect();
                    if let Some(way) = drivable(&tags, w.refs().collect()) {
                        ways.push(way);
                    }
                }
                Element::Relation(_) => {}
            })
            .map_err(|err| map_error(source, err.to_string()))?;
        RoadMap::build(source, &coords, &signals, &yields, &ways)
    }

    fn build(
        source: &str,
        coords: &HashMap<i64, (f64, f64)>,
        signals: &HashSet<i64>,
        yields: &HashSet<i64>,
        ways: &[RawWay],
    ) -> Result<RoadMap, SimError> {
        let (mut min_lat, mut max_lat, mut min_lon, mut max_lon) =
            (90.0f64, -90.0f64, 180.0f64, -180.0f64);
        for way in ways {
            for (lat, lon) in way.refs.iter().filter_map(|id| coords.get(id)) {
                min_lat = min_lat.min(*lat);
                max_lat = max_lat.max(*lat);
                min_lon = min_lon.min(*lon);
                max_lon = max_lon.max(*lon);
            }
        }
        if min_lat > max_lat {
            return Err(map_error(source, "no drivable roads".to_owned()));
        }
        let (center_lat, center_lon) = ((min_lat + max_lat) / 2.0, (min_lon + max_lon) / 2.0);
        let (m_lat, m_lon) = metres_per_degree(center_lat);

        let mut full: DiGraph<RoadNode, RoadEdge> = DiGraph::new();
        let mut index: HashMap<i64, NodeIndex> = HashMap::new();
        let mut vertex = |graph: &mut DiGraph<RoadNode, RoadEdge>, id: i64| -> Option<NodeIndex> {
            let &(lat, lon) = coords.get(&id)?;
            Some(*index.entry(id).or_insert_with(|| {
                graph.add_node(RoadNode {
                    lat,
                    lon,
                    x: (lon - center_lon) * m_lon,
                    y: (lat - center_lat) * m_lat,
                    signals: signals.contains(&id),
                    yield_sign: yields.contains(&id),
                    intersection: false,
                })
            }))
        };
        for way in ways {
            // An extract cuts ways at its border: a missing node ends a run.
            let mut prev: Option<NodeIndex> = None;
            for &id in &way.refs {
                let here = vertex(&mut full, id);
                if let (Some(a), Some(b)) = (prev, here)
                    && a != b
                {
                    let (pa, pb) = (full[a], full[b]);
                    let length_m = (pa.x - pb.x).hypot(pa.y - pb.y);
                    let edge = RoadEdge {
                        length_m,
                        speed_mps: way.speed_mps,
                    };
                    match way.oneway {
                        Some(true) => {
                            full.add_edge(a, b, edge);
                        }
                        Some(false) => {
                            full.add_edge(b, a, edge);
                        }
                        None => {
                            full.add_edge(a, b, edge);
                            full.add_edge(b, a, edge);
                        }
                    }
                }
                prev = here;
            }
        }

        // Keep the largest strongly connected component, so any route exists.
        let largest = kosaraju_scc(&full)
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap_or_default();
        if largest.len() < 2 {
            return Err(map_error(source, "no connected drivable roads".to_owned()));
        }
        let mut graph = DiGraph::with_capacity(largest.len(), largest.len() * 3);
        let mut renumber = HashMap::with_capacity(largest.len());
        for &old in &largest {
            renumber.insert(old, graph.add_node(full[old]));
        }
        for edge in full.edge_references() {
            if let (Some(&a), Some(&b)) =
                (renumber.get(&edge.source()), renumber.get(&edge.target()))
            {
                graph.add_edge(a, b, *edge.weight());
            }
        }
        let mut max_speed_mps: f64 = 1.0;
        for node in graph.node_indices() {
            let mut neighbours: Vec<NodeIndex> = graph.neighbors_undirected(node).collect();
            neighbours.sort_unstable();
            neighbours.dedup();
            graph[node].intersection = neighbours.len() >= 3;
        }
        for edge in graph.edge_weights() {
            max_speed_mps = max_speed_mps.max(edge.speed_mps);
        }
        Ok(RoadMap {
            graph,
            center_lat,
            center_lon,
            max_speed_mps,
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of directed street segments.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// The node with index `i` (`0..node_count()`).
    pub fn node(&self, i: usize) -> RoadNode {
        self.graph[NodeIndex::new(i)]
    }

    /// The map's centre (middle of its bounding box), WGS84 degrees.
    pub fn center(&self) -> (f64, f64) {
        (self.center_lat, self.center_lon)
    }

    /// Total length of the directed segments, in metres.
    pub fn total_length_m(&self) -> f64 {
        self.graph.edge_weights().map(|e| e.length_m).sum()
    }

    /// The segment from node `a` to node `b`, if the map has one.
    pub fn edge(&self, a: usize, b: usize) -> Option<RoadEdge> {
        let (a, b) = (NodeIndex::new(a), NodeIndex::new(b));
        self.graph.find_edge(a, b).map(|e| self.graph[e])
    }

    /// The fastest route from node `from` to node `to` at legal speeds, as
    /// node indices including both ends; `None` when `from == to` or out of range.
    pub fn route(&self, from: usize, to: usize) -> Option<Vec<usize>> {
        let n = self.graph.node_count();
        if from == to || from >= n || to >= n {
            return None;
        }
        let goal = self.graph[NodeIndex::new(to)];
        let max_speed = self.max_speed_mps;
        let (_, path) = astar(
            &self.graph,
            NodeIndex::new(from),
            |node| node.index() == to,
            |edge| edge.weight().length_m / edge.weight().speed_mps,
            // Straight line at the top speed never overestimates, so A*
            // returns the fastest route.
            |node| {
                let p = self.graph[node];
                (p.x - goal.x).hypot(p.y - goal.y) / max_speed
            },
        )?;
        Some(path.into_iter().map(NodeIndex::index).collect())
    }
}

/// The way as a [`RawWay`] if a car may drive it.
fn drivable(tags: &[(&str, &str)], refs: Vec<i64>) -> Option<RawWay> {
    let tag = |key: &str| tags.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let class = tag("highway")?;
    let &(_, default_kmh) = CLASS_SPEED_KMH.iter().find(|(c, _)| *c == class)?;
    let closed = |v: Option<&str>| matches!(v, Some("no" | "private"));
    if closed(tag("access")) || closed(tag("motor_vehicle")) || closed(tag("motorcar")) {
        return None;
    }
    if tag("area") == Some("yes") || refs.len() < 2 {
        return None;
    }
    let kmh = tag("maxspeed")
        .and_then(parse_maxspeed)
        .unwrap_or(default_kmh);
    let oneway = match tag("oneway") {
        Some("yes" | "true" | "1") => Some(true),
        Some("-1" | "reverse") => Some(false),
        Some("no" | "false" | "0") => None,
        _ if tag("junction") == Some("roundabout") || class == "motorway" => Some(true),
        _ => None,
    };
    Some(RawWay {
        refs,
        speed_mps: kmh / 3.6,
        oneway,
    })
}

/// `maxspeed` in km/h: `50`, `30 mph`; anything else (`signals`, `none`,
/// zone codes) is unknown.
fn parse_maxspeed(value: &str) -> Option<f64> {
    let value = value.trim();
    let (number, factor) = match value.strip_suffix("mph") {
        Some(n) => (n.trim(), 1.609_344),
        None => (value, 1.0),
    };
    let kmh = number.parse::<f64>().ok()? * factor;
    (kmh.is_finite() && (5.0..=150.0).contains(&kmh)).then_some(kmh)
}

/// Metres per degree of latitude and of longitude on the WGS84 ellipsoid at
/// `lat` (series expansion, good to centimetres).
pub(crate) fn metres_per_degree(lat: f64) -> (f64, f64) {
    let phi = lat.to_radians();
    let m_lat = 111_132.954 - 559.822 * (2.0 * phi).cos() + 1.175 * (4.0 * phi).cos();
    let m_lon = 111_412.84 * phi.cos() - 93.5 * (3.0 * phi).cos();
    (m_lat, m_lon.max(1.0))
}

fn map_error(source: &str, reason: String) -> SimError {
    SimError::InvalidMap {
        map: source.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::city::haversine_m;

    #[test]
    fn embedded_helsinki_is_a_connected_street_network() {
        let map = RoadMap::named(EMBEDDED_MAP).expect("embedded map loads");
        assert!(map.node_count() > 1_000, "{} nodes", map.node_count());
        let (lat, lon) = map.center();
        assert!((60.16..60.18).contains(&lat) && (24.93..24.96).contains(&lon));
        let km = map.total_length_m() / 1000.0;
        assert!((20.0..200.0).contains(&km), "{km} km of directed street");
        let signals = (0..map.node_count())
            .filter(|&i| map.node(i).signals)
            .count();
        let crossings = (0..map.node_count())
            .filter(|&i| map.node(i).intersection)
            .count();
        assert!(
            signals > 10 && crossings > 100,
            "{signals} signals, {crossings} intersections"
        );
        // Projection agrees with the great-circle distance.
        for i in (0..map.node_count()).step_by(97) {
            let (a, b) = (map.node(0), map.node(i));
            let local = (a.x - b.x).hypot(a.y - b.y);
            let sphere = haversine_m(a.lat, a.lon, b.lat, b.lon);
            assert!(
                (local - sphere).abs() < 2.0 + sphere * 0.005,
                "{local} vs {sphere}"
            );
        }
    }

    #[test]
    fn every_route_follows_real_segments_and_is_not_absurdly_long() {
        let map = RoadMap::named(EMBEDDED_MAP).expect("embedded map loads");
        let n = map.node_count();
        for k in 0..40 {
            let (from, to) = ((k * 7919) % n, (k * 104_729 + 13) % n);
            if from == to {
                continue;
            }
            let route = map.route(from, to).expect("strongly connected");
            assert_eq!((route[0], route[route.len() - 1]), (from, to));
            let mut length = 0.0;
            for w in route.windows(2) {
                length += map
                    .edge(w[0], w[1])
                    .expect("route uses map segments")
                    .length_m;
            }
            let (a, b) = (map.node(from), map.node(to));
            let straight = (a.x - b.x).hypot(a.y - b.y);
            assert!(length + 1e-6 >= straight, "shorter than a straight line");
            assert!(
                length < straight * 5.0 + 1_500.0,
                "{length} m for {straight} m"
            );
        }
        assert_eq!(map.route(3, 3), None);
        assert_eq!(map.route(0, n), None);
    }

    #[test]
    fn tags_decide_what_is_drivable() {
        let refs = || vec![1, 2, 3];
        assert!(drivable(&[("highway", "footway")], refs()).is_none());
        assert!(drivable(&[("highway", "residential"), ("access", "private")], refs()).is_none());
        let primary = drivable(&[("highway", "primary")], refs()).expect("drivable");
        assert!((primary.speed_mps - 50.0 / 3.6).abs() < 1e-9 && primary.oneway.is_none());
        let posted = drivable(&[("highway", "tertiary"), ("maxspeed", "20 mph")], refs());
        assert!((posted.expect("drivable").speed_mps - 20.0 * 1.609_344 / 3.6).abs() < 1e-9);
        let round = drivable(
            &[("highway", "primary"), ("junction", "roundabout")],
            refs(),
        );
        assert_eq!(round.expect("drivable").oneway, Some(true));
        let back = drivable(&[("highway", "service"), ("oneway", "-1")], refs());
        assert_eq!(back.expect("drivable").oneway, Some(false));
        assert_eq!(parse_maxspeed("signals"), None);
        assert_eq!(parse_maxspeed("1000"), None);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(matches!(
            RoadMap::from_pbf(b"not a pbf at all", "junk"),
            Err(SimError::InvalidMap { .. })
        ));
        assert!(matches!(
            RoadMap::named("/nonexistent/city.osm.pbf"),
            Err(SimError::InvalidMap { .. })
        ));
    }
}
