//! `[geofences]` of fleetd.toml: the file layer and its validation into
//! [`GeofenceSettings`]. Defaults are the settings types' own.

use std::time::Duration;

use fleetd_schemas::{InvalidSetting, ensure_setting};
use serde::Deserialize;

use crate::{FenceSettings, GeofenceLimits, IndexSettings};

/// `[geofences]`: fence limits, the index and membership rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct GeofenceConfig {
    pub max_vertices: usize,
    pub max_radius_m: f64,
    pub cell_budget: usize,
    pub min_outside_s: f64,
    pub default_accuracy_m: f64,
    pub refresh_s: u64,
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        let limits = GeofenceLimits::default();
        let index = IndexSettings::default();
        let tracking = FenceSettings::default();
        Self {
            max_vertices: limits.max_vertices,
            max_radius_m: limits.max_radius_m,
            cell_budget: index.cell_budget,
            min_outside_s: tracking.min_outside_ms as f64 / 1000.0,
            default_accuracy_m: tracking.default_accuracy_m,
            refresh_s: DEFAULT_REFRESH.as_secs(),
        }
    }
}

/// How often fences are reloaded from a shared store by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Validated `[geofences]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeofenceSettings {
    /// What a fence may be.
    pub limits: GeofenceLimits,
    /// The point index.
    pub index: IndexSettings,
    /// Membership rules (enter / exit / dwell).
    pub tracking: FenceSettings,
    /// How often fences are reloaded from a shared (ScyllaDB) store, for
    /// changes made through other nodes.
    pub refresh: Duration,
}

impl GeofenceConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<GeofenceSettings, InvalidSetting> {
        ensure_setting!(
            (4..=1_000_000).contains(&self.max_vertices),
            "geofences.max_vertices must be in 4..=1000000, got {}",
            self.max_vertices
        );
        ensure_setting!(
            self.max_radius_m.is_finite() && self.max_radius_m > 0.0,
            "geofences.max_radius_m must be > 0, got {}",
            self.max_radius_m
        );
        ensure_setting!(
            (4..=10_000).contains(&self.cell_budget),
            "geofences.cell_budget must be in 4..=10000, got {}",
            self.cell_budget
        );
        ensure_setting!(
            self.min_outside_s.is_finite() && self.min_outside_s >= 0.0,
            "geofences.min_outside_s must be >= 0, got {}",
            self.min_outside_s
        );
        ensure_setting!(
            self.default_accuracy_m.is_finite() && self.default_accuracy_m >= 0.0,
            "geofences.default_accuracy_m must be >= 0, got {}",
            self.default_accuracy_m
        );
        ensure_setting!(self.refresh_s > 0, "geofences.refresh_s must be > 0");
        Ok(GeofenceSettings {
            limits: GeofenceLimits {
                max_vertices: self.max_vertices,
                max_radius_m: self.max_radius_m,
            },
            index: IndexSettings {
                cell_budget: self.cell_budget,
                ..IndexSettings::default()
            },
            tracking: FenceSettings {
                min_outside_ms: (self.min_outside_s * 1000.0).round() as i64,
                default_accuracy_m: self.default_accuracy_m,
            },
            refresh: Duration::from_secs(self.refresh_s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let s = GeofenceConfig::default().validate().expect("valid");
        assert_eq!(s.tracking, FenceSettings::default());
        let bad = GeofenceConfig {
            max_vertices: 3,
            ..GeofenceConfig::default()
        };
        let err = bad.validate().expect_err("too few vertices");
        assert!(err.0.contains("geofences.max_vertices"), "{err}");
        let half = GeofenceConfig {
            min_outside_s: 12.5,
            ..GeofenceConfig::default()
        };
        assert_eq!(
            half.validate().expect("valid").tracking.min_outside_ms,
            12_500
        );
    }
}
