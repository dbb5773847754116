//! `[ingest]` of fleetd.toml: the file layer and its validation into
//! [`IngestSettings`]. Defaults are the settings types' own.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use fleetd_schemas::{InvalidSetting, ensure_setting};
use serde::Deserialize;

use crate::{BrokerSettings, ExternalBrokerSettings, Limits, RateLimit};

/// Where positions come from (`ingest.mode`, `--ingest`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestModeName {
    /// The broker embedded in fleetd.
    #[default]
    Embedded,
    /// An external broker, subscribed with a shared subscription.
    External,
}

impl FromStr for IngestModeName {
    type Err = InvalidSetting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "external" => Ok(Self::External),
            other => Err(InvalidSetting(format!(
                "ingest.mode (--ingest) must be \"embedded\" or \"external\", got {other:?}"
            ))),
        }
    }
}

/// `[ingest]`: the embedded broker, the external broker and input limits.
/// Every field has a default, so an empty section is valid; unknown keys are
/// errors so typos do not pass silently.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct IngestConfig {
    pub mode: IngestModeName,
    pub broker: String,
    pub share_group: String,
    pub client_id: String,
    pub mqtt: String,
    pub max_payload_bytes: usize,
    pub broker_max_packet_bytes: usize,
    pub broker_segment_bytes: usize,
    pub broker_segment_count: usize,
    pub max_connections: usize,
    pub connect_timeout_ms: u64,
    pub max_inflight: usize,
    pub max_batch_positions: usize,
    pub max_future_s: i64,
    pub max_age_h: i64,
    pub rejection_samples: usize,
    pub device_rate_per_s: f64,
    pub device_burst: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let broker = BrokerSettings::default();
        let limits = Limits::default();
        Self {
            mode: IngestModeName::Embedded,
            broker: "127.0.0.1:1883".into(),
            share_group: "fleetd".into(),
            client_id: String::new(),
            mqtt: broker.listen.to_string(),
            max_payload_bytes: limits.max_payload_bytes,
            broker_max_packet_bytes: broker.max_packet_bytes,
            broker_segment_bytes: broker.segment_bytes,
            broker_segment_count: broker.segment_count,
            max_connections: broker.max_connections,
            connect_timeout_ms: broker.connect_timeout.as_millis() as u64,
            max_inflight: broker.max_inflight,
            max_batch_positions: limits.max_batch_positions,
            max_future_s: limits.max_future_ms / 1000,
            max_age_h: limits.max_age_ms / 3_600_000,
            rejection_samples: DEFAULT_REJECTION_SAMPLES,
            device_rate_per_s: RateLimit::default().per_s,
            device_burst: RateLimit::default().burst,
        }
    }
}

/// Recent rejections kept for `GET /v1/rejections`.
pub(crate) const DEFAULT_REJECTION_SAMPLES: usize = 1000;

/// Where positions come from, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestMode {
    /// The broker embedded in fleetd.
    Embedded,
    /// An external broker, subscribed with a shared subscription.
    External(ExternalBrokerSettings),
}

/// Validated `[ingest]`.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Embedded broker or an external one.
    pub mode: IngestMode,
    /// The embedded broker (its listener is opened only in embedded mode).
    pub broker: BrokerSettings,
    /// Input limits, for MQTT and HTTP ingest alike.
    pub limits: Limits,
    /// Recent rejections kept for `GET /v1/rejections`.
    pub rejection_samples: usize,
    /// Per-device MQTT message rate limit of the embedded broker.
    pub rate: RateLimit,
}

/// Parses `s` as a listen address, naming `what` in the error.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, InvalidSetting> {
    s.parse()
        .map_err(|_| InvalidSetting(format!("{what}: {s:?} is not an address like 0.0.0.0:1883")))
}

impl IngestConfig {
    /// Validates the section into the settings ingest runs with.
    pub fn validate(&self) -> Result<IngestSettings, InvalidSetting> {
        let c = self;
        ensure_setting!(
            c.max_payload_bytes > 0 && c.broker_max_packet_bytes > c.max_payload_bytes,
            "ingest.broker_max_packet_bytes ({}) must be larger than ingest.max_payload_bytes ({}) > 0",
            c.broker_max_packet_bytes,
            c.max_payload_bytes
        );
        ensure_setting!(
            c.broker_segment_bytes >= 1024 && c.broker_segment_count > 0,
            "ingest.broker_segment_bytes must be >= 1024 and broker_segment_count >= 1"
        );
        ensure_setting!(
            c.max_future_s >= 0 && c.max_age_h > 0,
            "ingest.max_future_s must be >= 0 and ingest.max_age_h > 0"
        );
        ensure_setting!(
            c.device_rate_per_s.is_finite() && c.device_rate_per_s >= 0.0 && c.device_burst >= 1,
            "ingest.device_rate_per_s must be >= 0 (0 turns the limit off) and ingest.device_burst >= 1"
        );
        ensure_setting!(
            (1..=65_535).contains(&c.connect_timeout_ms),
            "ingest.connect_timeout_ms must be in 1..=65535, got {}",
            c.connect_timeout_ms
        );
        ensure_setting!(c.max_connections > 0, "ingest.max_connections must be > 0");
        let mode = match c.mode {
            IngestModeName::Embedded => IngestMode::Embedded,
            IngestModeName::External => {
                let (host, port) = c
                    .broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .ok_or_else(|| {
                        InvalidSetting(format!(
                            "ingest.broker (--broker): {:?} is not host:port",
                            c.broker
                        ))
                    })?;
                // Empty: serve takes the id kept in the data directory
                // (`stable_client_id`), so a restarted fleetd resumes its
                // persistent session and gets what it had not acknowledged.
                let client_id = c.client_id.clone();
                IngestMode::External(ExternalBrokerSettings {
                    host: host.to_owned(),
                    port,
                    client_id,
                    share_group: c.share_group.clone(),
                    keep_alive: Duration::from_secs(30),
                    max_inflight: u16::try_from(c.max_inflight).unwrap_or(u16::MAX),
                    max_packet_bytes: c.broker_max_packet_bytes,
                })
            }
        };
        Ok(IngestSettings {
            mode,
            broker: BrokerSettings {
                listen: parse_addr("ingest.mqtt (--mqtt)", &c.mqtt)?,
                max_packet_bytes: c.broker_max_packet_bytes,
                segment_bytes: c.broker_segment_bytes,
                segment_count: c.broker_segment_count,
                max_connections: c.max_connections,
                max_inflight: c.max_inflight,
                connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            },
            limits: Limits {
                max_payload_bytes: c.max_payload_bytes,
                max_batch_positions: c.max_batch_positions,
                max_future_ms: c.max_future_s * 1000,
                max_age_ms: c.max_age_h * 3_600_000,
            },
            rejection_samples: c.rejection_samples,
            rate: RateLimit {
                per_s: c.device_rate_per_s,
                burst: c.device_burst,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let s = IngestConfig::default().validate().expect("defaults valid");
        assert_eq!(s.mode, IngestMode::Embedded);
        assert_eq!(s.limits, Limits::default());
        let d = IngestConfig::default();
        let c = IngestConfig {
            max_payload_bytes: d.broker_max_packet_bytes,
            ..d
        };
        let err = c.validate().expect_err("payload >= packet");
        assert!(err.0.contains("ingest.broker_max_packet_bytes"), "{err}");
        let mut c = IngestConfig {
            mode: IngestModeName::External,
            broker: "nohost".into(),
            ..IngestConfig::default()
        };
        let err = c.validate().expect_err("bad broker");
        assert!(err.0.contains("ingest.broker"), "{err}");
        c.broker = "mqtt.internal:1884".into();
        match c.validate().expect("valid").mode {
            IngestMode::External(e) => {
                assert_eq!((e.host.as_str(), e.port), ("mqtt.internal", 1884))
            }
            other => panic!("not external: {other:?}"),
        }
        let err = "kafka".parse::<IngestModeName>().expect_err("unknown mode");
        assert!(err.0.contains("ingest.mode"), "{err}");
    }
}
