//! The per-device reorder buffer: holds fixes for the reorder allowance so
//! that the state machine sees them in device-time order, and recognises
//! duplicates and fixes that arrive too late.

use fleetd_schemas::EnrichedPosition;
use thin_vec::ThinVec;

/// Released timestamps remembered for duplicate detection, at most.
const RECENT_MAX: usize = 64;

/// How a fix was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Held until its turn.
    Pending,
    /// The same device time was already received: dropped.
    Duplicate,
    /// Older than the newest fix already applied: history only.
    TooLate,
}

/// Fixes of one device waiting for their turn, oldest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reorder {
    /// Waiting fixes, by ascending `ts_ms`. A `ThinVec`: empty for nearly
    /// every device between batches, and empty it is one null pointer
    /// instead of a `Vec`'s 24 bytes (16 MB at a million devices).
    pending: ThinVec<EnrichedPosition>,
    /// Device times recently released, for duplicate detection (bounded).
    recent: RecentTimes,
    /// Newest device time seen.
    max_ts: i64,
}

/// The last [`RECENT_MAX`] device times released, oldest first, each kept
/// as a `u32` offset from `base` (49 days of range): every device that has
/// sent 64 fixes holds this buffer, so 4 bytes instead of 8 per time is
/// 256 bytes per device (256 MB at a million devices).
#[derive(Debug, Clone, Default)]
struct RecentTimes {
    base: i64,
    offsets: Vec<u32>,
}

impl RecentTimes {
    fn contains(&self, ts_ms: i64) -> bool {
        self.offset(ts_ms)
            .is_some_and(|offset| self.offsets.contains(&offset))
    }

    fn offset(&self, ts_ms: i64) -> Option<u32> {
        ts_ms
            .checked_sub(self.base)
            .and_then(|d| u32::try_from(d).ok())
    }

    /// Remembers `ts_ms`, forgetting the oldest time beyond the bound.
    fn push(&mut self, ts_ms: i64) {
        if self.offsets.len() >= RECENT_MAX {
            self.offsets.remove(0);
        }
        if self.offsets.is_empty() {
            self.base = ts_ms;
        }
        match self.offset(ts_ms) {
            Some(offset) => self.offsets.push(offset),
            None => self.rebase(ts_ms),
        }
    }

    /// The rare time that does not fit the current base (older than it, or
    /// 49 days newer): re-expresses the kept times from a new base, dropping
    /// those more than 49 days older than the newest.
    fn rebase(&mut self, ts_ms: i64) {
        let times: Vec<i64> = self.times().chain(std::iter::once(ts_ms)).collect();
        let newest = times.iter().copied().max().unwrap_or(ts_ms);
        let floor = newest.saturating_sub(i64::from(u32::MAX));
        let kept: Vec<i64> = times.into_iter().filter(|&t| t >= floor).collect();
        self.base = kept.iter().copied().min().unwrap_or(ts_ms);
        let base = self.base;
        self.offsets = kept
            .into_iter()
            .filter_map(|t| u32::try_from(t - base).ok())
            .collect();
    }

    /// The remembered times, oldest first.
    fn times(&self) -> impl Iterator<Item = i64> + '_ {
        self.offsets.iter().map(|&o| self.base + i64::from(o))
    }
}

impl Reorder {
    /// Whether no fix is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest receive time of a waiting fix.
    pub(crate) fn oldest_received_ms(&self) -> Option<i64> {
        self.pending.iter().map(|p| p.report.received_ms).min()
    }

    /// Classifies a fix at `ts_ms` for a device whose newest applied fix is
    /// at `applied_ts` (0: none yet).
    pub(crate) fn classify(&self, ts_ms: i64, applied_ts: i64) -> Admission {
        let seen = (applied_ts != 0 && ts_ms == applied_ts)
            || self.recent.contains(ts_ms)
            || self
                .pending
                .binary_search_by_key(&ts_ms, |p| p.report.ts_ms)
                .is_ok();
        if seen {
            Admission::Duplicate
        } else if applied_ts != 0 && ts_ms < applied_ts {
            Admission::TooLate
        } else {
            Admission::Pending
        }
    }

    /// Holds a fix that [`Reorder::classify`] found `Pending`.
    pub(crate) fn insert(&mut self, position: EnrichedPosition) {
        let ts = position.report.ts_ms;
        self.max_ts = self.max_ts.max(ts);
        // Most buffers hold one fix for the allowance and are then emptied;
        // the default first allocation (four fixes, ~0.5 kB) would make
        // every device that published in the last allowance cost four
        // times that (~60 MB at 50k/s). Growth beyond one doubles as usual.
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(1);
        }
        let at = self.pending.partition_point(|p| p.report.ts_ms < ts);
        self.pending.insert(at, position);
    }

    /// Takes the fixes whose turn has come, oldest first: those at least
    /// `allowance_ms` behind the newest fix seen, or received at least
    /// `allowance_ms` before `now_ms` (so a device that went quiet is not
    /// held forever); every fix when `all`.
    ///
    /// Memory matters here, since every device has a buffer: once empty,
    /// the pending buffer gives its allocation back (four waiting fixes'
    /// worth, ~0.5 kB per device otherwise), and `recent` is trimmed before
    /// it grows past [`RECENT_MAX`], so its capacity never doubles beyond.
    pub(crate) fn release(
        &mut self,
        now_ms: i64,
        allowance_ms: i64,
        all: bool,
    ) -> thin_vec::IntoIter<EnrichedPosition> {
        let watermark = self.max_ts.saturating_sub(allowance_ms);
        let due = |p: &EnrichedPosition| {
            all || p.report.ts_ms <= watermark
                || p.report.received_ms <= now_ms.saturating_sub(allowance_ms)
        };
        let n = self.pending.iter().take_while(|p| due(p)).count();
        for p in &self.pending[n.saturating_sub(RECENT_MAX)..n] {
            self.recent.push(p.report.ts_ms);
        }
        let released = if n == self.pending.len() {
            std::mem::take(&mut self.pending)
        } else {
            self.pending.drain(..n).collect()
        };
        released.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use fleetd_schemas::{DeviceId, H3Cells, PositionReport};

    use super::*;

    fn p(ts_ms: i64, received_ms: i64) -> EnrichedPosition {
        EnrichedPosition {
            report: PositionReport {
                device_id: DeviceId::parse("d").expect("id"),
                ts_ms,
                lat: 0.0,
                lon: 0.0,
                accuracy_m: None,
                altitude_m: None,
                speed_mps: None,
                heading_deg: None,
                battery_pct: None,
                seq: None,
                received_ms,
            },
            h3: H3Cells::default(),
            speed_derived: false,
            heading_derived: false,
            flag: None,
        }
    }

    #[test]
    fn releases_in_order_after_the_allowance() {
        let mut r = Reorder::default();
        for ts in [5_000, 1_000, 3_000] {
            assert_eq!(r.classify(ts, 0), Admission::Pending);
            r.insert(p(ts, 10_000));
        }
        assert_eq!(r.classify(3_000, 0), Admission::Duplicate);
        let out: Vec<i64> = r
            .release(10_500, 2_000, false)
            .map(|p| p.report.ts_ms)
            .collect();
        assert_eq!(out, [1_000, 3_000]);
        assert_eq!(r.classify(3_000, 3_000), Admission::Duplicate);
        assert_eq!(r.classify(2_000, 3_000), Admission::TooLate);
        // Received long enough ago: released even though nothing newer came.
        let out: Vec<i64> = r
            .release(12_000, 2_000, false)
            .map(|p| p.report.ts_ms)
            .collect();
        assert_eq!(out, [5_000]);
        assert!(r.is_empty());
    }

    #[test]
    fn buffers_stay_within_their_bounds() {
        let mut r = Reorder::default();
        for round in 0..5i64 {
            for i in 0..50 {
                let ts = round * 1_000 + i;
                assert_eq!(r.classify(ts, 0), Admission::Pending);
                r.insert(p(ts, 0));
            }
            assert_eq!(r.release(0, 0, true).count(), 50);
            // Emptied: the buffer's allocation is given back.
            assert_eq!(r.pending.capacity(), 0);
            let recent = &r.recent.offsets;
            assert!(recent.len() <= RECENT_MAX && recent.capacity() <= RECENT_MAX);
        }
        // The newest released times are the ones remembered.
        assert_eq!(r.recent.offsets.len(), RECENT_MAX);
        assert_eq!(r.classify(4_049, 0), Admission::Duplicate);
        // 50 of round 4 and the last 14 of round 3.
        assert_eq!(r.classify(4_000, 0), Admission::Duplicate);
        assert_eq!(r.classify(3_036, 0), Admission::Duplicate);
        assert_eq!(r.classify(3_035, 0), Admission::Pending);
        // A release of more than the bound keeps only its newest.
        for ts in 10_000..10_100 {
            r.insert(p(ts, 0));
        }
        assert_eq!(r.release(0, 0, true).count(), 100);
        let times: Vec<i64> = r.recent.times().collect();
        assert_eq!(times.first(), Some(&(10_100 - RECENT_MAX as i64)));
        assert_eq!(times.last(), Some(&10_099));
    }

    #[test]
    fn a_lone_fix_takes_room_for_one() {
        let mut r = Reorder::default();
        r.insert(p(1_000, 0));
        assert_eq!(r.pending.capacity(), 1);
        // More than one grows as a vector does.
        r.insert(p(2_000, 0));
        r.insert(p(3_000, 0));
        assert!(r.pending.capacity() >= 3);
        assert_eq!(r.release(0, 0, true).count(), 3);
        assert_eq!(r.pending.capacity(), 0);
    }

    #[test]
    fn remembered_times_survive_any_spacing() {
        let mut recent = RecentTimes::default();
        // Out of order, and further apart than a u32 of milliseconds.
        let far = 60 * 86_400_000;
        for ts in [1_000, 500, 1_000 + far, 2_000 + far] {
            recent.push(ts);
            assert!(recent.contains(ts), "{ts}");
        }
        // The times more than 49 days older than the newest are forgotten.
        assert!(!recent.contains(1_000) && !recent.contains(500));
        assert_eq!(
            recent.times().collect::<Vec<_>>(),
            [1_000 + far, 2_000 + far]
        );
        assert!(!recent.contains(i64::MIN) && !recent.contains(i64::MAX));
    }
}
