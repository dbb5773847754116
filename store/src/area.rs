//! Area queries over latest positions.

/// A longitude/latitude box. `min_lon > max_lon` means the box crosses the
/// antimeridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// West edge, degrees.
    pub min_lon: f64,
    /// South edge, degrees.
    pub min_lat: f64,
    /// East edge, degrees.
    pub max_lon: f64,
    /// North edge, degrees.
    pub max_lat: f64,
}

/// Which latest positions an area query selects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AreaQuery {
    /// Inside a box (edges inclusive).
    BBox(BBox),
    /// Within `radius_m` metres (great-circle) of a point.
    Near {
        /// Centre latitude, degrees.
        lat: f64,
        /// Centre longitude, degrees.
        lon: f64,
        /// Radius, metres.
        radius_m: f64,
    },
    /// Inside an H3 cell of any resolution (raw H3 index).
    Cell(u64),
}
