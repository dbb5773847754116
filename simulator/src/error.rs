//! Why a simulation could not start or run.
//!
//! Per-vehicle trouble while running (a dropped connection, an unacknowledged
//! publish) is not an error: it is counted in the report as `failed`.

/// A simulation that could not start, or could not produce a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The broker address is not `host:port`.
    #[error("invalid broker address {addr:?}: {reason}")]
    InvalidBroker {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting is out of range.
    #[error("invalid simulator setting {field}: {reason}")]
    InvalidConfig {
        /// The [`SimConfig`](crate::SimConfig) field at fault.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A road map could not be read or has no drivable network.
    #[error("cannot use map {map}: {reason}")]
    InvalidMap {
        /// The file or embedded map name.
        map: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A QoS other than 0 or 1 was asked for.
    #[error("invalid qos {0:?}: expected 0 or 1")]
    InvalidQos(String),
    /// Not a single vehicle could connect to the broker.
    #[error("none of the {vehicles} vehicles could connect to {broker}: {last_error}")]
    ConnectFailed {
        /// The broker address tried.
        broker: String,
        /// How many vehicles tried.
        vehicles: usize,
        /// The last connection error seen.
        last_error: String,
    },
    /// A vehicle task panicked, so its counts are lost and the report would lie.
    #[error("vehicle {device_id} stopped abnormally: {reason}")]
    VehicleTask {
        /// The vehicle whose task failed.
        device_id: String,
        /// The task failure.
        reason: String,
    },
}
