//! The command line (contract: see ARCHITECTURE.md, "Command line").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use fleetd_ingest::IngestModeName;
use fleetd_store::StoreBackendName;
use fleetd_store::scylla::Consistency;

use crate::config::{DEFAULT_CONFIG, FileConfig};

/// fleetd: real-time location backend for fleets of phones and vehicles.
#[derive(Debug, Parser)]
#[command(name = "fleetd", version, about)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines as text (coloured only on a terminal) or as JSON, one
    /// object per line, for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "FLEETD_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run fleetd: embedded MQTT broker, processor, store and HTTP API.
    Serve(ServeArgs),
    /// Drive simulated vehicles publishing positions to an MQTT broker.
    Simulate(crate::simulate::SimulateArgs),
    /// End-to-end load test: starts fleetd (or targets a running one), drives
    /// a simulated fleet and reports throughput, loss, latency, CPU and RSS.
    Bench(fleetd_bench::BenchArgs),
    /// Issue, rotate or revoke device (and OwnTracks user) credentials.
    Credentials(crate::access::CredentialsArgs),
    /// Create, list or revoke API tokens; reset the admin token.
    Token(crate::access::TokenArgs),
    /// Make a key file for encryption at rest (--store-key).
    StoreKey(crate::store_cmd::StoreKeyArgs),
    /// Copy a stopped server's embedded store with its values encrypted
    /// under another key (key rotation), encrypted for the first time, or
    /// decrypted.
    Rekey(crate::store_cmd::RekeyArgs),
    /// Make test certificates (a CA, a server and device certificates) for
    /// trying TLS locally.
    Cert(crate::cert::CertArgs),
    /// Print the commented default configuration file.
    GenerateConfig,
    /// Exit 0 when a fleetd answers `/readyz` with 200, 1 otherwise (a
    /// container's HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `fleetd healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The fleetd HTTP address to ask (its `--http`; 0.0.0.0 means this host).
    #[arg(long, env = "FLEETD_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
}

/// Flags of `fleetd serve`. Each overrides the config file; each also reads a
/// `FLEETD_*` environment variable.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Configuration file (TOML); see `fleetd generate-config`.
    #[arg(long, env = "FLEETD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ingest mode: embedded (broker inside fleetd) or external [default: embedded].
    #[arg(long, env = "FLEETD_INGEST")]
    pub ingest: Option<IngestModeName>,
    /// External MQTT broker, host:port (with --ingest external).
    #[arg(long, env = "FLEETD_BROKER")]
    pub broker: Option<String>,
    /// MQTT listen address of the embedded broker [default: 0.0.0.0:1883].
    #[arg(long, env = "FLEETD_MQTT")]
    pub mqtt: Option<String>,
    /// HTTP API listen address [default: 0.0.0.0:8080].
    #[arg(long, env = "FLEETD_HTTP")]
    pub http: Option<String>,
    /// Data directory of the embedded store [default: ./fleetd-data].
    #[arg(long, env = "FLEETD_DATA")]
    pub data: Option<PathBuf>,
    /// Encrypt the embedded store's values with the key in FILE (64 hex
    /// digits; `fleetd store-key new FILE`).
    #[arg(long, env = "FLEETD_STORE_KEY")]
    pub store_key: Option<PathBuf>,
    /// MQTT over TLS listen address [default port 8883] (needs --tls-cert, --tls-key).
    #[arg(long, env = "FLEETD_MQTTS")]
    pub mqtts: Option<String>,
    /// HTTPS listen address of the API (needs --tls-cert, --tls-key).
    #[arg(long, env = "FLEETD_HTTPS")]
    pub https: Option<String>,
    /// OsmAnd / Traccar Client protocol over TLS listen address (needs
    /// --tls-cert, --tls-key).
    #[arg(long, env = "FLEETD_OSMANDS")]
    pub osmands: Option<String>,
    /// OsmAnd / Traccar Client protocol listen address (Traccar's port is
    /// 5055); off unless set.
    #[arg(long, env = "FLEETD_OSMAND")]
    pub osmand: Option<String>,
    /// Server certificate chain (PEM) of the TLS listeners; reloaded on SIGHUP.
    #[arg(long, env = "FLEETD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert; reloaded on SIGHUP.
    #[arg(long, env = "FLEETD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose device certificates may log in over MQTT TLS (the
    /// certificate's CN is the device id).
    #[arg(long, env = "FLEETD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Close the plain MQTT listener (only --mqtts stays).
    #[arg(long, env = "FLEETD_NO_PLAIN_MQTT")]
    pub no_plain_mqtt: bool,
    /// Close the plain HTTP listener (only --https stays).
    #[arg(long, env = "FLEETD_NO_PLAIN_HTTP")]
    pub no_plain_http: bool,
    /// Micro-batch window in milliseconds [default: 1000].
    #[arg(long, env = "FLEETD_WINDOW_MS")]
    pub window_ms: Option<u64>,
    /// Storage backend: fjall (embedded) or scylla [default: fjall].
    #[arg(long, env = "FLEETD_STORE")]
    pub store: Option<StoreBackendName>,
    /// ScyllaDB contact points, host:port[,host:port...].
    #[arg(long, env = "FLEETD_SCYLLA_URI")]
    pub scylla_uri: Option<String>,
    /// ScyllaDB keyspace [default: fleetd].
    #[arg(long, env = "FLEETD_SCYLLA_KEYSPACE")]
    pub scylla_keyspace: Option<String>,
    /// Consistency of every ScyllaDB read and write: one, local_quorum,
    /// quorum or all [default: local_quorum].
    #[arg(long, env = "FLEETD_SCYLLA_CONSISTENCY")]
    pub scylla_consistency: Option<Consistency>,
    /// Replication factor per datacenter when --scylla-migrate creates the
    /// keyspace [default: 3].
    #[arg(long, env = "FLEETD_SCYLLA_REPLICATION_FACTOR")]
    pub scylla_replication_factor: Option<u32>,
    /// ScyllaDB username (PasswordAuthenticator).
    #[arg(long, env = "FLEETD_SCYLLA_USERNAME")]
    pub scylla_username: Option<String>,
    /// ScyllaDB password; prefer the environment variable to the flag.
    #[arg(long, env = "FLEETD_SCYLLA_PASSWORD", hide_env_values = true)]
    pub scylla_password: Option<String>,
    /// Create the ScyllaDB keyspace and tables (idempotent) before starting.
    #[arg(long, env = "FLEETD_SCYLLA_MIGRATE")]
    pub scylla_migrate: bool,
    /// Connect to ScyllaDB over TLS (needs --scylla-tls-ca).
    #[arg(long, env = "FLEETD_SCYLLA_TLS")]
    pub scylla_tls: bool,
    /// PEM file of the CA that signs the ScyllaDB nodes' certificates.
    #[arg(long, env = "FLEETD_SCYLLA_TLS_CA")]
    pub scylla_tls_ca: Option<String>,
    /// Client certificate (PEM) for ScyllaDB clusters that require one.
    #[arg(long, env = "FLEETD_SCYLLA_TLS_CERT")]
    pub scylla_tls_cert: Option<String>,
    /// Private key (PEM) of --scylla-tls-cert.
    #[arg(long, env = "FLEETD_SCYLLA_TLS_KEY")]
    pub scylla_tls_key: Option<String>,
    /// Name the nodes' certificates must carry [default: each node's IP address].
    #[arg(long, env = "FLEETD_SCYLLA_TLS_SERVER_NAME")]
    pub scylla_tls_server_name: Option<String>,
    /// Also run N simulated vehicles in-process (a moving demo fleet).
    #[arg(long, env = "FLEETD_DEMO")]
    pub demo: Option<usize>,
    /// What an acknowledgement promises: process (default; survives a
    /// crash of fleetd), power (synced to disk; survives power loss) or off
    /// (in memory only).
    #[arg(long, env = "FLEETD_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<fleetd_journal::Durability>,
    /// Turn authentication off: anyone may connect over MQTT, publish as
    /// any device and call every HTTP route. For local experiments only.
    #[arg(long, env = "FLEETD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

fn parse_durability(s: &str) -> Result<fleetd_journal::Durability, String> {
    match s {
        "process" => Ok(fleetd_journal::Durability::Process),
        "power" => Ok(fleetd_journal::Durability::Power),
        "off" => Ok(fleetd_journal::Durability::Off),
        _ => Err(format!("expected process, power or off, got {s:?}")),
    }
}

impl ServeArgs {
    /// The config file (if any) with these flags applied on top.
    pub fn resolve(&self) -> anyhow::Result<FileConfig> {
        let mut config = FileConfig::load_layers(self.config.as_deref(), std::env::vars())?;
        if let Some(v) = self.ingest {
            config.ingest.mode = v;
        }
        if let Some(v) = &self.broker {
            config.ingest.broker = v.clone();
        }
        if let Some(v) = &self.mqtt {
            config.ingest.mqtt = v.clone();
        }
        if let Some(v) = &self.http {
            config.api.http = v.clone();
        }
        if let Some(v) = &self.data {
            config.store.data = v.clone();
        }
        if let Some(v) = &self.osmand {
            config.osmand.listen = v.clone();
        }
        if let Some(v) = &self.store_key {
            config.store.key_file = v.clone();
        }
        let tls = &mut config.tls;
        let listeners = [
            (&self.mqtts, &mut tls.mqtts),
            (&self.https, &mut tls.https),
            (&self.osmands, &mut tls.osmands),
        ];
        for (flag, key) in listeners {
            if let Some(v) = flag {
                key.clone_from(v);
            }
        }
        let files = [
            (&self.tls_cert, &mut tls.cert),
            (&self.tls_key, &mut tls.key),
            (&self.tls_client_ca, &mut tls.client_ca),
        ];
        for (flag, key) in files {
            if let Some(v) = flag {
                key.clone_from(v);
            }
        }
        tls.plain_mqtt &= !self.no_plain_mqtt;
        tls.plain_http &= !self.no_plain_http;
        if let Some(v) = self.durability {
            config.journal.durability = v;
        }
        if let Some(v) = self.window_ms {
            config.processor.window_ms = v;
        }
        if let Some(v) = self.store {
            config.store.backend = v;
        }
        let scylla = &mut config.store.scylla;
        let strings = [
            (&self.scylla_uri, &mut scylla.uri),
            (&self.scylla_keyspace, &mut scylla.keyspace),
            (&self.scylla_username, &mut scylla.username),
            (&self.scylla_password, &mut scylla.password),
            (&self.scylla_tls_ca, &mut scylla.tls_ca),
            (&self.scylla_tls_cert, &mut scylla.tls_cert),
            (&self.scylla_tls_key, &mut scylla.tls_key),
            (&self.scylla_tls_server_name, &mut scylla.tls_server_name),
        ];
        for (flag, key) in strings {
            if let Some(v) = flag {
                key.clone_from(v);
            }
        }
        if let Some(v) = self.scylla_consistency {
            scylla.consistency = v;
        }
        if let Some(v) = self.scylla_replication_factor {
            scylla.replication_factor = v;
        }
        scylla.migrate |= self.scylla_migrate;
        scylla.tls |= self.scylla_tls;
        if let Some(v) = self.demo {
            config.demo.vehicles = v;
        }
        config.auth.allow_anonymous |= self.allow_anonymous;
        Ok(config)
    }
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => {
                let settings = args.resolve()?.validate()?;
                crate::serve::run(settings).await
            }
            Command::Simulate(args) => crate::simulate::run(args).await,
            Command::Bench(args) => fleetd_bench::run(args).await,
            Command::Credentials(args) => crate::access::credentials(args).await,
            Command::Token(args) => crate::access::token(args).await,
            Command::StoreKey(args) => crate::store_cmd::store_key(args),
            Command::Rekey(args) => crate::store_cmd::rekey(args).await,
            Command::Cert(args) => crate::cert::run(args),
            Command::GenerateConfig => {
                print!("{DEFAULT_CONFIG}");
                Ok(())
            }
            Command::Healthcheck(args) => crate::serve::healthcheck(&args.http).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[api]\nhttp = \"127.0.0.1:1\"\n[processor]\nwindow_ms = 200\n",
        )
        .expect("write");
        let args = ServeArgs {
            config: Some(path),
            window_ms: Some(300),
            ..Default::default()
        };
        let c = args.resolve().expect("resolves");
        assert_eq!(c.api.http, "127.0.0.1:1");
        assert_eq!(c.processor.window_ms, 300);
    }

    #[test]
    fn scylla_flags_reach_the_store_section() {
        let args = ServeArgs {
            store: Some(StoreBackendName::Scylla),
            scylla_consistency: Some(Consistency::Quorum),
            scylla_replication_factor: Some(5),
            scylla_tls: true,
            scylla_tls_ca: Some("/etc/fleetd/ca.pem".into()),
            scylla_tls_cert: Some("/etc/fleetd/client.pem".into()),
            scylla_tls_key: Some("/etc/fleetd/client.key".into()),
            scylla_tls_server_name: Some("scylla.internal".into()),
            ..Default::default()
        };
        let store = args.resolve().expect("resolves").store;
        assert_eq!(store.backend, StoreBackendName::Scylla);
        let scylla = store.scylla;
        assert_eq!(scylla.consistency, Consistency::Quorum);
        assert_eq!(scylla.replication_factor, 5);
        assert!(scylla.tls);
        assert_eq!(scylla.tls_ca, "/etc/fleetd/ca.pem");
        assert_eq!(scylla.tls_cert, "/etc/fleetd/client.pem");
        assert_eq!(scylla.tls_key, "/etc/fleetd/client.key");
        assert_eq!(scylla.tls_server_name, "scylla.internal");
    }
}
