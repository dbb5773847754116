//! Configuration: the `fleetd.toml` file layer and its validation into the
//! settings each stage receives.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The commented default configuration, printed by `fleetd generate-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../fleetd.toml");

/// The raw configuration file. Every field has a default, so an empty file
/// (or none) is valid; unknown keys are errors so typos do not pass silently.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `[ingest]`
    pub ingest: IngestConfig,
    /// `[processor]`
    pub processor: ProcessorConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[api]`
    pub api: ApiConfig,
    /// `[demo]`
    pub demo: DemoConfig,
}

/// `[ingest]`: the embedded broker and input validation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub mqtt: String,
    pub max_payload_bytes: usize,
    pub broker_max_packet_bytes: usize,
    pub broker_segment_bytes: usize,
    pub broker_segment_count: usize,
    pub max_connections: usize,
    pub max_inflight: usize,
    pub max_batch_positions: usize,
    pub max_future_s: i64,
    pub max_age_h: i64,
    pub rejection_samples: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            mqtt: "0.0.0.0:1883".into(),
            max_payload_bytes: 256 * 1024,
            broker_max_packet_bytes: 2 * 1024 * 1024,
            broker_segment_bytes: 8 * 1024 * 1024,
            broker_segment_count: 4,
            max_connections: 100_000,
            max_inflight: 256,
            max_batch_positions: 1000,
            max_future_s: 300,
            max_age_h: 720,
            rejection_samples: 1000,
        }
    }
}

/// `[processor]`: micro-batching and enrichment.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    pub window_ms: u64,
    pub max_batch: usize,
    pub partitions: usize,
    pub queue_chunks: usize,
    pub partition_queue_chunks: usize,
    pub h3_detail_res: u8,
    pub store_retry_max: u32,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            window_ms: 1000,
            max_batch: 50_000,
            partitions: 0,
            queue_chunks: 256,
            partition_queue_chunks: 64,
            h3_detail_res: 9,
            store_retry_max: 10,
        }
    }
}

/// `[store]`: which backend and where.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: String,
    pub data: PathBuf,
    pub scylla_uri: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "fjall".into(),
            data: PathBuf::from("./fleetd-data"),
            scylla_uri: "127.0.0.1:9042".into(),
        }
    }
}

/// `[api]`: the HTTP server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub http: String,
    pub request_timeout_s: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            request_timeout_s: 30,
        }
    }
}

/// `[demo]`: in-process simulated fleet.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    pub vehicles: usize,
    pub rate_hz: f64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            vehicles: 0,
            rate_hz: 1.0,
        }
    }
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// The storage backend chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// Embedded fjall store in a directory.
    Fjall(PathBuf),
    /// ScyllaDB cluster.
    Scylla(String),
}

/// Validated settings for `fleetd serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub broker: fleetd_ingest::BrokerSettings,
    pub limits: fleetd_ingest::Limits,
    pub rejection_samples: usize,
    pub processor: fleetd_processor::ProcessorSettings,
    pub store: StoreBackend,
    pub http: SocketAddr,
    pub request_timeout: Duration,
    pub demo_vehicles: usize,
    pub demo_rate_hz: f64,
}

fn addr(what: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{what}: {s:?} is not an address like 0.0.0.0:1883"))
}

impl FileConfig {
    /// Validates the configuration into stage settings.
    pub fn validate(&self) -> anyhow::Result<ServeSettings> {
        let i = &self.ingest;
        let p = &self.processor;
        if i.max_payload_bytes == 0 || i.broker_max_packet_bytes <= i.max_payload_bytes {
            bail!(
                "ingest.broker_max_packet_bytes ({}) must be larger than ingest.max_payload_bytes ({}) > 0",
                i.broker_max_packet_bytes,
                i.max_payload_bytes
            );
        }
        if i.broker_segment_bytes < 1024 || i.broker_segment_count == 0 {
            bail!("ingest.broker_segment_bytes must be >= 1024 and broker_segment_count >= 1");
        }
        if i.max_future_s < 0 || i.max_age_h <= 0 {
            bail!("ingest.max_future_s must be >= 0 and ingest.max_age_h > 0");
        }
        if !(10..=60_000).contains(&p.window_ms) {
            bail!(
                "processor.window_ms (--window-ms) must be in 10..=60000, got {}",
                p.window_ms
            );
        }
        if p.max_batch == 0
            || p.queue_chunks == 0
            || p.partition_queue_chunks == 0
            || p.store_retry_max == 0
        {
            bail!(
                "processor.max_batch, queue_chunks, partition_queue_chunks and store_retry_max must be > 0"
            );
        }
        let detail_res = h3o::Resolution::try_from(p.h3_detail_res).map_err(|_| {
            anyhow::anyhow!(
                "processor.h3_detail_res must be in 0..=15, got {}",
                p.h3_detail_res
            )
        })?;
        let store = match self.store.backend.as_str() {
            "fjall" => StoreBackend::Fjall(self.store.data.clone()),
            "scylla" => StoreBackend::Scylla(self.store.scylla_uri.clone()),
            other => {
                bail!("store.backend (--store) must be \"fjall\" or \"scylla\", got {other:?}")
            }
        };
        if !(self.demo.rate_hz > 0.0 && self.demo.rate_hz <= 100.0) {
            bail!(
                "demo.rate_hz must be in (0, 100], got {}",
                self.demo.rate_hz
            );
        }
        let defaults = fleetd_processor::ProcessorSettings::default();
        Ok(ServeSettings {
            broker: fleetd_ingest::BrokerSettings {
                listen: addr("ingest.mqtt (--mqtt)", &i.mqtt)?,
                max_packet_bytes: i.broker_max_packet_bytes,
                segment_bytes: i.broker_segment_bytes,
                segment_count: i.broker_segment_count,
                max_connections: i.max_connections,
                max_inflight: i.max_inflight,
            },
            limits: fleetd_ingest::Limits {
                max_payload_bytes: i.max_payload_bytes,
                max_batch_positions: i.max_batch_positions,
                max_future_ms: i.max_future_s * 1000,
                max_age_ms: i.max_age_h * 3_600_000,
            },
            rejection_samples: i.rejection_samples,
            processor: fleetd_processor::ProcessorSettings {
                window: Duration::from_millis(p.window_ms),
                max_batch: p.max_batch,
                partitions: if p.partitions == 0 {
                    defaults.partitions
                } else {
                    p.partitions
                },
                queue_chunks: p.queue_chunks,
                partition_queue_chunks: p.partition_queue_chunks,
                store_retry_max: p.store_retry_max,
                enrich: fleetd_processor::EnrichSettings { detail_res },
            },
            store,
            http: addr("api.http (--http)", &self.api.http)?,
            request_timeout: Duration::from_secs(self.api.request_timeout_s.max(1)),
            demo_vehicles: self.demo.vehicles,
            demo_rate_hz: self.demo.rate_hz,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_states_the_defaults() {
        let parsed: FileConfig = toml::from_str(DEFAULT_CONFIG).expect("fleetd.toml parses");
        assert_eq!(parsed, FileConfig::default());
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("[api]\nhtpp = \"x\"").is_err());
        let mut c = FileConfig::default();
        c.processor.window_ms = 0;
        assert!(c.validate().is_err());
        let mut c = FileConfig::default();
        c.store.backend = "postgres".into();
        let err = c.validate().expect_err("bad backend").to_string();
        assert!(err.contains("store.backend"), "{err}");
        let mut c = FileConfig::default();
        c.api.http = "nope".into();
        assert!(c.validate().is_err());
    }
}
