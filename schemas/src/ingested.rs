//! What flows from ingest into the processor: positions, positions replayed
//! from the journal after a restart, and the journal's checkpoints.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::PositionReport;

/// One item of the processor's input queue.
#[derive(Debug)]
pub enum Ingested {
    /// Positions heard now, in the order the journal made them durable.
    Positions(Vec<PositionReport>),
    /// Positions read back from the journal at start: some may already be
    /// stored (the journal is truncated only after the store has them), so
    /// the processor drops those it finds in the history instead of
    /// applying them twice.
    Replayed(Vec<PositionReport>),
    /// Every position of one journal segment is ahead of this in the queue:
    /// once all of them are stored, the segment may be deleted.
    Checkpoint(Checkpoint),
}

/// A journal segment's checkpoint: settled (see [`Checkpoint::done`]) once
/// every position that came before it through the processor's queue is in
/// the store.
///
/// The processor splits it between its partitions ([`Checkpoint::split`]);
/// the segment is released only when every part is done. A part dropped
/// without `done` (a partition stopped before its positions were stored)
/// releases nothing, so the segment stays and is replayed at the next start.
pub struct Checkpoint {
    inner: Arc<Inner>,
}

struct Inner {
    segment: u64,
    max_received_ms: i64,
    remaining: AtomicUsize,
    on_done: Box<dyn Fn(u64) + Send + Sync>,
}

impl Checkpoint {
    /// The checkpoint of `segment`, whose positions were all received at or
    /// before `max_received_ms`; `on_done` gets the segment once settled.
    pub fn new(
        segment: u64,
        max_received_ms: i64,
        on_done: impl Fn(u64) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                segment,
                max_received_ms,
                remaining: AtomicUsize::new(1),
                on_done: Box::new(on_done),
            }),
        }
    }

    /// The journal segment this checkpoint closes.
    pub fn segment(&self) -> u64 {
        self.inner.segment
    }

    /// No position of the segment was received later than this (server
    /// time, [`PositionReport::received_ms`]): a partition still holding a
    /// fix received at or before it may hold one of the segment's.
    pub fn max_received_ms(&self) -> i64 {
        self.inner.max_received_ms
    }

    /// Splits into `n` parts (at least one), each of which must be
    /// [`done`](Checkpoint::done) before the segment is released.
    pub fn split(self, n: usize) -> Vec<Checkpoint> {
        let n = n.max(1);
        self.inner.remaining.fetch_add(n - 1, Ordering::AcqRel);
        (0..n)
            .map(|_| Checkpoint {
                inner: Arc::clone(&self.inner),
            })
            .collect()
    }

    /// Settles this part; the last part releases the segment.
    pub fn done(self) {
        if self.inner.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.inner.on_done)(self.inner.segment);
        }
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("segment", &self.inner.segment)
            .field("max_received_ms", &self.inner.max_received_ms)
            .field("remaining", &self.inner.remaining.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn a_split_checkpoint_settles_once_when_every_part_is_done() {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&settled);
        let cp = Checkpoint::new(7, 1_000, move |s| sink.lock().expect("lock").push(s));
        let mut parts = cp.split(3);
        parts.pop().expect("part").done();
        parts.pop().expect("part").done();
        assert!(settled.lock().expect("lock").is_empty());
        parts.pop().expect("part").done();
        assert_eq!(*settled.lock().expect("lock"), [7]);
    }

    #[test]
    fn a_dropped_part_releases_nothing() {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&settled);
        let cp = Checkpoint::new(1, 0, move |s| sink.lock().expect("lock").push(s));
        let mut parts = cp.split(2);
        parts.pop().expect("part").done();
        drop(parts);
        assert!(settled.lock().expect("lock").is_empty());
    }
}
