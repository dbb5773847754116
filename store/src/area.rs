//! Area queries over latest positions: the query type and its exact test.

pub use fleetd_schemas::BBox;
pub(crate) use fleetd_schemas::{EARTH_RADIUS_M, haversine_m};

use crate::StoreError;

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
    /// Inside an H3 cell of any resolution (raw H3 index): a point is inside
    /// when H3 assigns it to that cell at the cell's resolution (geometric
    /// containment, as `h3o::LatLng::to_cell`), not when the cell is a
    /// logical ancestor of the point's res-7 area cell; near cell edges the
    /// two differ.
    Cell(u64),
}

/// Checks that a box lies inside [-180, 180] x [-90, 90] with its south
/// edge below its north edge.
fn validate_bbox(bbox: &BBox) -> Result<(), StoreError> {
    let coords_ok = is_lat(bbox.min_lat)
        && is_lat(bbox.max_lat)
        && is_lon(bbox.min_lon)
        && is_lon(bbox.max_lon);
    if !coords_ok {
        return Err(StoreError::InvalidQuery(format!(
            "bbox {bbox:?} is outside [-180, 180] x [-90, 90]"
        )));
    }
    if bbox.min_lat > bbox.max_lat {
        return Err(StoreError::InvalidQuery(format!(
            "bbox min_lat {} is above max_lat {}",
            bbox.min_lat, bbox.max_lat
        )));
    }
    Ok(())
}

impl AreaQuery {
    /// Checks the parameters: coordinates in range and finite, radius ≥ 0,
    /// cell a valid H3 cell index.
    pub fn validate(&self) -> Result<(), StoreError> {
        match *self {
            AreaQuery::BBox(bbox) => validate_bbox(&bbox),
            AreaQuery::Near { lat, lon, radius_m } => {
                if !is_lat(lat) || !is_lon(lon) {
                    return Err(StoreError::InvalidQuery(format!(
                        "near point ({lat}, {lon}) is not a valid lat/lon"
                    )));
                }
                if !(radius_m.is_finite() && radius_m >= 0.0) {
                    return Err(StoreError::InvalidQuery(format!(
                        "radius {radius_m} m is not a finite distance ≥ 0"
                    )));
                }
                Ok(())
            }
            AreaQuery::Cell(raw) => parse_cell(raw).map(|_| ()),
        }
    }

    /// Whether the point is selected by the query: the exact test that area
    /// reads apply after narrowing candidates with the H3 index.
    ///
    /// For [`AreaQuery::Cell`] a point is inside when H3 assigns it to that
    /// cell at the cell's resolution; an invalid cell contains nothing.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match *self {
            AreaQuery::BBox(bbox) => bbox.contains(lat, lon),
            AreaQuery::Near {
                lat: center_lat,
                lon: center_lon,
                radius_m,
            } => haversine_m(center_lat, center_lon, lat, lon) <= radius_m,
            AreaQuery::Cell(raw) => match (parse_cell(raw), h3o::LatLng::new(lat, lon)) {
                (Ok(cell), Ok(point)) => point.to_cell(cell.resolution()) == cell,
                _ => false,
            },
        }
    }
}

/// A raw H3 value as a cell index, or an `InvalidQuery` naming it.
pub(crate) fn parse_cell(raw: u64) -> Result<h3o::CellIndex, StoreError> {
    h3o::CellIndex::try_from(raw)
        .map_err(|err| StoreError::InvalidQuery(format!("cell {raw:#x}: {err}")))
}

fn is_lat(v: f64) -> bool {
    (-90.0..=90.0).contains(&v)
}

fn is_lon(v: f64) -> bool {
    (-180.0..=180.0).contains(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_bad_parameters() {
        let bad = [
            AreaQuery::BBox(BBox {
                min_lon: 0.0,
                min_lat: 10.0,
                max_lon: 1.0,
                max_lat: 5.0,
            }),
            AreaQuery::BBox(BBox {
                min_lon: f64::NAN,
                min_lat: 0.0,
                max_lon: 1.0,
                max_lat: 1.0,
            }),
            AreaQuery::BBox(BBox {
                min_lon: -181.0,
                min_lat: 0.0,
                max_lon: 1.0,
                max_lat: 1.0,
            }),
            AreaQuery::Near {
                lat: 91.0,
                lon: 0.0,
                radius_m: 1.0,
            },
            AreaQuery::Near {
                lat: 0.0,
                lon: 0.0,
                radius_m: -1.0,
            },
            AreaQuery::Near {
                lat: 0.0,
                lon: 0.0,
                radius_m: f64::INFINITY,
            },
            AreaQuery::Cell(0),
            AreaQuery::Cell(u64::MAX),
        ];
        for query in bad {
            assert!(
                matches!(query.validate(), Err(StoreError::InvalidQuery(_))),
                "{query:?}"
            );
        }
        let cell = h3o::LatLng::new(52.5, 13.4).map(|p| p.to_cell(h3o::Resolution::Nine));
        let cell = u64::from(cell.expect("finite"));
        assert!(AreaQuery::Cell(cell).validate().is_ok());
        assert!(AreaQuery::Cell(cell).contains(52.5, 13.4));
        assert!(!AreaQuery::Cell(cell).contains(52.6, 13.4));
    }
}
