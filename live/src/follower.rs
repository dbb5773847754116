//! [`Follower`]: one consumer's ordered view of the hub, the resume logic
//! every consumer needs (live streams, alert publishing) written once.

use std::sync::Arc;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::{Gap, KindSet, LiveBatch, LiveHub, SeqEvent};

/// Follows the hub in sequence order: it starts with a catch-up (the gaps
/// and buffered events after `since`), then hands out published batches,
/// and when it falls behind the broadcast it resubscribes after the last
/// sequence number it handed out, so the next step is a catch-up again. It
/// never hands out an event twice and names every event it cannot get.
#[derive(Debug)]
pub struct Follower {
    hub: LiveHub,
    kinds: KindSet,
    receiver: Receiver<Arc<LiveBatch>>,
    /// The newest sequence number handed out or skipped as not wanted.
    last_seq: u64,
    /// A catch-up not handed out yet: the first one, or the one after a lag.
    catch_up: Option<Step>,
}

/// What a follower hands out next.
#[derive(Debug)]
pub struct Step {
    /// Events the follower may have missed and cannot get, to be reported.
    pub gaps: Vec<Gap>,
    /// This step follows a lag behind the broadcast (a resubscription).
    pub lagged: bool,
    events: Events,
}

#[derive(Debug)]
enum Events {
    Replay(Vec<Arc<SeqEvent>>),
    /// A published batch from the first event after the follower's last
    /// sequence number (sequence numbers within a batch are consecutive).
    Batch(Arc<LiveBatch>, usize),
}

impl Step {
    /// The step's events, in sequence order, all after the previous step's.
    /// Replayed events are of the follower's kinds only; a live batch holds
    /// every kind the hub published, so consumers still filter.
    pub fn events(&self) -> &[Arc<SeqEvent>] {
        match &self.events {
            Events::Replay(events) => events,
            Events::Batch(batch, from) => batch.events.get(*from..).unwrap_or_default(),
        }
    }
}

impl Follower {
    /// Subscribes now: events published from here on are seen. With
    /// `since = Some(n)` the first step replays buffered events of `kinds`
    /// after `n` and names what the buffer no longer holds.
    pub fn new(hub: &LiveHub, since: Option<u64>, kinds: KindSet) -> Self {
        let hub = hub.clone();
        let (receiver, step, last_seq) = subscribe(&hub, since, kinds, false);
        Self {
            hub,
            kinds,
            receiver,
            last_seq,
            catch_up: Some(step),
        }
    }

    /// The newest sequence number handed out (or passed over).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Waits for the next step. Cancel-safe: a step not returned is not
    /// lost. Never ends while the hub lives (every follower holds it).
    pub async fn next(&mut self) -> Step {
        loop {
            if let Some(step) = self.catch_up.take() {
                return step;
            }
            match self.receiver.recv().await {
                Ok(batch) => {
                    if let Some(step) = self.live_step(batch) {
                        return step;
                    }
                }
                Err(RecvError::Lagged(_)) => self.resubscribe(),
                // Unreachable while `self.hub` holds the sender; a follower
                // with nothing more to give waits like an idle one.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// The next step if one is already there, without waiting: how a
    /// consumer drains what was published before it was told to stop.
    pub fn try_next(&mut self) -> Option<Step> {
        loop {
            if let Some(step) = self.catch_up.take() {
                return Some(step);
            }
            match self.receiver.try_recv() {
                Ok(batch) => {
                    if let Some(step) = self.live_step(batch) {
                        return Some(step);
                    }
                }
                Err(TryRecvError::Lagged(_)) => self.resubscribe(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }

    fn live_step(&mut self, batch: Arc<LiveBatch>) -> Option<Step> {
        let from = batch.events.iter().position(|e| e.seq > self.last_seq)?;
        if let Some(last) = batch.events.last() {
            self.last_seq = last.seq;
        }
        Some(Step {
            gaps: Vec::new(),
            lagged: false,
            events: Events::Batch(batch, from),
        })
    }

    fn resubscribe(&mut self) {
        let (receiver, step, last_seq) =
            subscribe(&self.hub, Some(self.last_seq), self.kinds, true);
        self.receiver = receiver;
        self.last_seq = last_seq;
        self.catch_up = Some(step);
    }
}

fn subscribe(
    hub: &LiveHub,
    since: Option<u64>,
    kinds: KindSet,
    lagged: bool,
) -> (Receiver<Arc<LiveBatch>>, Step, u64) {
    let sub = hub.subscribe(since, kinds);
    // Everything up to the hub's newest sequence number has now been
    // replayed, named as a gap, or was published before it was asked for
    // (a `since` beyond it is reported as an unknown-sequence gap).
    let last_seq = sub.last_seq;
    let step = Step {
        gaps: sub.gaps,
        lagged,
        events: Events::Replay(sub.replay),
    };
    (sub.receiver, step, last_seq)
}
