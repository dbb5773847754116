//! A bounded replay buffer of one event kind: by count and by age.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SeqEvent;

/// The newest events of one kind, oldest first.
#[derive(Debug)]
pub(super) struct Replay {
    events: VecDeque<Arc<SeqEvent>>,
    capacity: usize,
    /// The highest sequence number this buffer can no longer replay: the
    /// newest evicted event, or the number before this process's first.
    unavailable_through: u64,
}

impl Replay {
    pub(super) fn new(capacity: usize, unavailable_through: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            unavailable_through,
        }
    }

    /// Appends an event (sequence numbers must increase), evicting the
    /// oldest one when full.
    pub(super) fn push(&mut self, event: Arc<SeqEvent>) {
        if self.capacity == 0 {
            self.unavailable_through = event.seq;
            return;
        }
        if self.events.len() == self.capacity {
            self.evict_front();
        }
        self.events.push_back(event);
    }

    /// Drops events published more than `age` before `now`.
    pub(super) fn expire(&mut self, now: Instant, age: Duration) {
        while let Some(front) = self.events.front() {
            if now.saturating_duration_since(front.published_at) <= age {
                break;
            }
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        if let Some(old) = self.events.pop_front() {
            self.unavailable_through = self.unavailable_through.max(old.seq);
        }
    }

    /// Events with a sequence number above `since`, oldest first.
    pub(super) fn after(&self, since: u64) -> Vec<Arc<SeqEvent>> {
        let start = self.events.partition_point(|e| e.seq <= since);
        self.events.range(start..).cloned().collect()
    }

    pub(super) fn unavailable_through(&self) -> u64 {
        self.unavailable_through
    }

    pub(super) fn len(&self) -> usize {
        self.events.len()
    }
}
