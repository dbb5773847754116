//! `[store]` and `[store.scylla]` of fleetd.toml: the file layer, its
//! validation into a [`StoreBackend`], and [`open`], which opens it.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fleetd_schemas::InvalidSetting;
use serde::Deserialize;

use crate::scylla::{ClientCertificate, Consistency, Credentials, ScyllaTls};
use crate::{FjallStore, ScyllaSettings, ScyllaStore, Store, StoreError};

/// Which backend (`store.backend`, `--store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackendName {
    /// The embedded store in a local directory.
    #[default]
    Fjall,
    /// A ScyllaDB cluster.
    Scylla,
}

impl FromStr for StoreBackendName {
    type Err = InvalidSetting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fjall" => Ok(Self::Fjall),
            "scylla" => Ok(Self::Scylla),
            other => Err(InvalidSetting(format!(
                "store.backend (--store) must be \"fjall\" or \"scylla\", got {other:?}"
            ))),
        }
    }
}

/// `[store]`: which backend and where.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct StoreConfig {
    pub backend: StoreBackendName,
    pub data: PathBuf,
    /// Key file of encryption at rest for the embedded store; empty: off.
    pub key_file: PathBuf,
    /// Days of history the embedded store keeps; 0: forever.
    pub history_days: u32,
    /// Seconds between maintenance passes (history compaction, retention).
    pub maintenance_interval_s: u64,
    /// `[store.scylla]`
    pub scylla: ScyllaConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackendName::Fjall,
            data: PathBuf::from("./fleetd-data"),
            key_file: PathBuf::new(),
            history_days: 30,
            maintenance_interval_s: 60,
            scylla: ScyllaConfig::default(),
        }
    }
}

/// `[store.scylla]`: the ScyllaDB cluster, used with `backend = "scylla"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct ScyllaConfig {
    pub uri: String,
    pub keyspace: String,
    pub replication_factor: u32,
    pub consistency: Consistency,
    pub local_dc: String,
    pub username: String,
    pub password: String,
    pub tls: bool,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_server_name: String,
    pub migrate: bool,
    pub max_inflight: usize,
    pub retry_max: u32,
    pub request_timeout_ms: u64,
    pub area_minutes: u32,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        let d = ScyllaSettings::default();
        Self {
            uri: d.contact_points.join(","),
            keyspace: d.keyspace,
            replication_factor: d.replication_factor,
            consistency: d.consistency,
            local_dc: String::new(),
            username: String::new(),
            password: String::new(),
            tls: false,
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_server_name: String::new(),
            migrate: false,
            max_inflight: d.max_inflight,
            retry_max: d.retry_max,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
            area_minutes: d.area_minutes,
        }
    }
}

/// The storage backend chosen, validated.
// Built once at start and moved, never stored in bulk: its size is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreBackend {
    /// Embedded fjall store in a directory.
    Fjall {
        /// The data directory.
        dir: PathBuf,
        /// The key file of encryption at rest, if on.
        key_file: Option<PathBuf>,
        /// Days of history kept (`None`: forever).
        history_days: Option<u32>,
    },
    /// ScyllaDB cluster.
    Scylla {
        /// Connection and behaviour.
        settings: ScyllaSettings,
        /// Apply the CQL schema (idempotently) before starting.
        migrate: bool,
    },
}

impl StoreBackend {
    /// Whether other fleetd nodes may write the same store (and so the
    /// small tables cached in memory need reloading).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Scylla { .. })
    }
}

impl StoreConfig {
    /// Validates the section into the backend to open.
    pub fn validate(&self) -> Result<StoreBackend, InvalidSetting> {
        if !(1..=86_400).contains(&self.maintenance_interval_s) {
            return Err(InvalidSetting(format!(
                "store.maintenance_interval_s must be in 1..=86400, got {}",
                self.maintenance_interval_s
            )));
        }
        Ok(match self.backend {
            StoreBackendName::Fjall => StoreBackend::Fjall {
                dir: self.data.clone(),
                key_file: (!self.key_file.as_os_str().is_empty()).then(|| self.key_file.clone()),
                history_days: (self.history_days > 0).then_some(self.history_days),
            },
            StoreBackendName::Scylla if !self.key_file.as_os_str().is_empty() => {
                return Err(InvalidSetting(
                    "store.key_file (--store-key) encrypts the embedded store; ScyllaDB's \
                     encryption at rest is the cluster's (see README)"
                        .into(),
                ));
            }
            StoreBackendName::Scylla => StoreBackend::Scylla {
                settings: self.scylla.validate()?,
                migrate: self.scylla.migrate,
            },
        })
    }
}

impl ScyllaConfig {
    /// Validates `[store.scylla]` into the backend's settings.
    pub fn validate(&self) -> Result<ScyllaSettings, InvalidSetting> {
        let config = |e: StoreError| InvalidSetting(format!("[store.scylla] {e}"));
        let credentials = match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => None,
            (false, _) => Some(Credentials {
                username: self.username.clone(),
                password: self.password.clone(),
            }),
            (true, false) => {
                return Err(InvalidSetting::new(
                    "store.scylla.password is set without store.scylla.username",
                ));
            }
        };
        let contact_points = ScyllaSettings::parse_contact_points(&self.uri)
            .map_err(|e| InvalidSetting(format!("store.scylla.uri (--scylla-uri): {e}")))?;
        let settings = ScyllaSettings {
            contact_points,
            keyspace: self.keyspace.clone(),
            replication_factor: self.replication_factor,
            consistency: self.consistency,
            local_datacenter: (!self.local_dc.is_empty()).then(|| self.local_dc.clone()),
            credentials,
            tls: self.tls()?,
            max_inflight: self.max_inflight,
            retry_max: self.retry_max,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            area_minutes: self.area_minutes,
            ..ScyllaSettings::default()
        };
        settings.validate().map_err(config)?;
        Ok(settings)
    }

    /// The TLS settings, if `tls` is on. TLS options without it are an
    /// error rather than a silent plain-text connection.
    fn tls(&self) -> Result<Option<ScyllaTls>, InvalidSetting> {
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let ca = path(&self.tls_ca);
        let cert = path(&self.tls_cert);
        let key = path(&self.tls_key);
        let server_name = (!self.tls_server_name.is_empty()).then(|| self.tls_server_name.clone());
        if !self.tls {
            let set = [
                ("tls_ca", ca.is_some()),
                ("tls_cert", cert.is_some()),
                ("tls_key", key.is_some()),
                ("tls_server_name", server_name.is_some()),
            ];
            if let Some((option, _)) = set.iter().find(|(_, is_set)| *is_set) {
                return Err(InvalidSetting(format!(
                    "store.scylla.{option} is set but store.scylla.tls (--scylla-tls) is off"
                )));
            }
            return Ok(None);
        }
        let Some(ca_file) = ca else {
            return Err(InvalidSetting::new(
                "store.scylla.tls needs store.scylla.tls_ca (--scylla-tls-ca): \
                 the PEM file of the CA that signs the nodes' certificates",
            ));
        };
        let client_cert = match (cert, key) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
                cert_file,
                key_file,
            }),
            (Some(_), None) => {
                return Err(InvalidSetting::new(
                    "store.scylla.tls_cert is set without store.scylla.tls_key",
                ));
            }
            (None, Some(_)) => {
                return Err(InvalidSetting::new(
                    "store.scylla.tls_key is set without store.scylla.tls_cert",
                ));
            }
        };
        Ok(Some(ScyllaTls {
            ca_file,
            client_cert,
            server_name,
        }))
    }
}

/// Opens the chosen backend: the embedded store on the blocking pool (it
/// reads its index from disk), or a connection to the ScyllaDB cluster.
pub async fn open(backend: &StoreBackend) -> Result<Arc<dyn Store>, StoreError> {
    match backend {
        StoreBackend::Fjall {
            dir,
            key_file,
            history_days,
        } => {
            let key = key_file.as_deref().map(crate::StoreKey::load).transpose()?;
            let dir = dir.clone();
            let store =
                tokio::task::spawn_blocking(move || FjallStore::open_with_key(&dir, key.as_ref()))
                    .await
                    .map_err(|e| StoreError::Task(format!("store open: {e}")))??;
            store.set_history_days(*history_days);
            Ok(Arc::new(store))
        }
        StoreBackend::Scylla { settings, migrate } => Ok(Arc::new(
            ScyllaStore::connect(settings.clone(), *migrate).await?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_scylla_settings_are_validated() {
        assert_eq!(
            StoreConfig::default().validate().expect("defaults valid"),
            StoreBackend::Fjall {
                dir: PathBuf::from("./fleetd-data"),
                key_file: None,
                history_days: Some(30),
            }
        );
        let err = "postgres".parse::<StoreBackendName>().expect_err("unknown");
        assert!(err.0.contains("store.backend"), "{err}");
        let mut c = StoreConfig {
            backend: StoreBackendName::Scylla,
            ..StoreConfig::default()
        };
        c.scylla.uri = "a:9042,b:9042".into();
        match c.validate().expect("valid") {
            StoreBackend::Scylla { settings, migrate } => {
                assert_eq!(settings.contact_points, ["a:9042", "b:9042"]);
                assert!(!migrate);
            }
            other => panic!("not scylla: {other:?}"),
        }
        for (field, bad) in [("uri", "nohost"), ("keyspace", "bad-name")] {
            let mut c = c.clone();
            match field {
                "uri" => c.scylla.uri = bad.into(),
                _ => c.scylla.keyspace = bad.into(),
            }
            assert!(c.validate().is_err(), "{field} = {bad}");
        }
        let parsed: StoreConfig =
            toml::from_str("backend = \"scylla\"\n[scylla]\nconsistency = \"QUORUM\"\n")
                .expect("parses");
        assert_eq!(parsed.scylla.consistency, Consistency::Quorum);
        assert!(toml::from_str::<StoreConfig>("[scylla]\nconsistency = \"two\"\n").is_err());
        // The flat keys of earlier versions are refused, not ignored.
        let err = toml::from_str::<StoreConfig>("scylla_uri = \"a:9042\"\n").expect_err("old key");
        assert!(err.to_string().contains("scylla_uri"), "{err}");
    }

    #[test]
    fn scylla_tls_settings_are_checked() {
        let mut c = ScyllaConfig::default();
        assert_eq!(c.validate().expect("valid").tls, None);

        c.tls = true;
        let err = c.validate().expect_err("no CA").0;
        assert!(err.contains("tls_ca"), "{err}");
        c.tls_ca = "/etc/fleetd/ca.pem".into();
        let tls = c.validate().expect("valid").tls.expect("TLS on");
        assert_eq!(tls.ca_file, PathBuf::from("/etc/fleetd/ca.pem"));
        assert_eq!(tls.client_cert, None);
        assert_eq!(tls.server_name, None);

        c.tls_cert = "/etc/fleetd/client.pem".into();
        let err = c.validate().expect_err("cert without key").0;
        assert!(err.contains("tls_key"), "{err}");
        c.tls_key = "/etc/fleetd/client.key".into();
        c.tls_server_name = "scylla.internal".into();
        let tls = c.validate().expect("valid").tls.expect("TLS on");
        let client = tls.client_cert.expect("mutual TLS");
        assert_eq!(client.key_file, PathBuf::from("/etc/fleetd/client.key"));
        assert_eq!(tls.server_name.as_deref(), Some("scylla.internal"));

        c.tls_server_name = "not a name".into();
        assert!(c.validate().is_err(), "invalid server name");

        // TLS options without TLS would otherwise connect in plain text.
        let off = ScyllaConfig {
            tls_ca: "/etc/fleetd/ca.pem".into(),
            ..ScyllaConfig::default()
        };
        let err = off.validate().expect_err("TLS off").0;
        assert!(err.contains("store.scylla.tls"), "{err}");
    }
}
