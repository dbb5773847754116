//! Per-connection accounting: each publish ([`Unit`]: one position, an
//! offline batch, or a deliberately bad message) is followed from the moment
//! it is handed to the MQTT client until it is confirmed (written for QoS 0,
//! acknowledged for QoS 1) or given up on, so the report says exactly what
//! the broker got, per device.
//!
//! rumqttc does not say which request a packet id belongs to, but it writes
//! requests in the order they were queued: the n-th `Outgoing::Publish`
//! event is the n-th queued position, except after a packet-id collision,
//! where it holds one publish back (`Outgoing::AwaitAck`) and writes it
//! before any other once the colliding id is acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fleetd_schemas::proto::Position;
use tokio::sync::Notify;

use crate::chaos::ChaosKind;
use crate::config::Qos;
use crate::progress::Counters;

/// One publish as the ledger follows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Unit {
    /// Real positions of device `device` (index in the fleet): one on
    /// `pos`, or several in a `pos/batch`; `newest` is the one with the
    /// highest `seq`.
    Positions {
        device: u32,
        count: u64,
        newest: Position,
    },
    /// A message sent to test fleetd's defences; it carries no new position.
    Chaos { device: u32, kind: ChaosKind },
}

impl Unit {
    fn device(&self) -> u32 {
        match self {
            Unit::Positions { device, .. } | Unit::Chaos { device, .. } => *device,
        }
    }

    fn positions(&self) -> u64 {
        match self {
            Unit::Positions { count, .. } => *count,
            Unit::Chaos { .. } => 0,
        }
    }
}

/// Where every publish of one connection stands.
#[derive(Debug)]
pub(crate) struct Ledger {
    qos: Qos,
    /// Fleet-wide live totals, kept in step with this ledger's.
    counters: Arc<Counters>,
    /// Handed to the client and not yet written, oldest first.
    queued: VecDeque<Unit>,
    /// The publish rumqttc holds back after a packet-id collision.
    held_back: Option<Unit>,
    /// QoS 1 publishes written and awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, Unit>,
    /// Per device (fleet index) that published on this connection.
    devices: BTreeMap<u32, Totals>,
}

/// One device's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Totals {
    /// Positions confirmed delivered.
    pub(crate) published: u64,
    /// Positions acknowledged by a QoS 1 PUBACK.
    pub(crate) acked: u64,
    /// Positions never confirmed.
    pub(crate) failed: u64,
    /// `pos/batch` publishes confirmed.
    pub(crate) batches: u64,
    /// Chaos messages confirmed, by kind.
    pub(crate) chaos: [u64; ChaosKind::COUNT],
    /// The confirmed position with the highest `seq`.
    pub(crate) last: Option<Position>,
}

impl Ledger {
    pub(crate) fn new(qos: Qos, counters: Arc<Counters>) -> Self {
        Self {
            qos,
            counters,
            queued: VecDeque::new(),
            held_back: None,
            inflight: HashMap::new(),
            devices: BTreeMap::new(),
        }
    }

    /// `unit` was handed to the client (call before handing it over, so
    /// the write event can never come first).
    pub(crate) fn queued(&mut self, unit: Unit) {
        self.devices.entry(unit.device()).or_default();
        self.queued.push_back(unit);
    }

    /// The client refused the unit just queued (its request queue was
    /// full or closed): it will never be sent.
    pub(crate) fn refused(&mut self) {
        if let Some(unit) = self.queued.pop_back() {
            self.fail(&unit);
        }
    }

    /// `count` positions of `device` were generated while there was no
    /// connection to send them on.
    pub(crate) fn unsent(&mut self, device: u32, count: u64) {
        self.devices.entry(device).or_default().failed += count;
        self.counters.add_failed(count);
    }

    /// rumqttc wrote a publish with packet id `pkid` (0 for QoS 0).
    pub(crate) fn written(&mut self, pkid: u16) {
        let Some(unit) = self.held_back.take().or_else(|| self.queued.pop_front()) else {
            tracing::warn!(pkid, "publish written that was never queued");
            return;
        };
        match self.qos {
            Qos::AtMostOnce => self.confirm(unit, false),
            Qos::AtLeastOnce => {
                if let Some(older) = self.inflight.insert(pkid, unit) {
                    // rumqttc never reuses an unacknowledged id; if it did,
                    // the older publish can no longer be told apart.
                    tracing::warn!(pkid, "packet id reused before its puback");
                    self.fail(&older);
                }
            }
        }
    }

    /// rumqttc held the next publish back because its packet id is still
    /// unacknowledged.
    pub(crate) fn held_back(&mut self) {
        if let Some(unit) = self.queued.pop_front()
            && let Some(older) = self.held_back.replace(unit)
        {
            // Only one publish is ever held back; keep the order anyway.
            self.queued.push_front(older);
        }
    }

    /// The broker acknowledged packet id `pkid`.
    pub(crate) fn acked(&mut self, pkid: u16) {
        match self.inflight.remove(&pkid) {
            Some(unit) => self.confirm(unit, true),
            None => tracing::warn!(pkid, "puback for an unknown packet id"),
        }
    }

    /// Nothing is waiting to be written or acknowledged.
    pub(crate) fn is_settled(&self) -> bool {
        self.queued.is_empty() && self.held_back.is_none() && self.inflight.is_empty()
    }

    /// The connection is gone: whatever was not confirmed is lost (a QoS 1
    /// publish that was written may still have reached the broker, but no
    /// one can know). Returns how many positions were given up.
    pub(crate) fn abandon(&mut self) -> u64 {
        let units: Vec<Unit> = self
            .queued
            .drain(..)
            .chain(self.held_back.take())
            .chain(self.inflight.drain().map(|(_, unit)| unit))
            .collect();
        units.iter().map(|unit| self.fail(unit)).sum()
    }

    /// Counts of every device that used this connection, by fleet index.
    pub(crate) fn devices(&self) -> &BTreeMap<u32, Totals> {
        &self.devices
    }

    /// The counts of the one device of a per-vehicle connection.
    pub(crate) fn totals(&self) -> Totals {
        self.devices.values().next().cloned().unwrap_or_default()
    }

    fn confirm(&mut self, unit: Unit, acked: bool) {
        let totals = self.devices.entry(unit.device()).or_default();
        match unit {
            Unit::Positions { count, newest, .. } => {
                totals.published += count;
                if acked {
                    totals.acked += count;
                }
                if count > 1 {
                    totals.batches += 1;
                }
                self.counters.add_published(count);
                if totals
                    .last
                    .as_ref()
                    .is_none_or(|last| last.seq < newest.seq)
                {
                    totals.last = Some(newest);
                }
            }
            Unit::Chaos { kind, .. } => totals.chaos[kind as usize] += 1,
        }
    }

    /// Counts `unit`'s positions as failed; returns how many.
    fn fail(&mut self, unit: &Unit) -> u64 {
        let n = unit.positions();
        self.devices.entry(unit.device()).or_default().failed += n;
        self.counters.add_failed(n);
        n
    }
}

/// A [`Ledger`] shared by a vehicle task (which queues) and its connection's
/// event-loop task (which confirms), with a wake-up for whoever waits for it
/// to settle. The lock is never held across an `.await`.
#[derive(Debug)]
pub(crate) struct SharedLedger {
    ledger: Mutex<Ledger>,
    changed: Notify,
}

impl SharedLedger {
    pub(crate) fn new(ledger: Ledger) -> Self {
        Self {
            ledger: Mutex::new(ledger),
            changed: Notify::new(),
        }
    }

    /// Runs `f` on the ledger and wakes [`SharedLedger::settled`] waiters.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_waiters();
        result
    }

    /// Reads the ledger without waking anyone.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.lock())
    }

    /// Resolves once nothing is waiting to be written or acknowledged.
    pub(crate) async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a change in between is not missed.
            changed.as_mut().enable();
            if self.read(Ledger::is_settled) {
                return;
            }
            changed.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic elsewhere while holding the lock cannot leave the counts
        // half-updated in a way worse than losing them, so carry on.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seq: u64) -> Unit {
        Unit::Positions {
            device: 0,
            count: 1,
            newest: Position {
                device_id: "sim-0000".into(),
                ts_ms: 1_000 + seq as i64,
                seq: Some(seq),
                ..Position::default()
            },
        }
    }

    fn ledger(qos: Qos) -> (Ledger, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (Ledger::new(qos, counters.clone()), counters)
    }

    #[test]
    fn qos1_confirms_on_puback_in_any_order() {
        let (mut l, counters) = ledger(Qos::AtLeastOnce);
        for seq in 0..3 {
            l.queued(unit(seq));
        }
        l.written(1);
        l.written(2);
        assert_eq!(l.totals().published, 0);
        l.acked(2);
        assert_eq!(l.totals().last.and_then(|p| p.seq), Some(1));
        l.acked(1);
        // The older position confirmed later does not become `last`.
        assert_eq!(l.totals().last.and_then(|p| p.seq), Some(1));
        assert!(!l.is_settled());
        l.written(3);
        l.acked(3);
        assert!(l.is_settled());
        let totals = l.totals();
        assert_eq!((totals.published, totals.acked, totals.failed), (3, 3, 0));
        assert_eq!(totals.last.and_then(|p| p.seq), Some(2));
        assert_eq!(counters.snapshot().published, 3);
    }

    #[test]
    fn collision_keeps_the_held_back_publish_first() {
        let (mut l, _) = ledger(Qos::AtLeastOnce);
        for seq in 0..3 {
            l.queued(unit(seq));
        }
        l.written(1); // seq 0
        l.held_back(); // seq 1 waits for id 1
        l.acked(1);
        l.written(1); // the held-back seq 1
        l.written(2); // seq 2
        l.acked(2);
        l.acked(1);
        let totals = l.totals();
        assert_eq!((totals.published, totals.failed), (3, 0));
        assert_eq!(totals.last.and_then(|p| p.seq), Some(2));
    }

    #[test]
    fn qos0_confirms_on_write_and_losses_are_counted() {
        let (mut l, counters) = ledger(Qos::AtMostOnce);
        l.queued(unit(0));
        l.written(0);
        l.queued(unit(1));
        l.refused();
        l.unsent(0, 1);
        l.queued(unit(3));
        assert_eq!(l.abandon(), 1);
        let totals = l.totals();
        assert_eq!((totals.published, totals.acked, totals.failed), (1, 0, 3));
        assert_eq!(totals.last.and_then(|p| p.seq), Some(0));
        assert_eq!(counters.snapshot().failed, 3);
    }

    #[test]
    fn abandon_counts_unacknowledged_publishes() {
        let (mut l, _) = ledger(Qos::AtLeastOnce);
        l.queued(unit(0));
        l.queued(unit(1));
        l.written(1);
        assert_eq!(l.abandon(), 2);
        assert!(l.is_settled());
        assert_eq!(l.totals().failed, 2);
        assert_eq!(l.totals().published, 0);
    }

    #[test]
    fn batches_and_chaos_are_counted_per_device() {
        let (mut l, counters) = ledger(Qos::AtMostOnce);
        let Unit::Positions { newest, .. } = unit(9) else {
            unreachable!("built as positions")
        };
        l.queued(Unit::Positions {
            device: 4,
            count: 10,
            newest,
        });
        l.queued(Unit::Chaos {
            device: 4,
            kind: ChaosKind::Duplicate,
        });
        l.queued(unit(0));
        l.written(0);
        l.written(0);
        l.written(0);
        let four = &l.devices()[&4];
        assert_eq!((four.published, four.batches), (10, 1));
        assert_eq!(four.chaos[ChaosKind::Duplicate as usize], 1);
        assert_eq!(four.last.as_ref().and_then(|p| p.seq), Some(9));
        assert_eq!(l.devices()[&0].published, 1);
        assert_eq!(counters.snapshot().published, 11);
    }
}
