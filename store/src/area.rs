//! Area queries over latest positions: the query type and its exact test.

use crate::StoreError;

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
    /// Inside an H3 cell of any resolution (raw H3 index): a point is inside
    /// when H3 assigns it to that cell at the cell's resolution (geometric
    /// containment, as `h3o::LatLng::to_cell`), not when the cell is a
    /// logical ancestor of the point's res-7 area cell; near cell edges the
    /// two differ.
    Cell(u64),
}

/// Mean earth radius (IUGG), metres; the sphere every distance here uses.
pub(crate) const EARTH_RADIUS_M: f64 = 6_371_008.8;

impl BBox {
    /// Whether the point lies inside the box, edges included.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lat_ok = self.min_lat <= lat && lat <= self.max_lat;
        let lon_ok = if self.crosses_antimeridian() {
            lon >= self.min_lon || lon <= self.max_lon
        } else {
            self.min_lon <= lon && lon <= self.max_lon
        };
        lat_ok && lon_ok
    }

    /// Whether the box wraps around the antimeridian (`min_lon > max_lon`).
    pub fn crosses_antimeridian(&self) -> bool {
        self.min_lon > self.max_lon
    }

    fn validate(&self) -> Result<(), StoreError> {
        let coords_ok = is_lat(self.min_lat)
            && is_lat(self.max_lat)
            && is_lon(self.min_lon)
            && is_lon(self.max_lon);
        if !coords_ok {
            return Err(StoreError::InvalidQuery(format!(
                "bbox {self:?} is outside [-180, 180] x [-90, 90]"
            )));
        }
        if self.min_lat > self.max_lat {
            return Err(StoreError::InvalidQuery(format!(
                "bbox min_lat {} is above max_lat {}",
                self.min_lat, self.max_lat
            )));
        }
        Ok(())
    }
}

impl AreaQuery {
    /// Checks the parameters: coordinates in range and finite, radius ≥ 0,
    /// cell a valid H3 cell index.
    pub fn validate(&self) -> Result<(), StoreError> {
        match *self {
            AreaQuery::BBox(bbox) => bbox.validate(),
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

/// Great-circle distance in metres between two points given in degrees.
pub(crate) fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = phi2 - phi1;
    let d_lambda = (lon2 - lon1).to_radians();
    let h = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    // `min` guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
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
    fn bbox_edges_are_inclusive_and_antimeridian_wraps() {
        let plain = BBox {
            min_lon: 13.0,
            min_lat: 52.0,
            max_lon: 14.0,
            max_lat: 53.0,
        };
        assert!(plain.contains(52.0, 13.0) && plain.contains(53.0, 14.0));
        assert!(!plain.contains(51.999, 13.5) && !plain.contains(52.5, 14.001));
        let wrap = BBox {
            min_lon: 170.0,
            min_lat: -10.0,
            max_lon: -170.0,
            max_lat: 10.0,
        };
        assert!(wrap.contains(0.0, 175.0) && wrap.contains(0.0, -175.0));
        assert!(wrap.contains(0.0, 180.0) && wrap.contains(0.0, -180.0));
        assert!(!wrap.contains(0.0, 0.0) && !wrap.contains(0.0, 169.0));
    }

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude on the mean sphere.
        let one_deg = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        assert!((haversine_m(0.0, 0.0, 1.0, 0.0) - one_deg).abs() < 1e-6);
        // Across the antimeridian the short way round.
        assert!((haversine_m(0.0, 179.5, 0.0, -179.5) - one_deg).abs() < 1e-6);
        // Antipodes: half the circumference.
        let half = EARTH_RADIUS_M * std::f64::consts::PI;
        assert!((haversine_m(0.0, 0.0, 0.0, 180.0) - half).abs() < 1e-6);
    }

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
