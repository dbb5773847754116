//! The per-device reorder buffer: holds fixes for the reorder allowance so
//! that the state machine sees them in device-time order, and recognises
//! duplicates and fixes that arrive too late.

use fleetd_schemas::EnrichedPosition;

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
    /// Waiting fixes, by ascending `ts_ms`.
    pending: Vec<EnrichedPosition>,
    /// Device times recently released, for duplicate detection (bounded).
    recent: Vec<i64>,
    /// Newest device time seen.
    max_ts: i64,
}

impl Reorder {
    /// Whether no fix is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Classifies a fix at `ts_ms` for a device whose newest applied fix is
    /// at `applied_ts` (0: none yet).
    pub(crate) fn classify(&self, ts_ms: i64, applied_ts: i64) -> Admission {
        let seen = (applied_ts != 0 && ts_ms == applied_ts)
            || self.recent.contains(&ts_ms)
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
    ) -> std::vec::IntoIter<EnrichedPosition> {
        let watermark = self.max_ts.saturating_sub(allowance_ms);
        let due = |p: &EnrichedPosition| {
            all || p.report.ts_ms <= watermark
                || p.report.received_ms <= now_ms.saturating_sub(allowance_ms)
        };
        let n = self.pending.iter().take_while(|p| due(p)).count();
        let keep = RECENT_MAX.saturating_sub(n.min(RECENT_MAX));
        if self.recent.len() > keep {
            let excess = self.recent.len() - keep;
            self.recent.drain(..excess);
        }
        let skip = n.saturating_sub(RECENT_MAX);
        self.recent
            .extend(self.pending[skip..n].iter().map(|p| p.report.ts_ms));
        // Amortized growth can overshoot the bound (e.g. 50 → 100).
        self.recent.shrink_to(RECENT_MAX);
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
            assert!(r.recent.len() <= RECENT_MAX && r.recent.capacity() <= RECENT_MAX);
        }
        // The newest released times are the ones remembered.
        assert_eq!(r.recent.len(), RECENT_MAX);
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
        assert_eq!(r.recent.first(), Some(&(10_100 - RECENT_MAX as i64)));
        assert_eq!(r.recent.last(), Some(&10_099));
    }
}
