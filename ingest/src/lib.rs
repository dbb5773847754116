//! Ingest for fleetd: MQTT in, validated [`PositionReport`]s out.
//!
//! * [`MqttIngest`] is the stage the binary starts: the embedded broker or
//!   an external one, and the task that feeds the processor's queue.
//! * [`EmbeddedBroker`] runs rumqttd inside the fleetd process behind
//!   fleetd's own MQTT listener.
//! * [`MqttGate`] is the broker's connection hooks: logins through
//!   `fleetd_auth::Access`, the topic ACL and the per-device rate limit;
//!   refused publishes are dropped unacknowledged and counted. It decodes
//!   position publishes in the connection's task and appends them to the
//!   journal (`fleetd_journal`); their PUBACK waits until they are durable.
//! * [`Ingestor`] decodes one MQTT message (protobuf, JSON or OwnTracks JSON,
//!   see [`decode`]), validates it ([`Limits`]) and records every rejection
//!   in the shared [`fleetd_schemas::RejectionLog`].
//! * [`run_external`] is ingest from an external broker: a persistent
//!   session whose publishes are acknowledged once the journal holds them.
//! * [`Submitter`] is ingest for request/response transports (the HTTP
//!   API's `POST /v1/positions`): a payload and the [`HttpIdentity`] its
//!   request carried in, the same decoding, validation and rejection log,
//!   the same journal; it answers "full" instead of waiting.
//!
//! * [`alerts`] publishes alerts back out: [`AlertPublisher`] follows the
//!   live hub and publishes `fleet/{device_id}/alerts` and OwnTracks
//!   transitions, through the embedded broker or an external one.
//!
//! This is the only crate that knows MQTT.
//!
//! [`PositionReport`]: fleetd_schemas::PositionReport

pub mod alerts;
mod broker;
mod config;
pub mod decode;
mod error;
mod external;
mod gate;
mod mqtt;
pub mod osmand;
mod pipeline;
mod submit;
pub mod topic;
mod validate;

pub use alerts::{AlertPublisher, AlertTarget};
pub use broker::{
    BrokerSettings, EmbeddedBroker, LISTEN_BACKLOG, MqttListeners, MqttTls, bind_listener,
};
pub use config::{IngestConfig, IngestMode, IngestModeName, IngestSettings, parse_addr};
pub use decode::{Decoder, HttpDecoded, HttpFormat, HttpIdentity, Outcome, Reject};
pub use error::IngestError;
pub use external::{ExternalBrokerSettings, run_external};
pub use gate::{MqttGate, RateLimit};
pub use mqtt::MqttIngest;
pub use osmand::{OsmandConfig, OsmandFix, OsmandSettings, SpeedUnit};
pub use pipeline::{Ingestor, MAX_CHUNK};
pub use submit::{Caller, Owns, SubmitError, Submitted, Submitter};
pub use validate::{Limits, RawPosition};
