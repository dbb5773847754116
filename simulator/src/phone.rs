//! What one simulated phone sends, tick by tick ([`Phone`]): its vehicle's
//! fixes as `fleet.v1.Position`s, an offline buffer flushed as
//! `fleet/{id}/pos/batch` on reconnect, and the faults [`Chaos`] asks for.
//!
//! Transport-free: it produces [`Outgoing`] messages for whoever owns the
//! MQTT connection (one per vehicle, or one shared by many).

use std::sync::Arc;
use std::time::Duration;

use fleetd_schemas::proto::{Position, PositionBatch};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::chaos::{Chaos, ChaosKind, malformed_payload};
use crate::city::CityGrid;
use crate::driver::RoadVehicle;
use crate::ledger::Unit;
use crate::roads::RoadMap;
use crate::vehicle::{Fix, Vehicle};

/// Largest model step from one fix to the next, so a wall-clock jump cannot
/// fling a vehicle across the city.
const MAX_STEP_MS: i64 = 60_000;
/// Positions per `pos/batch` message; fleetd accepts up to 1,000.
pub(crate) const BATCH_POSITIONS: usize = 500;
/// Most positions a phone buffers while offline; older ones are dropped
/// (counted as failed), as phone apps cap their queues.
const BUFFER_MAX: usize = 5_000;
/// How long a late position is held back, in ms: past a micro-batch window.
const LATE_MS: std::ops::Range<i64> = 2_000..6_000;
/// Mixed into the seed of the fault and outage choices, so they never
/// share a random stream with the movement model.
const PHONE_SEED: u64 = 0xbb67_ae85_84ca_a73b;

/// How phones lose their connection.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Outages {
    /// Expected outages per vehicle per hour (0: always online).
    pub per_hour: f64,
    /// Shortest outage.
    pub min: Duration,
    /// Longest outage.
    pub max: Duration,
}

/// Which map the vehicles drive.
#[derive(Debug, Clone)]
pub(crate) enum CityMap {
    Grid(CityGrid),
    Roads(Arc<RoadMap>),
}

/// A vehicle of either movement model.
#[derive(Debug, Clone)]
enum Mover {
    Grid(Box<Vehicle>),
    Road(Box<RoadVehicle>),
}

impl Mover {
    fn advance(&mut self, dt: Duration) {
        match self {
            Mover::Grid(v) => v.advance(dt),
            Mover::Road(v) => v.advance(dt),
        }
    }

    fn fix(&self) -> Fix {
        match self {
            Mover::Grid(v) => v.fix(),
            Mover::Road(v) => v.fix(),
        }
    }
}

/// Where an [`Outgoing`] message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    /// `fleet/{id}/pos`
    Pos,
    /// `fleet/{id}/pos/batch`
    Batch,
}

/// One message to publish, and what the ledger should follow.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: Topic,
    pub(crate) payload: Vec<u8>,
    pub(crate) unit: Unit,
}

/// One phone: its vehicle, counters, offline buffer and held-back points.
#[derive(Debug)]
pub(crate) struct Phone {
    index: u32,
    pub(crate) device_id: String,
    mover: Mover,
    /// Counter of the next position, from 0, no gaps.
    seq: u64,
    /// Device time of the previous position, to keep times increasing.
    prev_ts_ms: Option<i64>,
    rng: SmallRng,
    chaos: Chaos,
    outages: Outages,
    /// Device time until which the phone is offline.
    offline_until_ms: Option<i64>,
    /// Positions taken while offline, oldest first.
    buffer: Vec<Position>,
    /// Late positions and the device time at which they are sent.
    late: Vec<(i64, Position)>,
    /// A position waiting to be sent after the next one.
    swapped: Option<Position>,
    malformed_sent: u64,
    /// Faults injected so far, by kind (counter order of [`ChaosKind::ALL`]).
    injected: [u64; ChaosKind::COUNT],
    /// Positions dropped from a full offline buffer, not yet reported.
    dropped: u64,
}

impl Phone {
    pub(crate) fn new(
        map: &CityMap,
        seed: u64,
        index: usize,
        device_id: String,
        chaos: Chaos,
        outages: Outages,
    ) -> Self {
        let mover = match map {
            CityMap::Grid(grid) => Mover::Grid(Box::new(Vehicle::new(*grid, seed, index as u64))),
            CityMap::Roads(roads) => Mover::Road(Box::new(RoadVehicle::new(
                roads.clone(),
                seed,
                index as u64,
            ))),
        };
        Self {
            index: index as u32,
            device_id,
            mover,
            seq: 0,
            prev_ts_ms: None,
            rng: SmallRng::seed_from_u64(seed ^ index as u64 ^ PHONE_SEED),
            chaos,
            outages,
            offline_until_ms: None,
            buffer: Vec::new(),
            late: Vec::new(),
            swapped: None,
            malformed_sent: 0,
            injected: [0; ChaosKind::COUNT],
            dropped: 0,
        }
    }

    /// The fleet index of this phone.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The MQTT topic of `topic` for this phone. Built per publish rather
    /// than kept, which saves two strings per vehicle in million-vehicle
    /// fleets.
    pub(crate) fn topic(&self, topic: Topic) -> String {
        match topic {
            Topic::Pos => format!("fleet/{}/pos", self.device_id),
            Topic::Batch => format!("fleet/{}/pos/batch", self.device_id),
        }
    }

    /// Whether the phone has no network now.
    pub(crate) fn is_offline(&self) -> bool {
        self.offline_until_ms.is_some()
    }

    /// Faults injected so far, by kind.
    pub(crate) fn injected(&self) -> [u64; ChaosKind::COUNT] {
        self.injected
    }

    /// Positions dropped from the full offline buffer since the last call.
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// One tick at wall-clock `now_ms`, `period` after the previous one:
    /// takes a fix and appends whatever should be published now to `out`.
    pub(crate) fn tick(&mut self, now_ms: i64, period: Duration, out: &mut Vec<Outgoing>) {
        let position = self.next_position(now_ms);
        let ts_ms = position.ts_ms;
        if let Some(until) = self.offline_until_ms {
            if ts_ms < until {
                self.buffer_offline(position);
                return;
            }
            // Back online: the buffer goes first, in batches.
            self.offline_until_ms = None;
            self.flush_buffer(out);
        } else if self.outages.per_hour > 0.0 {
            let p = (self.outages.per_hour * period.as_secs_f64() / 3600.0).min(1.0);
            if self.rng.random_bool(p) {
                let span =
                    self.outages.min.as_millis() as i64..=self.outages.max.as_millis() as i64;
                let length = if span.is_empty() {
                    *span.start()
                } else {
                    self.rng.random_range(span)
                };
                self.offline_until_ms = Some(ts_ms + length.max(1));
                self.buffer_offline(position);
                return;
            }
        }
        self.send_with_chaos(position, out);
        self.send_due_late(ts_ms, out);
    }

    /// Sends everything held back (late, swapped, offline buffer) now, e.g.
    /// at the end of a run, so every position taken is accounted for.
    pub(crate) fn flush_held(&mut self, out: &mut Vec<Outgoing>) {
        if let Some(p) = self.swapped.take() {
            out.push(self.single(p));
        }
        self.send_due_late(i64::MAX, out);
        self.offline_until_ms = None;
        self.flush_buffer(out);
    }

    fn send_with_chaos(&mut self, position: Position, out: &mut Vec<Outgoing>) {
        let chaos = self.chaos;
        if chaos.malformed > 0.0 && self.rng.random_bool(chaos.malformed) {
            out.push(Outgoing {
                topic: Topic::Pos,
                payload: malformed_payload(self.malformed_sent, position.ts_ms),
                unit: Unit::Chaos {
                    device: self.index,
                    kind: ChaosKind::Malformed,
                },
            });
            self.malformed_sent += 1;
            self.injected[ChaosKind::Malformed as usize] += 1;
        }
        if chaos.late > 0.0 && self.rng.random_bool(chaos.late) {
            let due = position.ts_ms + self.rng.random_range(LATE_MS);
            self.late.push((due, position));
            self.injected[ChaosKind::Late as usize] += 1;
            return;
        }
        if chaos.out_of_order > 0.0
            && self.swapped.is_none()
            && self.rng.random_bool(chaos.out_of_order)
        {
            self.swapped = Some(position);
            self.injected[ChaosKind::OutOfOrder as usize] += 1;
            return;
        }
        let duplicate = chaos.duplicate > 0.0 && self.rng.random_bool(chaos.duplicate);
        let first = self.single(position);
        self.injected[ChaosKind::Duplicate as usize] += u64::from(duplicate);
        let copy = duplicate.then(|| Outgoing {
            topic: Topic::Pos,
            payload: first.payload.clone(),
            unit: Unit::Chaos {
                device: self.index,
                kind: ChaosKind::Duplicate,
            },
        });
        out.push(first);
        out.extend(copy);
        if let Some(p) = self.swapped.take() {
            out.push(self.single(p));
        }
    }

    fn send_due_late(&mut self, now_ms: i64, out: &mut Vec<Outgoing>) {
        if self.late.is_empty() {
            return;
        }
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.late.drain(..).partition(|(at, _)| *at <= now_ms);
        self.late = waiting;
        for (_, position) in due {
            out.push(self.single(position));
        }
    }

    fn buffer_offline(&mut self, position: Position) {
        if self.buffer.len() >= BUFFER_MAX {
            self.buffer.remove(0);
            self.dropped += 1;
        }
        self.buffer.push(position);
    }

    fn flush_buffer(&mut self, out: &mut Vec<Outgoing>) {
        let buffer = std::mem::take(&mut self.buffer);
        for chunk in buffer.chunks(BATCH_POSITIONS) {
            let Some(newest) = chunk.iter().max_by_key(|p| p.seq).cloned() else {
                continue;
            };
            let batch = PositionBatch {
                device_id: String::new(),
                positions: chunk.to_vec(),
            };
            out.push(Outgoing {
                topic: Topic::Batch,
                payload: batch.encode_to_vec(),
                unit: Unit::Positions {
                    device: self.index,
                    count: chunk.len() as u64,
                    newest,
                },
            });
        }
    }

    fn single(&self, position: Position) -> Outgoing {
        Outgoing {
            topic: Topic::Pos,
            payload: position.encode_to_vec(),
            unit: Unit::Positions {
                device: self.index,
                count: 1,
                newest: position,
            },
        }
    }

    /// Advances the vehicle to `now_ms` and returns its next position.
    /// Device time is the wall clock, bumped by 1 ms when it would not
    /// increase; the model advances by exactly the difference, so the speed
    /// a consumer derives from consecutive positions is the model's.
    fn next_position(&mut self, now_ms: i64) -> Position {
        let ts_ms = match self.prev_ts_ms {
            Some(prev) if now_ms <= prev => prev + 1,
            _ => now_ms,
        };
        if let Some(prev) = self.prev_ts_ms {
            let step_ms = (ts_ms - prev).clamp(0, MAX_STEP_MS);
            self.mover
                .advance(Duration::from_millis(step_ms.unsigned_abs()));
        }
        self.prev_ts_ms = Some(ts_ms);
        let position = self
            .mover
            .fix()
            .to_position(&self.device_id, ts_ms, self.seq);
        self.seq += 1;
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(chaos: Chaos, outages: Outages) -> Phone {
        let map = CityMap::Grid(CityGrid::new(52.52, 13.405));
        Phone::new(&map, 3, 7, "sim-0007".into(), chaos, outages)
    }

    /// Runs a phone for `ticks` seconds at 1 Hz, then flushes.
    fn run(phone: &mut Phone, ticks: i64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for t in 0..ticks {
            phone.tick(
                1_700_000_000_000 + t * 1000,
                Duration::from_secs(1),
                &mut out,
            );
        }
        phone.flush_held(&mut out);
        out
    }

    fn positions(out: &[Outgoing]) -> Vec<Position> {
        out.iter()
            .filter(|o| matches!(o.unit, Unit::Positions { .. }))
            .flat_map(|o| match o.topic {
                Topic::Pos => vec![Position::decode(o.payload.as_slice()).expect("position")],
                Topic::Batch => {
                    PositionBatch::decode(o.payload.as_slice())
                        .expect("batch")
                        .positions
                }
            })
            .collect()
    }

    #[test]
    fn every_position_is_sent_exactly_once_whatever_the_chaos() {
        let chaos = Chaos {
            malformed: 0.1,
            duplicate: 0.1,
            late: 0.1,
            out_of_order: 0.1,
        };
        let outages = Outages {
            per_hour: 60.0,
            min: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        let mut p = phone(chaos, outages);
        let out = run(&mut p, 3_000);
        let mut seqs: Vec<u64> = positions(&out).iter().filter_map(|p| p.seq).collect();
        let arrival = seqs.clone();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..3_000).collect::<Vec<_>>(),
            "each seq exactly once"
        );
        assert_ne!(arrival, seqs, "chaos reorders");
        let count = |kind| {
            out.iter()
                .filter(|o| o.unit == Unit::Chaos { device: 7, kind })
                .count()
        };
        for kind in [ChaosKind::Malformed, ChaosKind::Duplicate] {
            assert!(
                (150..450).contains(&count(kind)),
                "{kind:?}: {}",
                count(kind)
            );
        }
        let batches = out.iter().filter(|o| o.topic == Topic::Batch).count();
        assert!(batches >= 20, "{batches} offline batches");
        for o in &out {
            if let Unit::Chaos {
                kind: ChaosKind::Malformed,
                ..
            } = o.unit
            {
                assert!(Position::decode(o.payload.as_slice()).is_err() || o.payload[0] == b'{');
            }
        }
    }

    #[test]
    fn without_chaos_positions_go_in_order_one_by_one() {
        let mut p = phone(Chaos::default(), Outages::default());
        let out = run(&mut p, 100);
        assert_eq!(out.len(), 100);
        let ps = positions(&out);
        assert!(
            ps.windows(2)
                .all(|w| w[0].seq < w[1].seq && w[0].ts_ms < w[1].ts_ms)
        );
    }
}
