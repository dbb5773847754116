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
    /// `[vehicle]`
    pub vehicle: VehicleConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[api]`
    pub api: ApiConfig,
    /// `[live]`
    pub live: LiveConfig,
    /// `[geofences]`
    pub geofences: GeofenceConfig,
    /// `[demo]`
    pub demo: DemoConfig,
}

/// `[ingest]`: the embedded broker and input validation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    pub mode: String,
    pub broker: String,
    pub share_group: String,
    pub client_id: String,
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
            mode: "embedded".into(),
            broker: "127.0.0.1:1883".into(),
            share_group: "fleetd".into(),
            client_id: String::new(),
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
    pub registry_refresh_s: u64,
    pub sweep_s: u64,
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
            registry_refresh_s: 30,
            sweep_s: 30,
        }
    }
}

/// `[vehicle]`: data-quality filters, motion, trips and overspeed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VehicleConfig {
    pub reorder_ms: i64,
    pub max_accuracy_m: f64,
    pub max_speed_kmh: f64,
    pub teleport_slack_m: f64,
    pub teleport_confirm: u32,
    pub stop_radius_m: f64,
    pub accuracy_factor: f64,
    pub stopped_after_s: f64,
    pub trip_end_s: f64,
    pub min_trip_m: f64,
    pub depart_fixes: u32,
    pub overspeed_grace_s: f64,
    pub overspeed_clear_s: f64,
    /// Speed limits per registry class, km/h.
    pub class_speed_limits_kmh: std::collections::BTreeMap<String, f64>,
}

impl Default for VehicleConfig {
    fn default() -> Self {
        let d = fleetd_processor::VehicleSettings::default();
        Self {
            reorder_ms: d.reorder_ms,
            max_accuracy_m: d.max_accuracy_m,
            // The processor default in km/h, as written (a round trip through
            // m/s would not compare equal to the shipped file).
            max_speed_kmh: 300.0,
            teleport_slack_m: d.teleport_slack_m,
            teleport_confirm: d.teleport_confirm,
            stop_radius_m: d.stop_radius_m,
            accuracy_factor: d.accuracy_factor,
            stopped_after_s: d.stopped_after_ms as f64 / 1000.0,
            trip_end_s: d.trip_end_ms as f64 / 1000.0,
            min_trip_m: d.min_trip_m,
            depart_fixes: d.depart_fixes,
            overspeed_grace_s: d.overspeed_grace_ms as f64 / 1000.0,
            overspeed_clear_s: d.overspeed_clear_ms as f64 / 1000.0,
            class_speed_limits_kmh: Default::default(),
        }
    }
}

impl VehicleConfig {
    /// Validates into the processor's settings.
    fn settings(&self) -> anyhow::Result<fleetd_processor::VehicleSettings> {
        let non_negative = [
            ("reorder_ms", self.reorder_ms as f64),
            ("max_accuracy_m", self.max_accuracy_m),
            ("teleport_slack_m", self.teleport_slack_m),
            ("overspeed_grace_s", self.overspeed_grace_s),
            ("overspeed_clear_s", self.overspeed_clear_s),
            ("min_trip_m", self.min_trip_m),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                bail!("vehicle.{name} must be a number >= 0, got {v}");
            }
        }
        let positive = [
            ("max_speed_kmh", self.max_speed_kmh),
            ("stop_radius_m", self.stop_radius_m),
            ("accuracy_factor", self.accuracy_factor),
            ("stopped_after_s", self.stopped_after_s),
            ("trip_end_s", self.trip_end_s),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("vehicle.{name} must be a number > 0, got {v}");
            }
        }
        if self.reorder_ms > 600_000 {
            bail!(
                "vehicle.reorder_ms must be at most 600000 (10 min), got {}",
                self.reorder_ms
            );
        }
        if self.trip_end_s < self.stopped_after_s {
            bail!(
                "vehicle.trip_end_s ({}) must be at least vehicle.stopped_after_s ({})",
                self.trip_end_s,
                self.stopped_after_s
            );
        }
        if self.depart_fixes == 0 || self.teleport_confirm == 0 {
            bail!("vehicle.depart_fixes and vehicle.teleport_confirm must be >= 1");
        }
        for (class, limit) in &self.class_speed_limits_kmh {
            if !(limit.is_finite() && *limit > 0.0) {
                bail!("vehicle.class_speed_limits_kmh.{class} must be > 0, got {limit}");
            }
        }
        let ms = |s: f64| (s * 1000.0).round() as i64;
        Ok(fleetd_processor::VehicleSettings {
            reorder_ms: self.reorder_ms,
            max_accuracy_m: self.max_accuracy_m,
            max_speed_mps: self.max_speed_kmh / 3.6,
            teleport_slack_m: self.teleport_slack_m,
            teleport_confirm: self.teleport_confirm,
            stop_radius_m: self.stop_radius_m,
            accuracy_factor: self.accuracy_factor,
            stopped_after_ms: ms(self.stopped_after_s),
            trip_end_ms: ms(self.trip_end_s),
            min_trip_m: self.min_trip_m,
            depart_fixes: self.depart_fixes,
            overspeed_grace_ms: ms(self.overspeed_grace_s),
            overspeed_clear_ms: ms(self.overspeed_clear_s),
        })
    }
}

/// `[store]`: which backend and where.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: String,
    pub data: PathBuf,
    pub scylla_uri: String,
    pub scylla_keyspace: String,
    pub scylla_replication_factor: u32,
    pub scylla_consistency: String,
    pub scylla_local_dc: String,
    pub scylla_username: String,
    pub scylla_password: String,
    pub scylla_tls: bool,
    pub scylla_tls_ca: String,
    pub scylla_tls_cert: String,
    pub scylla_tls_key: String,
    pub scylla_tls_server_name: String,
    pub scylla_migrate: bool,
    pub scylla_max_inflight: usize,
    pub scylla_retry_max: u32,
    pub scylla_request_timeout_ms: u64,
    pub scylla_area_minutes: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "fjall".into(),
            data: PathBuf::from("./fleetd-data"),
            scylla_uri: "127.0.0.1:9042".into(),
            scylla_keyspace: "fleetd".into(),
            scylla_replication_factor: 3,
            scylla_consistency: "local_quorum".into(),
            scylla_local_dc: String::new(),
            scylla_username: String::new(),
            scylla_password: String::new(),
            scylla_tls: false,
            scylla_tls_ca: String::new(),
            scylla_tls_cert: String::new(),
            scylla_tls_key: String::new(),
            scylla_tls_server_name: String::new(),
            scylla_migrate: false,
            scylla_max_inflight: 256,
            scylla_retry_max: 3,
            scylla_request_timeout_ms: 5000,
            scylla_area_minutes: 2,
        }
    }
}

impl StoreConfig {
    /// The ScyllaDB settings of this section.
    fn scylla_settings(&self) -> anyhow::Result<fleetd_store::ScyllaSettings> {
        use fleetd_store::scylla::{Consistency, Credentials};
        let credentials = match (
            self.scylla_username.is_empty(),
            self.scylla_password.is_empty(),
        ) {
            (true, true) => None,
            (false, _) => Some(Credentials {
                username: self.scylla_username.clone(),
                password: self.scylla_password.clone(),
            }),
            (true, false) => bail!("store.scylla_password is set without store.scylla_username"),
        };
        let settings = fleetd_store::ScyllaSettings {
            contact_points: fleetd_store::ScyllaSettings::parse_contact_points(&self.scylla_uri)
                .context("store.scylla_uri (--scylla-uri)")?,
            keyspace: self.scylla_keyspace.clone(),
            replication_factor: self.scylla_replication_factor,
            consistency: Consistency::parse(&self.scylla_consistency)
                .context("store.scylla_consistency")?,
            local_datacenter: (!self.scylla_local_dc.is_empty())
                .then(|| self.scylla_local_dc.clone()),
            credentials,
            tls: self.scylla_tls()?,
            max_inflight: self.scylla_max_inflight,
            retry_max: self.scylla_retry_max,
            request_timeout: Duration::from_millis(self.scylla_request_timeout_ms.max(1)),
            area_minutes: self.scylla_area_minutes,
            ..Default::default()
        };
        settings.validate().context("[store] scylla settings")?;
        Ok(settings)
    }

    /// The TLS settings, if `scylla_tls` is on. TLS options without it are
    /// an error rather than a silent plain-text connection.
    fn scylla_tls(&self) -> anyhow::Result<Option<fleetd_store::scylla::ScyllaTls>> {
        use fleetd_store::scylla::{ClientCertificate, ScyllaTls};
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let ca = path(&self.scylla_tls_ca);
        let cert = path(&self.scylla_tls_cert);
        let key = path(&self.scylla_tls_key);
        let server_name =
            (!self.scylla_tls_server_name.is_empty()).then(|| self.scylla_tls_server_name.clone());
        if !self.scylla_tls {
            let set = [
                ("scylla_tls_ca", ca.is_some()),
                ("scylla_tls_cert", cert.is_some()),
                ("scylla_tls_key", key.is_some()),
                ("scylla_tls_server_name", server_name.is_some()),
            ];
            if let Some((option, _)) = set.iter().find(|(_, is_set)| *is_set) {
                bail!("store.{option} is set but store.scylla_tls (--scylla-tls) is off");
            }
            return Ok(None);
        }
        let Some(ca_file) = ca else {
            bail!(
                "store.scylla_tls needs store.scylla_tls_ca (--scylla-tls-ca): \
                 the PEM file of the CA that signs the nodes' certificates"
            );
        };
        let client_cert = match (cert, key) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
                cert_file,
                key_file,
            }),
            (Some(_), None) => bail!("store.scylla_tls_cert is set without store.scylla_tls_key"),
            (None, Some(_)) => bail!("store.scylla_tls_key is set without store.scylla_tls_cert"),
        };
        Ok(Some(ScyllaTls {
            ca_file,
            client_cert,
            server_name,
        }))
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

/// `[live]`: live streams, the heatmap and the map page.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    pub replay_positions: usize,
    pub replay_alerts: usize,
    pub replay_age_s: u64,
    pub broadcast_batches: usize,
    pub heartbeat_s: u64,
    pub client_buffer_bytes: usize,
    pub client_buffer_frames: usize,
    pub cells_max_age_s: u64,
    pub tile_url: String,
    pub tile_attribution: String,
}

impl Default for LiveConfig {
    fn default() -> Self {
        let hub = fleetd_live::LiveSettings::default();
        let stream = fleetd_api::StreamSettings::default();
        Self {
            replay_positions: hub.replay_positions,
            replay_alerts: hub.replay_alerts,
            replay_age_s: hub.replay_age.as_secs(),
            broadcast_batches: hub.broadcast_batches,
            heartbeat_s: stream.heartbeat.as_secs(),
            client_buffer_bytes: stream.client_buffer_bytes,
            client_buffer_frames: stream.client_buffer_frames,
            cells_max_age_s: hub.cells_max_age.as_secs(),
            tile_url: String::new(),
            tile_attribution: String::new(),
        }
    }
}

impl LiveConfig {
    /// The hub, stream and map settings of this section.
    fn validate(
        &self,
    ) -> anyhow::Result<(
        fleetd_live::LiveSettings,
        fleetd_api::StreamSettings,
        fleetd_api::MapSettings,
    )> {
        if self.broadcast_batches == 0 || self.client_buffer_frames == 0 {
            bail!("live.broadcast_batches and live.client_buffer_frames must be > 0");
        }
        if self.client_buffer_bytes < 4096 {
            bail!(
                "live.client_buffer_bytes must be at least 4096, got {}",
                self.client_buffer_bytes
            );
        }
        if !(1..=3600).contains(&self.heartbeat_s) {
            bail!(
                "live.heartbeat_s must be in 1..=3600, got {}",
                self.heartbeat_s
            );
        }
        if self.replay_age_s == 0 || self.cells_max_age_s == 0 {
            bail!("live.replay_age_s and live.cells_max_age_s must be > 0");
        }
        let tile_url = self.tile_url.trim();
        let is_http = tile_url.starts_with("http://") || tile_url.starts_with("https://");
        if !(tile_url.is_empty() || is_http) {
            bail!(
                "live.tile_url must be an http(s) URL template like https://tile.example/{{z}}/{{x}}/{{y}}.png, got {tile_url:?}"
            );
        }
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        Ok((
            fleetd_live::LiveSettings {
                replay_positions: self.replay_positions,
                replay_alerts: self.replay_alerts,
                replay_age: Duration::from_secs(self.replay_age_s),
                broadcast_batches: self.broadcast_batches,
                cells_max_age: Duration::from_secs(self.cells_max_age_s),
            },
            fleetd_api::StreamSettings {
                heartbeat: Duration::from_secs(self.heartbeat_s),
                client_buffer_bytes: self.client_buffer_bytes,
                client_buffer_frames: self.client_buffer_frames,
                ..fleetd_api::StreamSettings::default()
            },
            fleetd_api::MapSettings {
                tile_url: non_empty(&self.tile_url),
                tile_attribution: non_empty(&self.tile_attribution),
            },
        ))
    }
}

/// `[geofences]`: fence limits, the index and membership rules.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GeofenceConfig {
    pub max_vertices: usize,
    pub max_radius_m: f64,
    pub cell_budget: usize,
    pub min_outside_s: f64,
    pub default_accuracy_m: f64,
    pub refresh_s: u64,
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        let limits = fleetd_geofence::GeofenceLimits::default();
        let index = fleetd_geofence::IndexSettings::default();
        let tracking = fleetd_geofence::FenceSettings::default();
        Self {
            max_vertices: limits.max_vertices,
            max_radius_m: limits.max_radius_m,
            cell_budget: index.cell_budget,
            min_outside_s: tracking.min_outside_ms as f64 / 1000.0,
            default_accuracy_m: tracking.default_accuracy_m,
            refresh_s: 30,
        }
    }
}

/// Validated `[geofences]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeofenceSettings {
    pub limits: fleetd_geofence::GeofenceLimits,
    pub index: fleetd_geofence::IndexSettings,
    pub tracking: fleetd_geofence::FenceSettings,
    /// How often fences are reloaded from a shared (ScyllaDB) store, for
    /// changes made through other nodes.
    pub refresh: Duration,
}

impl GeofenceConfig {
    fn validate(&self) -> anyhow::Result<GeofenceSettings> {
        if !(4..=1_000_000).contains(&self.max_vertices) {
            bail!(
                "geofences.max_vertices must be in 4..=1000000, got {}",
                self.max_vertices
            );
        }
        if !(self.max_radius_m.is_finite() && self.max_radius_m > 0.0) {
            bail!(
                "geofences.max_radius_m must be > 0, got {}",
                self.max_radius_m
            );
        }
        if !(4..=10_000).contains(&self.cell_budget) {
            bail!(
                "geofences.cell_budget must be in 4..=10000, got {}",
                self.cell_budget
            );
        }
        if !(self.min_outside_s.is_finite() && self.min_outside_s >= 0.0) {
            bail!(
                "geofences.min_outside_s must be >= 0, got {}",
                self.min_outside_s
            );
        }
        if !(self.default_accuracy_m.is_finite() && self.default_accuracy_m >= 0.0) {
            bail!(
                "geofences.default_accuracy_m must be >= 0, got {}",
                self.default_accuracy_m
            );
        }
        if self.refresh_s == 0 {
            bail!("geofences.refresh_s must be > 0");
        }
        Ok(GeofenceSettings {
            limits: fleetd_geofence::GeofenceLimits {
                max_vertices: self.max_vertices,
                max_radius_m: self.max_radius_m,
            },
            index: fleetd_geofence::IndexSettings {
                cell_budget: self.cell_budget,
                ..Default::default()
            },
            tracking: fleetd_geofence::FenceSettings {
                min_outside_ms: (self.min_outside_s * 1000.0).round() as i64,
                default_accuracy_m: self.default_accuracy_m,
            },
            refresh: Duration::from_secs(self.refresh_s),
        })
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
// Built once at start and moved, never stored in bulk: its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// Embedded fjall store in a directory.
    Fjall(PathBuf),
    /// ScyllaDB cluster.
    Scylla {
        /// Connection and behaviour.
        settings: fleetd_store::ScyllaSettings,
        /// Apply the CQL schema (idempotently) before starting.
        migrate: bool,
    },
}

/// Where positions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestMode {
    /// The broker embedded in fleetd.
    Embedded,
    /// An external broker, subscribed with a shared subscription.
    External(fleetd_ingest::ExternalBrokerSettings),
}

/// Validated settings for `fleetd serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub ingest_mode: IngestMode,
    pub broker: fleetd_ingest::BrokerSettings,
    pub limits: fleetd_ingest::Limits,
    pub rejection_samples: usize,
    pub processor: fleetd_processor::ProcessorSettings,
    /// Registry class speed limits, km/h.
    pub class_speed_limits_kmh: std::collections::HashMap<String, f64>,
    /// How often the registry cache reloads from the store (other nodes'
    /// changes); changes made through this node apply at once.
    pub registry_refresh: Duration,
    pub store: StoreBackend,
    pub http: SocketAddr,
    pub request_timeout: Duration,
    pub demo_vehicles: usize,
    pub demo_rate_hz: f64,
    pub live: fleetd_live::LiveSettings,
    pub streams: fleetd_api::StreamSettings,
    pub map: fleetd_api::MapSettings,
    pub geofences: GeofenceSettings,
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
            "scylla" => StoreBackend::Scylla {
                settings: self.store.scylla_settings()?,
                migrate: self.store.scylla_migrate,
            },
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
        let ingest_mode = match i.mode.as_str() {
            "embedded" => IngestMode::Embedded,
            "external" => {
                let (host, port) = i
                    .broker
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                    .filter(|(h, _)| !h.is_empty())
                    .with_context(|| {
                        format!("ingest.broker (--broker): {:?} is not host:port", i.broker)
                    })?;
                let client_id = if i.client_id.is_empty() {
                    // Unique per process: two instances with one id would
                    // keep disconnecting each other.
                    format!("fleetd-{}", std::process::id())
                } else {
                    i.client_id.clone()
                };
                IngestMode::External(fleetd_ingest::ExternalBrokerSettings {
                    host: host.to_owned(),
                    port,
                    client_id,
                    share_group: i.share_group.clone(),
                    keep_alive: Duration::from_secs(30),
                    max_inflight: u16::try_from(i.max_inflight).unwrap_or(u16::MAX),
                    max_packet_bytes: i.broker_max_packet_bytes,
                })
            }
            other => {
                bail!("ingest.mode (--ingest) must be \"embedded\" or \"external\", got {other:?}")
            }
        };
        let defaults = fleetd_processor::ProcessorSettings::default();
        let vehicle = self.vehicle.settings()?;
        if p.registry_refresh_s == 0 || p.sweep_s == 0 {
            bail!("processor.registry_refresh_s and processor.sweep_s must be > 0");
        }
        let (live, streams, map) = self.live.validate()?;
        let geofences = self.geofences.validate()?;
        Ok(ServeSettings {
            ingest_mode,
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
                enrich: fleetd_processor::EnrichSettings {
                    detail_res,
                    vehicle,
                },
                sweep_every: Duration::from_secs(p.sweep_s),
            },
            class_speed_limits_kmh: self
                .vehicle
                .class_speed_limits_kmh
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            registry_refresh: Duration::from_secs(p.registry_refresh_s),
            store,
            http: addr("api.http (--http)", &self.api.http)?,
            request_timeout: Duration::from_secs(self.api.request_timeout_s.max(1)),
            demo_vehicles: self.demo.vehicles,
            demo_rate_hz: self.demo.rate_hz,
            live,
            streams,
            map,
            geofences,
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
        let mut c = FileConfig::default();
        c.vehicle.trip_end_s = 10.0;
        let err = c.validate().expect_err("trip end before stop").to_string();
        assert!(err.contains("vehicle.trip_end_s"), "{err}");
        let mut c = FileConfig::default();
        c.vehicle.max_speed_kmh = f64::NAN;
        assert!(c.validate().is_err());
        let c: FileConfig =
            toml::from_str("[vehicle.class_speed_limits_kmh]\ntruck = 80.0").expect("parses");
        let s = c.validate().expect("valid");
        assert_eq!(s.class_speed_limits_kmh.get("truck"), Some(&80.0));
        let mut c = FileConfig::default();
        c.live.tile_url = "tiles/{z}/{x}/{y}.png".into();
        let err = c.validate().expect_err("bad tile url").to_string();
        assert!(err.contains("live.tile_url"), "{err}");
        let mut c = FileConfig::default();
        c.live.client_buffer_bytes = 10;
        assert!(c.validate().is_err());
        let mut c = FileConfig::default();
        c.geofences.max_vertices = 3;
        let err = c.validate().expect_err("too few vertices").to_string();
        assert!(err.contains("geofences.max_vertices"), "{err}");
        let c: FileConfig = toml::from_str(
            "[geofences]
min_outside_s = 12.5",
        )
        .expect("parses");
        let s = c.validate().expect("valid");
        assert_eq!(s.geofences.tracking.min_outside_ms, 12_500);
    }

    #[test]
    fn scylla_settings_are_validated() {
        let mut c = FileConfig::default();
        c.store.backend = "scylla".into();
        c.store.scylla_uri = "a:9042,b:9042".into();
        c.store.scylla_consistency = "QUORUM".into();
        match c.validate().expect("valid").store {
            StoreBackend::Scylla { settings, migrate } => {
                assert_eq!(settings.contact_points, ["a:9042", "b:9042"]);
                assert!(!migrate);
            }
            other => panic!("not scylla: {other:?}"),
        }
        for (field, bad) in [
            ("uri", "nohost"),
            ("consistency", "two"),
            ("keyspace", "bad-name"),
        ] {
            let mut c = c.clone();
            match field {
                "uri" => c.store.scylla_uri = bad.into(),
                "consistency" => c.store.scylla_consistency = bad.into(),
                _ => c.store.scylla_keyspace = bad.into(),
            }
            assert!(c.validate().is_err(), "{field} = {bad}");
        }
    }

    #[test]
    fn scylla_tls_settings_are_checked() {
        let mut c = FileConfig::default();
        c.store.backend = "scylla".into();
        let tls_of = |c: &FileConfig| match c.validate().expect("valid").store {
            StoreBackend::Scylla { settings, .. } => settings.tls,
            other => panic!("not scylla: {other:?}"),
        };
        assert_eq!(tls_of(&c), None);

        c.store.scylla_tls = true;
        let err = format!("{:#}", c.validate().expect_err("no CA"));
        assert!(err.contains("scylla_tls_ca"), "{err}");
        c.store.scylla_tls_ca = "/etc/fleetd/ca.pem".into();
        let tls = tls_of(&c).expect("TLS on");
        assert_eq!(tls.ca_file, PathBuf::from("/etc/fleetd/ca.pem"));
        assert_eq!(tls.client_cert, None);
        assert_eq!(tls.server_name, None);

        c.store.scylla_tls_cert = "/etc/fleetd/client.pem".into();
        let err = format!("{:#}", c.validate().expect_err("cert without key"));
        assert!(err.contains("scylla_tls_key"), "{err}");
        c.store.scylla_tls_key = "/etc/fleetd/client.key".into();
        c.store.scylla_tls_server_name = "scylla.internal".into();
        let tls = tls_of(&c).expect("TLS on");
        let client = tls.client_cert.expect("mutual TLS");
        assert_eq!(client.key_file, PathBuf::from("/etc/fleetd/client.key"));
        assert_eq!(tls.server_name.as_deref(), Some("scylla.internal"));

        c.store.scylla_tls_server_name = "not a name".into();
        assert!(c.validate().is_err(), "invalid server name");

        // TLS options without TLS would otherwise connect in plain text.
        let mut off = FileConfig::default();
        off.store.backend = "scylla".into();
        off.store.scylla_tls_ca = "/etc/fleetd/ca.pem".into();
        let err = format!("{:#}", off.validate().expect_err("TLS off"));
        assert!(err.contains("scylla_tls"), "{err}");
    }
}
