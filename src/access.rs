//! `fleetd credentials` and `fleetd token`: provisioning on a stopped
//! server's data directory (or a ScyllaDB cluster, which may be in use).
//!
//! The same [`fleetd_auth::Access`] calls as the HTTP routes, so a secret
//! issued here and one issued over `POST /v1/devices/{id}/credentials` are
//! the same thing. Secrets are printed once, on stdout; nothing else is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use fleetd_auth::{Access, AccessSettings, IssuedCredential};
use fleetd_schemas::{DeviceId, Principal, Scope};

use crate::config::FileConfig;

/// Where the credentials and tokens are: the config file's store, or
/// `--data`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Configuration file (TOML); its `[store]` section is used.
    #[arg(long, env = "FLEETD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./fleetd-data]. The
    /// server must be stopped (the embedded store admits one process).
    #[arg(long, env = "FLEETD_DATA")]
    pub data: Option<PathBuf>,
    /// Key file of an encrypted embedded store (as `serve --store-key`).
    #[arg(long, env = "FLEETD_STORE_KEY")]
    pub store_key: Option<PathBuf>,
}

/// `fleetd credentials`.
#[derive(Debug, Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    action: CredentialsAction,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum CredentialsAction {
    /// Issue a secret for each device (or OwnTracks user with --user);
    /// issuing again rotates it: the old secret stops working at once.
    Issue {
        /// Device ids (or user names with --user).
        ids: Vec<String>,
        /// Read the ids from a file: CSV (the first column; a header
        /// `device_id`, `id` or `user` is skipped) or JSON (a list of ids or
        /// of objects with `device_id` or `user`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The ids are OwnTracks users: one secret covers `owntracks/{user}/…`.
        #[arg(long)]
        user: bool,
        /// Output: json (a list of {device_id, username, password}) or csv.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Revoke a device's (or --user's) secret.
    Revoke {
        /// Device id (or user name with --user).
        id: String,
        /// The id is an OwnTracks user.
        #[arg(long)]
        user: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Csv,
}

/// `fleetd token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create an API token; it is printed once.
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        /// read, write or admin (each includes the ones before it);
        /// repeatable.
        #[arg(long = "scope", value_enum, required = true)]
        scopes: Vec<ScopeArg>,
        /// Lifetime in seconds (default: until revoked).
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    /// List the tokens (without secrets).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (`fleetd token list`).
        id: String,
    },
    /// Revoke the admin token and write a new one to `admin.token`.
    ResetAdmin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    Read,
    Write,
    Admin,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Read => Scope::Read,
            ScopeArg::Write => Scope::Write,
            ScopeArg::Admin => Scope::Admin,
        }
    }
}

/// Opens the store the flags name and the access service over it.
async fn open(args: &StoreArgs) -> anyhow::Result<(Access, PathBuf)> {
    let mut config = FileConfig::load_layers(args.config.as_deref(), std::env::vars())?;
    if let Some(data) = &args.data {
        config.store.data.clone_from(data);
    }
    if let Some(key) = &args.store_key {
        config.store.key_file.clone_from(key);
    }
    let backend = config.store.validate()?;
    let store = fleetd_store::open(&backend).await.with_context(|| {
        format!(
            "cannot open the store (is fleetd still running on {}?)",
            config.store.data.display()
        )
    })?;
    let access = Access::open(store, AccessSettings::default())
        .await
        .context("cannot read the API tokens")?;
    Ok((access, config.store.data))
}

/// Runs `fleetd credentials …`.
pub async fn credentials(args: CredentialsArgs) -> anyhow::Result<()> {
    let (access, _) = open(&args.store).await?;
    match args.action {
        CredentialsAction::Issue {
            mut ids,
            file,
            user,
            format,
        } => {
            if let Some(file) = &file {
                ids.extend(read_ids(file)?);
            }
            if ids.is_empty() {
                bail!("no ids: name them or give --file");
            }
            let principals = ids
                .iter()
                .map(|id| principal(id, user))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let issued = access.issue_credentials(&principals).await?;
            print_issued(&issued, format)?;
            eprintln!(
                "fleetd: {} credential(s) issued; the secrets are shown only now",
                issued.len()
            );
        }
        CredentialsAction::Revoke { id, user } => {
            if !access.revoke_credential(&principal(&id, user)?).await? {
                bail!("{id} has no credential");
            }
            eprintln!("fleetd: credential of {id} revoked");
        }
    }
    Ok(())
}

/// Runs `fleetd token …`.
pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (access, data_dir) = open(&args.store).await?;
    match args.action {
        TokenAction::Create {
            name,
            scopes,
            expires_in_s,
        } => {
            let scopes: Vec<Scope> = scopes.into_iter().map(Scope::from).collect();
            let issued = access
                .create_token(&name, &scopes, expires_in_s.map(Duration::from_secs))
                .await?;
            eprintln!(
                "fleetd: token {} created; it is shown only now",
                issued.record.id
            );
            println!("{}", issued.token);
        }
        TokenAction::List => {
            // Never the hash: a listing is not a secret.
            let tokens: Vec<serde_json::Value> = access
                .tokens()
                .into_iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.id,
                        "name": t.name,
                        "scopes": t.scopes,
                        "created_ms": t.created_ms,
                        "expires_ms": t.expires_ms,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&tokens)?);
        }
        TokenAction::Revoke { id } => {
            if !access.revoke_token(&id).await? {
                bail!("no token {id}");
            }
            eprintln!("fleetd: token {id} revoked");
        }
        TokenAction::ResetAdmin => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let admin = fleetd_auth::reset_admin_token(&access, &data_dir).await?;
            eprintln!(
                "fleetd: new admin token written to {}",
                admin.path.display()
            );
        }
    }
    Ok(())
}

fn principal(id: &str, user: bool) -> anyhow::Result<Principal> {
    Ok(if user {
        Principal::user(id).with_context(|| format!("{id:?} is not a valid user name"))?
    } else {
        Principal::Device(DeviceId::parse(id).with_context(|| format!("{id:?}"))?)
    })
}

/// Ids from a CSV or JSON file (by extension; content starting with `[`
/// is JSON too).
fn read_ids(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('[');
    if is_json {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Id(String),
            Device { device_id: String },
            User { user: String },
        }
        let entries: Vec<Entry> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a JSON list of ids or of {{\"device_id\": …}}",
                path.display()
            )
        })?;
        return Ok(entries
            .into_iter()
            .map(|e| match e {
                Entry::Id(id) | Entry::Device { device_id: id } | Entry::User { user: id } => id,
            })
            .collect());
    }
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches('"');
        if n == 0 && matches!(first, "device_id" | "id" | "user") {
            continue;
        }
        ids.push(first.to_owned());
    }
    Ok(ids)
}

fn print_issued(issued: &[IssuedCredential], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(issued)?),
        Format::Csv => {
            println!("device_id,username,password");
            for c in issued {
                println!("{},{},{}", c.device_id, c.username, c.password);
            }
        }
    }
    Ok(())
}

/// Issues credentials for `ids` (the demo fleet's devices) and returns
/// them as the simulator's per-device logins.
pub async fn provision_demo(
    access: &Access,
    ids: impl Iterator<Item = String>,
) -> anyhow::Result<Arc<std::collections::HashMap<String, String>>> {
    let principals = ids
        .map(|id| Ok(Principal::Device(DeviceId::parse(&id)?)))
        .collect::<Result<Vec<_>, fleetd_schemas::InvalidId>>()?;
    let issued = access.issue_credentials(&principals).await?;
    Ok(Arc::new(
        issued
            .into_iter()
            .map(|c| (c.username, c.password))
            .collect(),
    ))
}
