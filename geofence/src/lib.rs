//! Geofences: the domain model, the point index and the membership tracker.
//!
//! Pure and I/O-free, like the other enrichers: no store, no clock. The
//! processor evaluates fixes against it and keeps it loaded from the store;
//! the API validates and indexes the fences it writes.
//!
//! * [`Geofence::parse`] reads the HTTP input (GeoJSON Feature or geometry
//!   with a Polygon or MultiPolygon, or a circle `{center, radius_m}`),
//!   validates it ([`GeofenceError`], limits in [`GeofenceLimits`]) and
//!   [`Geofence::to_geojson`] writes it back; that text is what is stored.
//! * [`GeofenceIndex`] answers "which fences contain this point" through an
//!   H3 cover per fence (interior cells need no test, boundary cells get an
//!   exact one) and updates one fence at a time.
//! * [`Geofences`] shares one index between the API, which writes it, and
//!   the partition workers, which evaluate each batch against it.
//! * [`evaluate`] turns one device's fixes into `enter` / `exit` / `dwell`
//!   [`fleetd_schemas::Alert`]s, keeping per-device memberships with
//!   accuracy-aware hysteresis ([`FenceSettings`]); the state lives in
//!   [`fleetd_schemas::DeviceFences`], part of the stored vehicle state.
//!
//! Geometry conventions: WGS84 degrees; polygon edges are straight in the
//! lon/lat plane (as in GeoJSON tools and shapely); a point on the boundary
//! is outside; no polygon crosses the antimeridian (split it there into a
//! MultiPolygon); circles use the WGS84 geodesic distance (Karney's
//! algorithm, via geo's `Geodesic`, accurate to nanometres).

mod config;
mod cover;
mod index;
mod model;
mod shared;
mod tracker;
mod validate;

pub use config::{DEFAULT_REFRESH, GeofenceConfig, GeofenceSettings};
pub use index::{Containment, GeofenceIndex, IndexSettings, PreparedFence};
pub use model::{Circle, Geofence, GeofenceError, GeofenceLimits, Location, Shape};
pub use shared::{Geofences, SyncReport};
pub use tracker::{FenceFix, FenceSettings, evaluate, purge};

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tracker_tests;
