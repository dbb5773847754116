//! Geodesy helpers: distances, bearings.

pub use fleetd_schemas::haversine_m as distance_m;
use geo::{Bearing, Distance, Geodesic, Haversine, Point};

/// WGS84 ellipsoidal (geodesic, Karney) distance in metres: what odometers
/// and trip lengths add up, so they match survey-grade references.
pub fn geodesic_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Geodesic.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

/// Initial bearing in degrees [0, 360) from the first point to the second.
pub fn bearing_deg(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine
        .bearing(Point::new(lon1, lat1), Point::new(lon2, lat2))
        .rem_euclid(360.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // One degree of latitude on the mean-radius sphere.
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.08).abs() < 1.0, "{d}");
        assert!((bearing_deg(0.0, 0.0, 1.0, 0.0) - 0.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, 0.0, 1.0) - 90.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, -1.0, 0.0) - 180.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, 0.0, -1.0) - 270.0).abs() < 1e-9);
    }
}
