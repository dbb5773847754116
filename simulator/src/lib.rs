//! Synthetic fleets publishing positions over MQTT, for demos, end-to-end
//! tests and load generation.
//!
//! # Brief overview
//!
//! * [`run`] takes a [`SimConfig`] and a cancellation token, connects one
//!   MQTT client per vehicle and publishes `fleet.v1.Position` protobufs on
//!   `fleet/{device_id}/pos` (the device contract in ARCHITECTURE.md) until
//!   the duration ends or the token fires. It returns a [`SimReport`] that
//!   says exactly which positions the broker confirmed, per vehicle, so a
//!   test can compare what fleetd stored with what was sent.
//! * [`Vehicle`] on a [`CityGrid`] is the movement model: vehicles drive a
//!   synthetic street grid, turn at intersections, stop at red lights, park,
//!   and report GPS fixes with a few metres of smooth error. It is pure (no
//!   I/O, no clock), so other drivers such as a multiplexed benchmark
//!   publisher can reuse it.
//! * [`SimError`] covers what stops a run from starting; per-vehicle trouble
//!   while running is counted, not raised.
//!
//! # Layout
//!
//! `config` (settings), `city` and `vehicle` and `gps` (movement model),
//! `runner` (the three phases of a run), `device` (one vehicle's task),
//! `session` (one MQTT connection and its event-loop task), `ledger`
//! (per-vehicle delivery accounting), `report`, `progress`, `error`.
//!
//! Used by the `fleetd` binary for `fleetd simulate` and `fleetd serve
//! --demo N`, and by the end-to-end tests. `examples/embedded_fleet.rs`
//! runs a fleet against an embedded rumqttd. No Cargo features.

mod chaos;
mod city;
mod config;
mod device;
mod driver;
mod error;
mod gps;
mod ledger;
mod multiplex;
mod phone;
mod progress;
mod report;
mod roads;
mod runner;
mod session;
mod vehicle;

pub use chaos::{Chaos, ChaosKind};
pub use city::{CityGrid, Direction, Node, haversine_m};
pub use config::{Credentials, Qos, SimConfig, parse_duration};
pub use driver::RoadVehicle;
pub use error::SimError;
pub use phone::Outages;
pub use report::{ChaosCounts, SimReport, VehicleReport};
pub use roads::{EMBEDDED_MAP, RoadEdge, RoadMap, RoadNode};
pub use runner::run;
pub use vehicle::{Fix, Motion, Vehicle};
