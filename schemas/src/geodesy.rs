//! Plain geometry every stage shares: the lon/lat box of area queries and
//! stream filters, and great-circle distance on the mean sphere.

/// Mean earth radius (IUGG), metres: the sphere of [`haversine_m`] and of
/// the area covers.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two points given in degrees, on
/// the mean sphere: cheap, for radius and plausibility tests where its
/// 0.1–0.5% difference from the ellipsoid does not matter.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = phi2 - phi1;
    let d_lambda = (lon2 - lon1).to_radians();
    let h = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    // `min` guards asin against rounding just above 1 for antipodal points.
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

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
}
