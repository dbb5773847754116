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
    /// `[webhooks]`
    pub webhooks: fleetd_webhooks::WebhookConfig,
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

/// Prefix of the environment variables that set a config key:
/// `FLEETD_{SECTION}__{KEY}`, one `__` per level (`FLEETD_PROCESSOR__WINDOW_MS`,
/// `FLEETD_STORE__SCYLLA__URI`). Variables without `__` are the flags' own
/// (`FLEETD_HTTP` is `--http`).
pub const ENV_PREFIX: &str = "FLEETD_";

impl FileConfig {
    /// The defaults, under the config file at `path` (if any), under the
    /// `FLEETD_{SECTION}__{KEY}` variables among `env`. A variable's value
    /// is taken as the key's type in the shipped defaults: text for a text
    /// key, else a TOML value (`500`, `true`, `["a", "b"]`). An unknown key
    /// or a value of the wrong type is an error that names the variable.
    pub fn load_layers(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let defaults: toml::Table = DEFAULT_CONFIG
            .parse()
            .context("the shipped fleetd.toml does not parse")?;
        let mut from_env = Vec::new();
        for (name, raw) in env {
            let Some(keys) = name.strip_prefix(ENV_PREFIX).filter(|k| k.contains("__")) else {
                continue;
            };
            let keys: Vec<String> = keys.split("__").map(str::to_ascii_lowercase).collect();
            let value = env_value(&defaults, &keys, &raw);
            set_key(&mut table, &keys, value)
                .with_context(|| format!("environment variable {name}"))?;
            from_env.push(name);
        }
        let config: Result<FileConfig, _> = table.try_into();
        match (config, path) {
            (Ok(config), _) => Ok(config),
            (Err(e), _) if !from_env.is_empty() => Err(anyhow::anyhow!(e)).with_context(|| {
                format!(
                    "invalid configuration (file {}, environment {})",
                    path.map_or("none".into(), |p| p.display().to_string()),
                    from_env.join(", ")
                )
            }),
            (Err(e), Some(path)) => Err(anyhow::anyhow!(e))
                .with_context(|| format!("invalid config file {}", path.display())),
            (Err(e), None) => Err(anyhow::anyhow!(e)),
        }
    }
}

/// `raw` as the type of `keys` in the shipped defaults: text stays text (a
/// device id of digits, an address), anything else is read as TOML and
/// falls back to text.
fn env_value(defaults: &toml::Table, keys: &[String], raw: &str) -> toml::Value {
    let mut at = defaults;
    let mut default = None;
    for (i, key) in keys.iter().enumerate() {
        match at.get(key) {
            Some(toml::Value::Table(t)) if i + 1 < keys.len() => at = t,
            Some(v) if i + 1 == keys.len() => default = Some(v),
            _ => break,
        }
    }
    if let Some(toml::Value::String(_)) = default {
        return toml::Value::String(raw.to_owned());
    }
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets `keys` (a path of tables) in `table` to `value`.
fn set_key(table: &mut toml::Table, keys: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = keys.split_last().context("no key")?;
    let mut at = table;
    for key in parents {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("{key} is a value, not a section"),
        };
    }
    at.insert(last.clone(), value);
    Ok(())
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
    /// Time between store maintenance passes.
    pub store_maintenance: std::time::Duration,
    pub api: ApiSettings,
    pub live: LiveApiSettings,
    pub geofences: GeofenceSettings,
    pub tls: TlsSettings,
    pub osmand: OsmandSettings,
    /// `None`: webhooks are off.
    pub webhooks: Option<fleetd_webhooks::WebhookSettings>,
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
        let webhooks = self.webhooks.validate(
            self.store.data.join("webhooks"),
            journal.durability == fleetd_journal::Durability::Power,
        )?;
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
            store_maintenance: std::time::Duration::from_secs(self.store.maintenance_interval_s),
            api,
            live,
            geofences,
            tls,
            osmand,
            webhooks,
            demo_vehicles: self.demo.vehicles,
            demo_rate_hz: self.demo.rate_hz,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn environment_variables_set_keys_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fleetd.toml");
        std::fs::write(&file, "[processor]\nwindow_ms = 300\nmax_batch = 7\n").expect("write");
        let c = FileConfig::load_layers(
            Some(&file),
            env(&[
                ("FLEETD_PROCESSOR__WINDOW_MS", "500"),
                ("FLEETD_INGEST__CLIENT_ID", "12345"),
                ("FLEETD_STORE__SCYLLA__URI", "10.0.0.1:9042"),
                ("FLEETD_AUTH__ALLOW_ANONYMOUS", "true"),
                // A flag's own variable and others are not config keys.
                ("FLEETD_HTTP", "127.0.0.1:1"),
                ("PATH", "/bin"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.processor.window_ms, 500, "the environment over the file");
        assert_eq!(c.processor.max_batch, 7, "the file over the defaults");
        assert_eq!(
            c.ingest.client_id, "12345",
            "digits for a text key stay text"
        );
        assert_eq!(c.store.scylla.uri, "10.0.0.1:9042");
        assert!(c.auth.allow_anonymous);
        assert_eq!(c.api, FileConfig::default().api);
    }

    #[test]
    fn a_bad_environment_variable_is_named() {
        let err = FileConfig::load_layers(None, env(&[("FLEETD_API__HTPP", "x")]))
            .expect_err("unknown key");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("FLEETD_API__HTPP") && msg.contains("htpp"),
            "{msg}"
        );
        let err = FileConfig::load_layers(None, env(&[("FLEETD_PROCESSOR__WINDOW_MS", "soon")]))
            .expect_err("wrong type");
        assert!(
            format!("{err:#}").contains("FLEETD_PROCESSOR__WINDOW_MS"),
            "{err:#}"
        );
        let err = FileConfig::load_layers(None, env(&[("FLEETD_DEMO__VEHICLES__X", "1")]))
            .expect_err("a value is not a section");
        assert!(
            format!("{err:#}").contains("FLEETD_DEMO__VEHICLES__X"),
            "{err:#}"
        );
    }

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
