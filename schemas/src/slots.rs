//! Device id → slot tables for per-device arrays.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::DeviceId;

/// Finds a device's slot in an array whose rows carry their own id (the
/// processor's device states, the store's latest index).
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
    pub fn remove<'a>(
        &mut self,
        id: &DeviceId,
        id_of: impl Fn(u32) -> &'a DeviceId,
    ) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let entry = self
            .table
            .find_entry(hash, |&slot| id_of(slot) == id)
            .ok()?;
        Some(entry.remove().0)
    }

    /// Records that `id`, which had slot `from`, now lives in `to` (a row
    /// moved by a `swap_remove`). Does nothing if `id` was not in `from`.
    pub fn relocate(&mut self, id: &DeviceId, from: u32, to: u32) {
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
