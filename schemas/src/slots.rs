//! Device id → slot tables for per-device arrays.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::DeviceId;

/// Finds a device's slot in an array whose rows carry their own id (see
/// [`DeviceRows`]; the store's latest index keeps its own rows).
///
/// A `HashMap<DeviceId, u32>` would keep a second copy of every id beside
/// the slot, 24 bytes per bucket against 4 here: with a million devices
/// and buckets up to ⅞ full, ~40 MB per table. The price is that lookups
/// read the id back through the caller's array (`id_of`).
#[derive(Debug, Default, Clone)]
pub struct DeviceSlots {
    hasher: RandomState,
    table: HashTable<u32>,
}

impl DeviceSlots {
    /// `id`'s slot, if it has one. `id_of(slot)` is the id stored in that
    /// slot's row.
    pub fn get<'a>(&self, id: &DeviceId, id_of: impl Fn(u32) -> &'a DeviceId) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table.find(hash, |&slot| id_of(slot) == id).copied()
    }

    /// Records that `id` lives in `slot`. The caller makes sure `id` has no
    /// slot yet (look it up first); `id_of` must already answer for `slot`
    /// and every slot recorded before.
    pub fn insert<'a>(&mut self, id: &DeviceId, slot: u32, id_of: impl Fn(u32) -> &'a DeviceId) {
        let hash = self.hasher.hash_one(id);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, slot, |&s| hasher.hash_one(id_of(s)));
    }

    /// Forgets `id`'s slot; returns it, or `None` if `id` had none.
    fn remove<'a>(&mut self, id: &DeviceId, id_of: impl Fn(u32) -> &'a DeviceId) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let entry = self
            .table
            .find_entry(hash, |&slot| id_of(slot) == id)
            .ok()?;
        Some(entry.remove().0)
    }

    /// Records that `id`, which had slot `from`, now lives in `to` (a row
    /// moved by a `swap_remove`). Does nothing if `id` was not in `from`.
    fn relocate(&mut self, id: &DeviceId, from: u32, to: u32) {
        let hash = self.hasher.hash_one(id);
        if let Some(slot) = self.table.find_mut(hash, |&slot| slot == from) {
            *slot = to;
        }
    }

    /// How many devices have a slot.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no device has a slot.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Per-device values packed in a `Vec`, found through a [`DeviceSlots`]
/// table: the processor's device states and the live heatmap's cells.
/// Rows are in the order devices were first seen, until [`Self::retain`]
/// fills the holes it makes with the last rows.
#[derive(Debug, Clone)]
pub struct DeviceRows<T> {
    slots: DeviceSlots,
    rows: Vec<(DeviceId, T)>,
}

impl<T> Default for DeviceRows<T> {
    fn default() -> Self {
        Self {
            slots: DeviceSlots::default(),
            rows: Vec::new(),
        }
    }
}

impl<T> DeviceRows<T> {
    /// How many devices have a row.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no device has a row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn slot(&self, id: &DeviceId) -> Option<usize> {
        let rows = &self.rows;
        self.slots
            .get(id, |slot| &rows[slot as usize].0)
            .map(|slot| slot as usize)
    }

    /// `id`'s value.
    pub fn get(&self, id: &DeviceId) -> Option<&T> {
        let slot = self.slot(id)?;
        self.rows.get(slot).map(|(_, v)| v)
    }

    /// `id`'s value, mutable.
    pub fn get_mut(&mut self, id: &DeviceId) -> Option<&mut T> {
        let slot = self.slot(id)?;
        self.rows.get_mut(slot).map(|(_, v)| v)
    }

    /// `id`'s value, made by `make` if it had none.
    pub fn get_or_insert_with(&mut self, id: &DeviceId, make: impl FnOnce() -> T) -> &mut T {
        let slot = match self.slot(id) {
            Some(slot) => slot,
            None => {
                let slot = self.rows.len();
                self.rows.push((id.clone(), make()));
                // Past 4 billion devices the slot saturates and the device
                // is not found again: memory runs out long before.
                let rows = &self.rows;
                self.slots
                    .insert(id, u32::try_from(slot).unwrap_or(u32::MAX), |s| {
                        &rows[s as usize].0
                    });
                slot
            }
        };
        let last = self.rows.len() - 1;
        &mut self.rows[slot.min(last)].1
    }

    /// Every device with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &T)> {
        self.rows.iter().map(|(id, v)| (id, v))
    }

    /// Every device with its value, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&DeviceId, &mut T)> {
        self.rows.iter_mut().map(|(id, v)| (&*id, v))
    }

    /// Keeps the devices for which `keep` is true; each removed row is
    /// replaced by the last one, so the order changes.
    pub fn retain(&mut self, mut keep: impl FnMut(&DeviceId, &T) -> bool) {
        let mut i = 0;
        while i < self.rows.len() {
            let (id, value) = &self.rows[i];
            if keep(id, value) {
                i += 1;
                continue;
            }
            let rows = &self.rows;
            self.slots.remove(id, |s| &rows[s as usize].0);
            // The last row moves into the hole and is looked at next.
            let last = self.rows.len() - 1;
            self.rows.swap_remove(i);
            if let Some((moved, _)) = self.rows.get(i).filter(|_| i < last) {
                let from = u32::try_from(last).unwrap_or(u32::MAX);
                let to = u32::try_from(i).unwrap_or(u32::MAX);
                self.slots.relocate(moved, from, to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_slot_through_the_rows() {
        let rows: Vec<DeviceId> = (0..10_000)
            .map(|i| DeviceId::parse(&format!("dev-{i}")).expect("valid id"))
            .collect();
        let mut slots = DeviceSlots::default();
        for (i, id) in rows.iter().enumerate() {
            let slot = u32::try_from(i).expect("fits");
            assert_eq!(slots.get(id, |s| &rows[s as usize]), None);
            slots.insert(id, slot, |s| &rows[s as usize]);
        }
        assert_eq!(slots.len(), rows.len());
        for (i, id) in rows.iter().enumerate() {
            assert_eq!(slots.get(id, |s| &rows[s as usize]), Some(i as u32));
        }
        let stranger = DeviceId::parse("dev-x").expect("valid id");
        assert_eq!(slots.get(&stranger, |s| &rows[s as usize]), None);
    }

    #[test]
    fn rows_can_be_swap_removed() {
        let mut rows: Vec<DeviceId> = (0..1_000)
            .map(|i| DeviceId::parse(&format!("dev-{i}")).expect("valid id"))
            .collect();
        let mut slots = DeviceSlots::default();
        for (i, id) in rows.iter().enumerate() {
            slots.insert(id, u32::try_from(i).expect("fits"), |s| &rows[s as usize]);
        }
        // Remove the rows whose id ends in 3 the way a sweep does: the last
        // row moves into the hole.
        let mut i = 0;
        while i < rows.len() {
            if rows[i].as_str().ends_with('3') {
                let gone = rows[i].clone();
                assert_eq!(slots.remove(&gone, |s| &rows[s as usize]), Some(i as u32));
                let last = rows.len() - 1;
                rows.swap_remove(i);
                if i < last {
                    slots.relocate(&rows[i], last as u32, i as u32);
                }
                assert_eq!(slots.get(&gone, |s| &rows[s as usize]), None);
            } else {
                i += 1;
            }
        }
        assert_eq!(slots.len(), rows.len());
        for (i, id) in rows.iter().enumerate() {
            assert_eq!(slots.get(id, |s| &rows[s as usize]), Some(i as u32), "{id}");
        }
        let stranger = DeviceId::parse("dev-x").expect("valid id");
        assert_eq!(slots.remove(&stranger, |s| &rows[s as usize]), None);
    }
}
