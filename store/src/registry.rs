//! The enrichment cache of the device registry: what the processor joins
//! into every batch (names, classes, speed limits).
//!
//! The API writes an entry to the store and then here, so a change reaches
//! the next batch (within one window). Processes that share a store but not
//! this cache (several fleetd nodes) pick up other nodes' changes with the
//! periodic [`Registry::replace_all`] from the store.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard};

use fleetd_schemas::{DeviceId, DeviceInfo};

/// The registry cache: device entries plus per-class speed limits from
/// configuration. Shared as `Arc<Registry>` by the API (writer) and the
/// processor (reader, one read lock per batch, never across `.await`).
#[derive(Debug, Default)]
pub struct Registry {
    devices: RwLock<HashMap<DeviceId, DeviceInfo>>,
    class_limits_kmh: HashMap<String, f64>,
}

impl Registry {
    /// An empty cache with the configured class speed limits (km/h).
    pub fn new(class_limits_kmh: HashMap<String, f64>) -> Self {
        Self {
            devices: RwLock::default(),
            class_limits_kmh,
        }
    }

    /// Replaces every entry (start-up load and periodic refresh).
    pub fn replace_all(&self, entries: Vec<(DeviceId, DeviceInfo)>) {
        let map: HashMap<DeviceId, DeviceInfo> = entries.into_iter().collect();
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Creates or replaces one entry.
    pub fn upsert(&self, device: DeviceId, info: DeviceInfo) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device, info);
    }

    /// Removes one entry.
    pub fn remove(&self, device: &DeviceId) {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
    }

    /// One entry.
    pub fn get(&self, device: &DeviceId) -> Option<DeviceInfo> {
        self.read().get(device).cloned()
    }

    /// Every entry (for listing).
    pub fn entries(&self) -> Vec<(DeviceId, DeviceInfo)> {
        self.read()
            .iter()
            .map(|(id, info)| (id.clone(), info.clone()))
            .collect()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The speed limit that applies to a device with registry entry `info`:
    /// its own, else its class's, else none.
    pub fn speed_limit_kmh(&self, info: Option<&DeviceInfo>) -> Option<f64> {
        let info = info?;
        info.speed_limit_kmh.or_else(|| {
            info.class
                .as_ref()
                .and_then(|c| self.class_limits_kmh.get(c).copied())
        })
    }

    /// A read view for one batch: readers take it once per batch, never
    /// across an `.await`; writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<DeviceId, DeviceInfo>> {
        self.devices.read().unwrap_or_else(|e| e.into_inner())
    }
}
