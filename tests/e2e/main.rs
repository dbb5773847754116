//! End-to-end tests: each starts the real `fleetd` binary on loopback ports
//! with a temporary data directory and talks to it over MQTT (rumqttc and
//! mosquitto_pub) and HTTP.

// A test crate exports nothing; `pub` marks what modules share.
#![allow(unreachable_pub)]

mod api;
mod auth;
mod cli;
mod conformance;
mod demo;
mod durability;
mod exports;
mod external;
mod fleet;
mod formats;
mod garbage;
mod geofences;
mod history;
mod http_ingest;
mod limits;
mod live;
mod map;
mod osmand;
mod restart;
mod schemathesis;
mod scylla;
mod shares;
mod tls;
mod util;
mod vehicle;
mod webhooks;
