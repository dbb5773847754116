//! [`Geofences`]: the fence index shared by the API (writer) and the
//! partition workers (readers).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleetd_schemas::GeofenceId;

use crate::geofence::index::{GeofenceIndex, IndexSettings};
use crate::geofence::model::{Geofence, GeofenceLimits};
use crate::geofence::tracker::FenceSettings;

/// Every geofence, indexed, behind one lock.
///
/// The API validates a fence, writes it to the store and then here, so the
/// next batch of every partition evaluates it (within one window); nodes
/// that share a store pick up each other's changes through
/// [`Geofences::sync`]. Workers hold the read lock while they evaluate one
/// batch, on the blocking pool; writers compute a fence's cover before
/// taking the write lock, so they hold it only to copy cells in.
#[derive(Debug)]
pub struct Geofences {
    index: RwLock<GeofenceIndex>,
    limits: GeofenceLimits,
    tracking: FenceSettings,
}

/// What [`Geofences::sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Fences added or replaced.
    pub upserted: usize,
    /// Fences removed.
    pub removed: usize,
}

impl Default for Geofences {
    fn default() -> Self {
        Self::new(
            IndexSettings::default(),
            GeofenceLimits::default(),
            FenceSettings::default(),
        )
    }
}

impl Geofences {
    /// An empty set.
    pub fn new(index: IndexSettings, limits: GeofenceLimits, tracking: FenceSettings) -> Self {
        Self {
            index: RwLock::new(GeofenceIndex::new(index)),
            limits,
            tracking,
        }
    }

    /// What a fence must keep to be accepted.
    pub fn limits(&self) -> &GeofenceLimits {
        &self.limits
    }

    /// The membership rules workers apply.
    pub fn tracking(&self) -> &FenceSettings {
        &self.tracking
    }

    /// The index, for evaluating a batch. Do not hold it across `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, GeofenceIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, GeofenceIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a fence; returns the one replaced. Computes the
    /// fence's cover (milliseconds for a country): call it off the async
    /// runtime.
    pub fn upsert(&self, fence: Geofence) -> Option<Geofence> {
        let settings = self.read().settings();
        let prepared = GeofenceIndex::prepare(settings, fence);
        self.write().insert_prepared(prepared)
    }

    /// Removes a fence; returns it if it was there. Devices inside it lose
    /// the membership without an `exit` on their next fix.
    pub fn remove(&self, id: &GeofenceId) -> Option<Geofence> {
        self.write().remove(id)
    }

    /// One fence.
    pub fn get(&self, id: &GeofenceId) -> Option<Geofence> {
        self.read().get(id).cloned()
    }

    /// Whether the fence exists.
    pub fn contains(&self, id: &GeofenceId) -> bool {
        self.read().get(id).is_some()
    }

    /// Number of fences.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there is no fence.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Up to `limit` fences by id, after `after`; and whether more follow.
    pub fn page(&self, after: Option<&GeofenceId>, limit: usize) -> (Vec<Geofence>, bool) {
        let index = self.read();
        let mut ids: Vec<&GeofenceId> = index
            .iter()
            .map(|f| &f.id)
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        let more = ids.len() > limit;
        if more {
            // Only the first `limit` need sorting.
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        let fences = ids
            .into_iter()
            .filter_map(|id| index.get(id).cloned())
            .collect();
        (fences, more)
    }

    /// Makes the set equal to `fences` (start-up load, periodic refresh
    /// from a shared store): fences that differ are replaced, missing ones
    /// removed, equal ones left alone, so a refresh costs covers only for
    /// what changed. CPU-heavy at start (a cover per fence): call it off
    /// the async runtime.
    pub fn sync(&self, fences: Vec<Geofence>) -> SyncReport {
        let mut report = SyncReport::default();
        let settings = self.read().settings();
        let wanted: std::collections::HashSet<GeofenceId> =
            fences.iter().map(|f| f.id.clone()).collect();
        for fence in fences {
            if self.read().get(&fence.id) == Some(&fence) {
                continue;
            }
            let prepared = GeofenceIndex::prepare(settings, fence);
            self.write().insert_prepared(prepared);
            report.upserted += 1;
        }
        let stale: Vec<GeofenceId> = self
            .read()
            .iter()
            .filter(|f| !wanted.contains(&f.id))
            .map(|f| f.id.clone())
            .collect();
        let mut index = self.write();
        for id in &stale {
            index.remove(id);
        }
        report.removed = stale.len();
        report
    }
}
