//! Configuration: `fleetd.toml` assembled from each stage's own section
//! (every stage validates its settings and owns its defaults), plus the
//! few settings that cross stages.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetd_api::{ApiConfig, ApiSettings, LiveApiSettings, LiveConfig};
use fleetd_auth::{AuthConfig, AuthSettings};
use fleetd_geofence::{GeofenceConfig, GeofenceSettings};
use fleetd_ingest::{IngestConfig, IngestSettings, OsmandConfig, OsmandSettings};
use fleetd_journal::{JournalConfig, JournalSettings};
use fleetd_processor::{ProcessorConfig, ProcessorSettings, VehicleConfig};
use fleetd_store::{StoreBackend, StoreConfig};
use fleetd_tls::{TlsConfig, TlsSettings};
use serde::Deserialize;

/// The commented default configuration, printed by `fleetd generate-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../fleetd.toml");

/// Shutdown must finish within this; past it fleetd exits non-zero and logs
/// which stage was late.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// The raw configuration file. Every field has a default, so an empty file
/// (or none) is valid; unknown keys are errors so typos do not pass silently.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// `[ingest]`
    pub ingest: IngestConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[journal]`
    pub journal: JournalConfig,
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
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[osmand]`
    pub osmand: OsmandConfig,
    /// `[demo]`
    pub demo: DemoConfig,
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

/// Validated settings for `fleetd serve`, one part per stage.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub ingest: IngestSettings,
    pub auth: AuthSettings,
    /// Where `admin.token` is kept (the embedded store's directory, also
    /// with ScyllaDB).
    pub data_dir: std::path::PathBuf,
    pub journal: JournalSettings,
    pub processor: ProcessorSettings,
    pub store: StoreBackend,
    pub api: ApiSettings,
    pub live: LiveApiSettings,
    pub geofences: GeofenceSettings,
    pub tls: TlsSettings,
    pub osmand: OsmandSettings,
    pub demo_vehicles: usize,
    pub demo_rate_hz: f64,
}

impl FileConfig {
    /// Validates each stage's section, then what crosses stages.
    pub fn validate(&self) -> anyhow::Result<ServeSettings> {
        let ingest = self.ingest.validate()?;
        let auth = self.auth.validate()?;
        let journal = self.journal.validate(self.store.data.join("journal"))?;
        let mut processor = self.processor.validate(&self.vehicle)?;
        let store = self.store.validate()?;
        let api = self.api.validate()?;
        let live = self.live.validate()?;
        let geofences = self.geofences.validate()?;
        let tls = self.tls.validate()?;
        let osmand = self.osmand.validate()?;
        if !matches!(ingest.mode, fleetd_ingest::IngestMode::Embedded)
            && (tls.mqtts.is_some() || !tls.plain_mqtt)
        {
            bail!(
                "--mqtts and --no-plain-mqtt concern the embedded broker; an external broker \
                 (--ingest external) has listeners of its own"
            );
        }
        if !(self.demo.rate_hz > 0.0 && self.demo.rate_hz <= 100.0) {
            bail!(
                "demo.rate_hz must be in (0, 100], got {}",
                self.demo.rate_hz
            );
        }
        if self.demo.vehicles > 0 && !tls.plain_mqtt {
            bail!("the demo fleet (--demo) connects over plain MQTT: drop --no-plain-mqtt");
        }
        if api.request_timeout >= SHUTDOWN_DEADLINE {
            bail!(
                "api.request_timeout_s ({}) must be shorter than the shutdown deadline ({} s)",
                api.request_timeout.as_secs(),
                SHUTDOWN_DEADLINE.as_secs()
            );
        }
        // With a shared store, other nodes change fences too; the embedded
        // store has no other writer than this node's API.
        processor.geofence_refresh = store.is_shared().then_some(geofences.refresh);
        Ok(ServeSettings {
            ingest,
            auth,
            data_dir: self.store.data.clone(),
            journal,
            processor,
            store,
            api,
            live,
            geofences,
            tls,
            osmand,
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
    fn sections_are_validated_by_their_stages() {
        assert!(toml::from_str::<FileConfig>("[api]\nhtpp = \"x\"").is_err());
        let mut c = FileConfig::default();
        c.processor.window_ms = 0;
        let err = c.validate().expect_err("window").to_string();
        assert!(err.contains("processor.window_ms"), "{err}");
        let err = toml::from_str::<FileConfig>("[store]\nbackend = \"postgres\"")
            .expect_err("unknown backend");
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let mut c = FileConfig::default();
        c.api.http = "nope".into();
        assert!(c.validate().is_err());
        let mut c = FileConfig::default();
        c.geofences.max_vertices = 3;
        let err = c.validate().expect_err("too few vertices").to_string();
        assert!(err.contains("geofences.max_vertices"), "{err}");
        let mut c = FileConfig::default();
        c.api.request_timeout_s = 30;
        let err = c.validate().expect_err("timeout >= deadline").to_string();
        assert!(err.contains("api.request_timeout_s"), "{err}");
    }

    #[test]
    fn fences_reload_only_from_a_shared_store() {
        let c = FileConfig::default();
        assert_eq!(
            c.validate().expect("valid").processor.geofence_refresh,
            None
        );
        let mut c = FileConfig::default();
        c.store.backend = fleetd_store::StoreBackendName::Scylla;
        let s = c.validate().expect("valid");
        assert_eq!(s.processor.geofence_refresh, Some(s.geofences.refresh));
    }
}
