//! `[processor]` and `[vehicle]` of fleetd.toml: the file layer and its
//! validation into [`ProcessorSettings`]. Defaults are the settings types'
//! own, except where the file speaks other units (km/h).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleetd_schemas::{InvalidSetting, ensure_setting};
use serde::Deserialize;

use crate::batch::EnrichSettings;
use crate::settings::{ProcessorSettings, VehicleSettings};

/// `[processor]`: micro-batching and enrichment.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct ProcessorConfig {
    pub window_ms: u64,
    pub max_batch: usize,
    /// 0 = one per core.
    pub partitions: usize,
    pub queue_chunks: usize,
    pub partition_queue_chunks: usize,
    pub h3_detail_res: u8,
    pub registry_refresh_s: u64,
    pub sweep_s: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        let d = ProcessorSettings::default();
        Self {
            window_ms: d.window.as_millis() as u64,
            max_batch: d.max_batch,
            partitions: 0,
            queue_chunks: d.queue_chunks,
            partition_queue_chunks: d.partition_queue_chunks,
            h3_detail_res: u8::from(d.enrich.detail_res),
            registry_refresh_s: d.registry_refresh.as_secs(),
            sweep_s: d.sweep_every.as_secs(),
        }
    }
}

/// `[vehicle]`: data-quality filters, motion, trips and overspeed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct VehicleConfig {
    pub reorder_ms: i64,
    pub max_accuracy_m: f64,
    pub max_speed_kmh: f64,
    pub teleport_slack_m: f64,
    pub teleport_confirm: u32,
    pub stop_radius_m: f64,
    pub accuracy_factor: f64,
    pub stopped_after_s: f64,
    pub trip_end_s: f64,
    pub min_trip_m: f64,
    pub depart_fixes: u32,
    pub overspeed_grace_s: f64,
    pub overspeed_clear_s: f64,
    /// Speed limits per registry class, km/h.
    pub class_speed_limits_kmh: BTreeMap<String, f64>,
}

impl Default for VehicleConfig {
    fn default() -> Self {
        let d = VehicleSettings::default();
        Self {
            reorder_ms: d.reorder_ms,
            max_accuracy_m: d.max_accuracy_m,
            // The settings' limit is this in m/s; written in km/h here, as in
            // the shipped file (a round trip through m/s would not compare
            // equal to it).
            max_speed_kmh: MAX_SPEED_KMH,
            teleport_slack_m: d.teleport_slack_m,
            teleport_confirm: d.teleport_confirm,
            stop_radius_m: d.stop_radius_m,
            accuracy_factor: d.accuracy_factor,
            stopped_after_s: d.stopped_after_ms as f64 / 1000.0,
            trip_end_s: d.trip_end_ms as f64 / 1000.0,
            min_trip_m: d.min_trip_m,
            depart_fixes: d.depart_fixes,
            overspeed_grace_s: d.overspeed_grace_ms as f64 / 1000.0,
            overspeed_clear_s: d.overspeed_clear_ms as f64 / 1000.0,
            class_speed_limits_kmh: BTreeMap::new(),
        }
    }
}

/// The fastest plausible speed by default, km/h.
pub(crate) const MAX_SPEED_KMH: f64 = 300.0;

impl ProcessorConfig {
    /// Validates `[processor]` with its `[vehicle]` section into the
    /// settings the processor runs with.
    pub fn validate(&self, vehicle: &VehicleConfig) -> Result<ProcessorSettings, InvalidSetting> {
        let p = self;
        ensure_setting!(
            (10..=60_000).contains(&p.window_ms),
            "processor.window_ms (--window-ms) must be in 10..=60000, got {}",
            p.window_ms
        );
        ensure_setting!(
            p.max_batch > 0 && p.queue_chunks > 0 && p.partition_queue_chunks > 0,
            "processor.max_batch, queue_chunks and partition_queue_chunks must be > 0"
        );
        let detail_res = h3o::Resolution::try_from(p.h3_detail_res).map_err(|_| {
            InvalidSetting(format!(
                "processor.h3_detail_res must be in 0..=15, got {}",
                p.h3_detail_res
            ))
        })?;
        ensure_setting!(
            p.registry_refresh_s > 0 && p.sweep_s > 0,
            "processor.registry_refresh_s and processor.sweep_s must be > 0"
        );
        let defaults = ProcessorSettings::default();
        Ok(ProcessorSettings {
            window: Duration::from_millis(p.window_ms),
            max_batch: p.max_batch,
            partitions: if p.partitions == 0 {
                defaults.partitions
            } else {
                p.partitions
            },
            queue_chunks: p.queue_chunks,
            partition_queue_chunks: p.partition_queue_chunks,
            enrich: EnrichSettings {
                detail_res,
                vehicle: vehicle.validate()?,
            },
            sweep_every: Duration::from_secs(p.sweep_s),
            registry_refresh: Duration::from_secs(p.registry_refresh_s),
            geofence_refresh: defaults.geofence_refresh,
            class_speed_limits_kmh: vehicle.class_speed_limits()?,
        })
    }
}

impl VehicleConfig {
    /// Validates into the vehicle-state thresholds.
    pub fn validate(&self) -> Result<VehicleSettings, InvalidSetting> {
        let non_negative = [
            ("reorder_ms", self.reorder_ms as f64),
            ("max_accuracy_m", self.max_accuracy_m),
            ("teleport_slack_m", self.teleport_slack_m),
            ("overspeed_grace_s", self.overspeed_grace_s),
            ("overspeed_clear_s", self.overspeed_clear_s),
            ("min_trip_m", self.min_trip_m),
        ];
        for (name, v) in non_negative {
            ensure_setting!(
                v.is_finite() && v >= 0.0,
                "vehicle.{name} must be a number >= 0, got {v}"
            );
        }
        let positive = [
            ("max_speed_kmh", self.max_speed_kmh),
            ("stop_radius_m", self.stop_radius_m),
            ("accuracy_factor", self.accuracy_factor),
            ("stopped_after_s", self.stopped_after_s),
            ("trip_end_s", self.trip_end_s),
        ];
        for (name, v) in positive {
            ensure_setting!(
                v.is_finite() && v > 0.0,
                "vehicle.{name} must be a number > 0, got {v}"
            );
        }
        ensure_setting!(
            self.reorder_ms <= 600_000,
            "vehicle.reorder_ms must be at most 600000 (10 min), got {}",
            self.reorder_ms
        );
        ensure_setting!(
            self.trip_end_s >= self.stopped_after_s,
            "vehicle.trip_end_s ({}) must be at least vehicle.stopped_after_s ({})",
            self.trip_end_s,
            self.stopped_after_s
        );
        ensure_setting!(
            self.depart_fixes > 0 && self.teleport_confirm > 0,
            "vehicle.depart_fixes and vehicle.teleport_confirm must be >= 1"
        );
        let ms = |s: f64| (s * 1000.0).round() as i64;
        Ok(VehicleSettings {
            reorder_ms: self.reorder_ms,
            max_accuracy_m: self.max_accuracy_m,
            max_speed_mps: self.max_speed_kmh / 3.6,
            teleport_slack_m: self.teleport_slack_m,
            teleport_confirm: self.teleport_confirm,
            stop_radius_m: self.stop_radius_m,
            accuracy_factor: self.accuracy_factor,
            stopped_after_ms: ms(self.stopped_after_s),
            trip_end_ms: ms(self.trip_end_s),
            min_trip_m: self.min_trip_m,
            depart_fixes: self.depart_fixes,
            overspeed_grace_ms: ms(self.overspeed_grace_s),
            overspeed_clear_ms: ms(self.overspeed_clear_s),
        })
    }

    fn class_speed_limits(&self) -> Result<HashMap<String, f64>, InvalidSetting> {
        let mut limits = HashMap::with_capacity(self.class_speed_limits_kmh.len());
        for (class, &limit) in &self.class_speed_limits_kmh {
            ensure_setting!(
                limit.is_finite() && limit > 0.0,
                "vehicle.class_speed_limits_kmh.{class} must be > 0, got {limit}"
            );
            limits.insert(class.clone(), limit);
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_bad_values_are_named() {
        let s = ProcessorConfig::default()
            .validate(&VehicleConfig::default())
            .expect("defaults valid");
        let d = ProcessorSettings::default();
        assert_eq!(s.window, d.window);
        assert_eq!(s.enrich.vehicle, d.enrich.vehicle);
        assert!((MAX_SPEED_KMH / 3.6 - d.enrich.vehicle.max_speed_mps).abs() < 1e-12);

        let p = ProcessorConfig {
            window_ms: 0,
            ..ProcessorConfig::default()
        };
        let err = p.validate(&VehicleConfig::default()).expect_err("window 0");
        assert!(err.0.contains("processor.window_ms"), "{err}");
        let v = VehicleConfig {
            trip_end_s: 10.0,
            ..VehicleConfig::default()
        };
        let err = v.validate().expect_err("trip end before stop");
        assert!(err.0.contains("vehicle.trip_end_s"), "{err}");
        let v = VehicleConfig {
            max_speed_kmh: f64::NAN,
            ..VehicleConfig::default()
        };
        assert!(v.validate().is_err());
        let mut v = VehicleConfig::default();
        v.class_speed_limits_kmh.insert("truck".into(), 80.0);
        let s = ProcessorConfig::default().validate(&v).expect("valid");
        assert_eq!(s.class_speed_limits_kmh.get("truck"), Some(&80.0));
        v.class_speed_limits_kmh.insert("bike".into(), -1.0);
        let err = ProcessorConfig::default()
            .validate(&v)
            .expect_err("negative");
        assert!(err.0.contains("class_speed_limits_kmh.bike"), "{err}");
    }
}
