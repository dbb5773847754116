//! [`Geofences`]: the fence index shared by the API (writer) and the
//! partition workers (readers).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleetd_schemas::GeofenceId;

use crate::index::{GeofenceIndex, IndexSettings};
use crate::model::{Geofence, GeofenceLimits};
use crate::tracker::FenceSettings;

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
        let changed: Vec<Geofence> = {
            let index = self.read();
            fences
                .into_iter()
                .filter(|f| index.get(&f.id) != Some(f))
                .collect()
        };
        report.upserted = changed.len();
        // Covers are independent: compute them on every core (a start with
        // 100k fences is ~15 s of covers on one), then insert each quickly.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(changed.len().div_ceil(1000).max(1));
        let chunk = changed.len().div_ceil(threads).max(1);
        let mut changed = changed;
        let mut parts = Vec::with_capacity(threads);
        while changed.len() > chunk {
            parts.push(changed.split_off(changed.len() - chunk));
        }
        parts.push(changed);
        std::thread::scope(|scope| {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    scope.spawn(move || {
                        let prepared: Vec<_> = part
                            .into_iter()
                            .map(|f| GeofenceIndex::prepare(settings, f))
                            .collect();
                        let mut index = self.write();
                        for p in prepared {
                            index.insert_prepared(p);
                        }
                    })
                })
                .collect();
            for worker in workers {
                if worker.join().is_err() {
                    tracing::error!("a geofence cover thread panicked");
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use geo::Coord;

    use super::*;
    use crate::model::{Circle, Shape};

    fn circle(id: &str, lon: f64, radius_m: f64) -> Geofence {
        Geofence {
            id: GeofenceId::parse(id).expect("id"),
            name: None,
            properties: serde_json::Map::new(),
            dwell_s: None,
            shape: Shape::Circle(Circle {
                center: Coord { x: lon, y: 52.5 },
                radius_m,
            }),
        }
    }

    #[test]
    fn sync_replaces_only_what_changed_and_removes_the_rest() {
        let set = Geofences::default();
        let first: Vec<Geofence> = (0..2500)
            .map(|i| circle(&format!("f{i}"), 13.0 + i as f64 * 1e-3, 50.0))
            .collect();
        let report = set.sync(first.clone());
        assert_eq!(
            report,
            SyncReport {
                upserted: 2500,
                removed: 0
            }
        );
        assert_eq!(set.len(), 2500);
        let inside = |lon: f64| {
            let index = set.read();
            let mut hits = Vec::new();
            index.containing(52.5, lon, &mut hits);
            hits.len()
        };
        assert_eq!(inside(13.0), 1);

        // Same set again: nothing to do.
        assert_eq!(set.sync(first.clone()), SyncReport::default());
        // One moved, one gone, one new.
        let mut second = first;
        second[0] = circle("f0", 16.0, 50.0);
        second.pop();
        second.push(circle("new", 15.0, 50.0));
        let report = set.sync(second);
        assert_eq!(
            report,
            SyncReport {
                upserted: 2,
                removed: 1
            }
        );
        assert_eq!(set.len(), 2500);
        assert_eq!(inside(13.0), 0, "f0 moved away");
        assert_eq!(inside(16.0), 1);
        assert!(set.contains(&GeofenceId::parse("new").expect("id")));
        assert!(!set.contains(&GeofenceId::parse("f2499").expect("id")));
        let (page, more) = set.page(None, 2);
        let ids: Vec<&str> = page.iter().map(|f| f.id.as_str()).collect();
        assert_eq!((ids, more), (vec!["f0", "f1"], true));
    }
}
