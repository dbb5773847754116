//! A partition's devices: their states as [`DeviceRows`], a dense vector
//! plus an id → slot table.
//!
//! A `HashMap<DeviceId, DeviceState>` keeps each ~0.5 kB state inside its
//! table, and a hash table is between ½ and ⅞ full, so at a million devices
//! the empty buckets alone cost about as much as the states. Here the table
//! holds 4-byte slots (the id is read back from the row) and the states sit
//! packed in a `Vec`, which grows by doubling but only touches the memory
//! it fills.

use std::ops::Index;

use fleetd_schemas::{DeviceId, DeviceRows};

use crate::state::DeviceState;

/// Devices by id, with the `HashMap` methods the processor uses. Devices are
/// never removed (a device's state outlives its silence).
#[derive(Debug, Default)]
pub struct DeviceMap {
    rows: DeviceRows<DeviceState>,
}

/// A device's place in a [`DeviceMap`], from [`DeviceMap::entry`].
#[derive(Debug)]
pub struct DeviceEntry<'a> {
    map: &'a mut DeviceMap,
    id: DeviceId,
}

impl DeviceMap {
    /// How many devices the map holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the map holds no device.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `id`'s state.
    pub fn get(&self, id: &DeviceId) -> Option<&DeviceState> {
        self.rows.get(id)
    }

    /// `id`'s state, mutable.
    pub fn get_mut(&mut self, id: &DeviceId) -> Option<&mut DeviceState> {
        self.rows.get_mut(id)
    }

    /// Sets `id`'s state, replacing any it had.
    pub fn insert(&mut self, id: DeviceId, state: DeviceState) {
        *self.entry(id).or_default() = state;
    }

    /// `id`'s place, to read or create its state.
    pub fn entry(&mut self, id: DeviceId) -> DeviceEntry<'_> {
        DeviceEntry { map: self, id }
    }

    /// Every device with its state, in the order devices were first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &DeviceState)> {
        self.rows.iter()
    }

    /// Every device's state, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut DeviceState> {
        self.rows.iter_mut().map(|(_, s)| s)
    }

    /// Every device with its state, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&DeviceId, &mut DeviceState)> {
        self.rows.iter_mut()
    }
}

impl<'a> DeviceEntry<'a> {
    /// The device's state, created empty if it had none.
    pub fn or_default(self) -> &'a mut DeviceState {
        let DeviceEntry { map, id } = self;
        map.rows.get_or_insert_with(&id, DeviceState::default)
    }
}

impl Index<&DeviceId> for DeviceMap {
    type Output = DeviceState;

    /// Panics if `id` is unknown, like `HashMap`'s index.
    fn index(&self, id: &DeviceId) -> &DeviceState {
        self.get(id)
            .unwrap_or_else(|| panic!("unknown device {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    #[test]
    fn behaves_like_a_map() {
        let mut map = DeviceMap::default();
        assert!(map.is_empty() && map.get(&id("a")).is_none());
        map.entry(id("a")).or_default().vehicle.ts_ms = 1;
        map.entry(id("b")).or_default().vehicle.ts_ms = 2;
        // An existing entry is returned, not replaced.
        map.entry(id("a")).or_default().vehicle.odometer_m = 5.0;
        assert_eq!(map.len(), 2);
        assert_eq!(map[&id("a")].vehicle.ts_ms, 1);
        assert_eq!(map[&id("a")].vehicle.odometer_m, 5.0);
        let mut replaced = DeviceState::default();
        replaced.vehicle.ts_ms = 9;
        map.insert(id("b"), replaced);
        assert_eq!(map.get(&id("b")).map(|s| s.vehicle.ts_ms), Some(9));
        for (device, state) in map.iter_mut() {
            state.vehicle.motion_since_ms = device.as_str().len() as i64;
        }
        if let Some(s) = map.get_mut(&id("a")) {
            s.vehicle.ts_ms = 3;
        }
        let seen: Vec<_> = map
            .iter()
            .map(|(d, s)| (d.as_str(), s.vehicle.ts_ms, s.vehicle.motion_since_ms))
            .collect();
        assert_eq!(seen, [("a", 3, 1), ("b", 9, 1)]);
        assert_eq!(map.values_mut().count(), 2);
    }
}
