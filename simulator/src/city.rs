//! The synthetic city: a square grid of streets around a centre point, and
//! the conversion between its local metres and WGS84 degrees.

/// A square street grid centred on a point: `blocks × blocks` blocks of
/// `block_m` metres, streets running north–south and east–west.
///
/// Positions inside the city are local metres (x east, y north) from the
/// centre; [`CityGrid::to_lat_lon`] turns them into WGS84 degrees with a
/// local tangent-plane approximation, accurate to well under a metre across
/// a few kilometres. The grid is small and `Copy`, so every vehicle keeps its
/// own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CityGrid {
    center_lat: f64,
    center_lon: f64,
    blocks: u32,
    block_m: f64,
    m_per_deg_lat: f64,
    m_per_deg_lon: f64,
}

/// An intersection of the grid: column `col` (west to east) and row `row`
/// (south to north), both in `0..=blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    /// Column, counted from the west edge.
    pub col: u32,
    /// Row, counted from the south edge.
    pub row: u32,
}

/// A street direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Towards increasing rows.
    North,
    /// Towards increasing columns.
    East,
    /// Towards decreasing rows.
    South,
    /// Towards decreasing columns.
    West,
}

impl Direction {
    /// All four directions, clockwise from north.
    pub const ALL: [Self; 4] = [Self::North, Self::East, Self::South, Self::West];

    /// Compass heading in degrees clockwise from north.
    pub fn heading_deg(self) -> f64 {
        match self {
            Self::North => 0.0,
            Self::East => 90.0,
            Self::South => 180.0,
            Self::West => 270.0,
        }
    }

    /// Unit vector (east, north).
    pub fn unit(self) -> (f64, f64) {
        match self {
            Self::North => (0.0, 1.0),
            Self::East => (1.0, 0.0),
            Self::South => (0.0, -1.0),
            Self::West => (-1.0, 0.0),
        }
    }

    /// The opposite direction (a U-turn).
    pub fn reverse(self) -> Self {
        match self {
            Self::North => Self::South,
            Self::East => Self::West,
            Self::South => Self::North,
            Self::West => Self::East,
        }
    }
}

impl CityGrid {
    /// Blocks per side of the default city.
    pub const DEFAULT_BLOCKS: u32 = 20;
    /// Block length of the default city, in metres.
    pub const DEFAULT_BLOCK_M: f64 = 150.0;

    /// The default city (20 × 20 blocks of 150 m, 3 km across) around a
    /// centre given in WGS84 degrees.
    pub fn new(center_lat: f64, center_lon: f64) -> Self {
        Self::with_blocks(
            center_lat,
            center_lon,
            Self::DEFAULT_BLOCKS,
            Self::DEFAULT_BLOCK_M,
        )
    }

    /// A city of `blocks × blocks` blocks of `block_m` metres. At least one
    /// block of at least 10 m is kept whatever is asked.
    pub fn with_blocks(center_lat: f64, center_lon: f64, blocks: u32, block_m: f64) -> Self {
        let phi = center_lat.to_radians();
        // Metres per degree on the WGS84 ellipsoid at this latitude
        // (series expansion, good to centimetres).
        let m_per_deg_lat = 111_132.954 - 559.822 * (2.0 * phi).cos() + 1.175 * (4.0 * phi).cos();
        let m_per_deg_lon = 111_412.84 * phi.cos() - 93.5 * (3.0 * phi).cos();
        Self {
            center_lat,
            center_lon,
            blocks: blocks.max(1),
            block_m: if block_m.is_finite() {
                block_m.max(10.0)
            } else {
                Self::DEFAULT_BLOCK_M
            },
            m_per_deg_lat,
            m_per_deg_lon: m_per_deg_lon.max(1.0),
        }
    }

    /// Blocks per side.
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// Length of one block (the distance between neighbouring
    /// intersections), in metres.
    pub fn block_m(&self) -> f64 {
        self.block_m
    }

    /// The intersection's local position in metres (east, north) from the
    /// centre.
    pub fn node_xy(&self, node: Node) -> (f64, f64) {
        let half = f64::from(self.blocks) / 2.0;
        (
            (f64::from(node.col) - half) * self.block_m,
            (f64::from(node.row) - half) * self.block_m,
        )
    }

    /// The intersection one block from `node` in direction `dir`, or `None`
    /// at the city's edge.
    pub fn neighbour(&self, node: Node, dir: Direction) -> Option<Node> {
        let Node { col, row } = node;
        let (col, row) = match dir {
            Direction::North => (col, row.checked_add(1)?),
            Direction::East => (col.checked_add(1)?, row),
            Direction::South => (col, row.checked_sub(1)?),
            Direction::West => (col.checked_sub(1)?, row),
        };
        (col <= self.blocks && row <= self.blocks).then_some(Node { col, row })
    }

    /// Directions in which a street leaves `node` (two at corners, three on
    /// edges, four inside).
    pub fn exits(&self, node: Node) -> impl Iterator<Item = Direction> + '_ {
        Direction::ALL
            .into_iter()
            .filter(move |&dir| self.neighbour(node, dir).is_some())
    }

    /// Local metres (east, north) from the centre to WGS84 (lat, lon) degrees.
    pub fn to_lat_lon(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.center_lat + y / self.m_per_deg_lat,
            self.center_lon + x / self.m_per_deg_lon,
        )
    }
}

pub use fleetd_schemas::haversine_m;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_edges_and_exits() {
        let grid = CityGrid::new(52.52, 13.405);
        let corner = Node { col: 0, row: 0 };
        assert_eq!(
            grid.exits(corner).collect::<Vec<_>>(),
            [Direction::North, Direction::East]
        );
        let inner = Node { col: 3, row: 7 };
        assert_eq!(grid.exits(inner).count(), 4);
        assert_eq!(
            grid.neighbour(Node { col: 20, row: 5 }, Direction::East),
            None
        );
        assert_eq!(
            grid.neighbour(inner, Direction::West),
            Some(Node { col: 2, row: 7 })
        );
        assert_eq!(grid.node_xy(Node { col: 10, row: 10 }), (0.0, 0.0));
        assert_eq!(grid.node_xy(corner), (-1500.0, -1500.0));
    }

    #[test]
    fn local_metres_match_degrees() {
        let grid = CityGrid::new(52.52, 13.405);
        let (lat0, lon0) = grid.to_lat_lon(0.0, 0.0);
        assert_eq!((lat0, lon0), (52.52, 13.405));
        // One kilometre north and east, checked against a haversine distance.
        // The sphere behind haversine is off from the ellipsoid by a few
        // metres per kilometre, hence the tolerance.
        for (x, y) in [(1000.0, 0.0), (0.0, 1000.0), (-600.0, 800.0)] {
            let (lat, lon) = grid.to_lat_lon(x, y);
            let d = haversine_m(lat0, lon0, lat, lon);
            assert!((d - 1000.0).abs() < 5.0, "({x}, {y}) is {d} m away");
        }
    }
}
