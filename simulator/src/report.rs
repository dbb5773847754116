//! What a run published: fleet totals and, per vehicle, its counts and last
//! confirmed position ([`SimReport`], [`VehicleReport`]).

use std::time::Duration;

use fleetd_schemas::proto::Position;
use serde::{Serialize, Serializer};

use crate::chaos::ChaosKind;
use crate::config::Qos;
use crate::ledger::Totals;

/// The outcome of [`run`](crate::run).
///
/// Every position a vehicle generated is counted exactly once, either as
/// `published` or as `failed`:
///
/// * **published**: confirmed delivered to the broker: for QoS 1 its PUBACK
///   arrived; for QoS 0 it was written to the connection (the most a QoS 0
///   client can know).
/// * **failed**: never confirmed: generated while disconnected, refused by
///   a stuck client queue, or (QoS 1) still unacknowledged when the
///   connection dropped or the drain deadline passed. The broker may still
///   have received some of these.
///
/// So with `failed == 0`, the broker accepted exactly `published` positions,
/// and each vehicle's `last` is the newest position it holds for that device.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Positions confirmed delivered (see above).
    pub published: u64,
    /// QoS 1 PUBACKs received (equal to `published` for QoS 1, 0 for QoS 0).
    pub acked: u64,
    /// Positions generated but not confirmed delivered.
    pub failed: u64,
    /// Offline buffers flushed as `pos/batch` messages and confirmed.
    pub batches: u64,
    /// Deliberate faults (see [`crate::Chaos`]): malformed and duplicate
    /// messages confirmed delivered (they carry no new position), late and
    /// out-of-order positions sent (they are counted in `published` too).
    pub chaos: ChaosCounts,
    /// MQTT connections used: one per vehicle, or the multiplexed count.
    pub connections: usize,
    /// Publishing time: from the moment every vehicle had tried to connect
    /// until the last one disconnected (drain included). Serialized as
    /// seconds.
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Time spent opening the connections before publishing started.
    /// Serialized as seconds.
    #[serde(rename = "connect_elapsed_s", serialize_with = "seconds")]
    pub connect_elapsed: Duration,
    /// QoS used for every publish (serialized as 0 or 1).
    pub qos: Qos,
    /// Vehicles whose first connection succeeded.
    pub vehicles_connected: usize,
    /// Per vehicle, in vehicle-index order.
    pub vehicles: Vec<VehicleReport>,
}

/// One vehicle's share of a [`SimReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VehicleReport {
    /// Device id: MQTT client id, and the `{device_id}` of its topic.
    pub device_id: String,
    /// Positions confirmed delivered.
    pub published: u64,
    /// QoS 1 PUBACKs received.
    pub acked: u64,
    /// Positions generated but not confirmed delivered.
    pub failed: u64,
    /// Offline buffers flushed as `pos/batch` and confirmed.
    pub batches: u64,
    /// Deliberate faults, as in [`SimReport::chaos`].
    pub chaos: ChaosCounts,
    /// The confirmed position with the highest `seq`: what fleetd should
    /// hold as this device's latest position. `None` if nothing was
    /// confirmed.
    #[serde(serialize_with = "position")]
    pub last: Option<Position>,
}

/// Deliberate faults by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChaosCounts {
    /// Malformed messages confirmed delivered.
    pub malformed: u64,
    /// Duplicate messages confirmed delivered.
    pub duplicate: u64,
    /// Positions sent late (held back a few seconds).
    pub late: u64,
    /// Positions sent after their successor.
    pub out_of_order: u64,
}

impl ChaosCounts {
    /// The count of `kind`.
    pub fn get(&self, kind: ChaosKind) -> u64 {
        match kind {
            ChaosKind::Malformed => self.malformed,
            ChaosKind::Duplicate => self.duplicate,
            ChaosKind::Late => self.late,
            ChaosKind::OutOfOrder => self.out_of_order,
        }
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &ChaosCounts) {
        self.malformed += other.malformed;
        self.duplicate += other.duplicate;
        self.late += other.late;
        self.out_of_order += other.out_of_order;
    }
}

impl VehicleReport {
    /// A vehicle's report from its ledger totals and the faults its phone
    /// injected.
    pub(crate) fn new(
        device_id: String,
        totals: Totals,
        injected: [u64; ChaosKind::COUNT],
    ) -> Self {
        Self {
            device_id,
            published: totals.published,
            acked: totals.acked,
            failed: totals.failed,
            batches: totals.batches,
            chaos: ChaosCounts {
                malformed: totals.chaos[ChaosKind::Malformed as usize],
                duplicate: totals.chaos[ChaosKind::Duplicate as usize],
                late: injected[ChaosKind::Late as usize],
                out_of_order: injected[ChaosKind::OutOfOrder as usize],
            },
            last: totals.last,
        }
    }
}

impl SimReport {
    /// Published positions per second of publishing time.
    pub fn rate_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.published as f64 / secs
        } else {
            0.0
        }
    }

    /// A one-paragraph human summary of the run.
    pub fn summary(&self) -> String {
        let vehicles = self.vehicles.len();
        let mut text = format!(
            "published {} positions from {vehicles} vehicles in {:.1} s ({:.1}/s, QoS {})",
            self.published,
            self.elapsed.as_secs_f64(),
            self.rate_per_s(),
            self.qos,
        );
        if self.qos == Qos::AtLeastOnce {
            text.push_str(&format!("; {} acknowledged", self.acked));
        }
        text.push_str(&format!("; {} failed", self.failed));
        if self.batches > 0 {
            text.push_str(&format!("; {} offline batches", self.batches));
        }
        let c = &self.chaos;
        if c.malformed + c.duplicate + c.late + c.out_of_order > 0 {
            text.push_str(&format!(
                "; chaos: {} malformed, {} duplicate, {} late, {} out of order",
                c.malformed, c.duplicate, c.late, c.out_of_order
            ));
        }
        text.push_str(&format!(
            "; {}/{vehicles} vehicles connected over {} connections in {:.1} s",
            self.vehicles_connected,
            self.connections,
            self.connect_elapsed.as_secs_f64(),
        ));
        text
    }
}

fn seconds<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// `fleet.v1.Position` as JSON with the contract's field names, absent
/// optional fields left out.
#[derive(Serialize)]
struct PositionJson<'a> {
    device_id: &'a str,
    ts_ms: i64,
    lat: f64,
    lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy_m: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    altitude_m: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed_mps: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    heading_deg: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    battery_pct: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

fn position<S: Serializer>(position: &Option<Position>, serializer: S) -> Result<S::Ok, S::Error> {
    position
        .as_ref()
        .map(|p| PositionJson {
            device_id: &p.device_id,
            ts_ms: p.ts_ms,
            lat: p.lat,
            lon: p.lon,
            accuracy_m: p.accuracy_m,
            altitude_m: p.altitude_m,
            speed_mps: p.speed_mps,
            heading_deg: p.heading_deg,
            battery_pct: p.battery_pct,
            seq: p.seq,
        })
        .serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> SimReport {
        SimReport {
            published: 120,
            acked: 120,
            failed: 0,
            batches: 0,
            chaos: ChaosCounts::default(),
            connections: 2,
            elapsed: Duration::from_millis(3_000),
            connect_elapsed: Duration::from_millis(300),
            qos: Qos::AtLeastOnce,
            vehicles_connected: 2,
            vehicles: vec![
                VehicleReport {
                    device_id: "sim-0000".into(),
                    published: 60,
                    acked: 60,
                    failed: 0,
                    batches: 0,
                    chaos: ChaosCounts::default(),
                    last: Some(Position {
                        device_id: "sim-0000".into(),
                        ts_ms: 1_700_000_000_000,
                        lat: 52.5,
                        lon: 13.4,
                        accuracy_m: Some(3.5),
                        seq: Some(59),
                        ..Position::default()
                    }),
                },
                VehicleReport {
                    device_id: "sim-0001".into(),
                    published: 60,
                    acked: 60,
                    failed: 0,
                    batches: 0,
                    chaos: ChaosCounts::default(),
                    last: None,
                },
            ],
        }
    }

    #[test]
    fn summary_names_counts_rate_and_time() {
        assert_eq!(
            report().summary(),
            "published 120 positions from 2 vehicles in 3.0 s (40.0/s, QoS 1); \
             120 acknowledged; 0 failed; 2/2 vehicles connected over 2 connections in 0.3 s"
        );
    }

    #[test]
    fn json_uses_seconds_and_contract_field_names() {
        let json = serde_json::to_value(report()).expect("test value");
        assert_eq!(json["elapsed_s"], 3.0);
        assert_eq!(json["qos"], 1);
        let last = &json["vehicles"][0]["last"];
        assert_eq!(last["ts_ms"], 1_700_000_000_000i64);
        assert_eq!(last["seq"], 59);
        assert_eq!(last["accuracy_m"], 3.5);
        assert!(last.get("altitude_m").is_none());
        assert!(json["vehicles"][1]["last"].is_null());
    }
}
