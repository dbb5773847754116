//! `fleetd store-key` and `fleetd rekey`: the key of encryption at rest and
//! its rotation (see README, "Running fleetd on a network").

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fleetd_store::StoreKey;

/// `fleetd store-key`.
#[derive(Debug, Args)]
pub struct StoreKeyArgs {
    #[command(subcommand)]
    action: StoreKeyAction,
}

#[derive(Debug, Subcommand)]
enum StoreKeyAction {
    /// Write a new random 256-bit key to FILE (mode 0600; an existing file
    /// is never replaced).
    New {
        /// The key file to create.
        file: PathBuf,
    },
}

/// `fleetd rekey`: copies a stopped server's embedded store into a new
/// directory with its values sealed under another key.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// The data directory to read [default: ./fleetd-data].
    #[arg(long, env = "FLEETD_DATA", default_value = "./fleetd-data")]
    pub data: PathBuf,
    /// The key the store is encrypted with now (none: it is in clear).
    #[arg(long)]
    pub from_key: Option<PathBuf>,
    /// The new data directory (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// The key to encrypt the copy with (none: the copy is in clear).
    #[arg(long)]
    pub to_key: Option<PathBuf>,
}

/// Runs `fleetd store-key …`.
pub fn store_key(args: StoreKeyArgs) -> anyhow::Result<()> {
    match args.action {
        StoreKeyAction::New { file } => {
            StoreKey::create_file(&file)?;
            eprintln!(
                "fleetd: wrote a new store key to {}; keep a copy somewhere safe: \
                 without it the store cannot be read",
                file.display()
            );
            Ok(())
        }
    }
}

/// Runs `fleetd rekey`.
pub async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    let from_key = args.from_key.as_deref().map(StoreKey::load).transpose()?;
    let to_key = args.to_key.as_deref().map(StoreKey::load).transpose()?;
    let (from, to) = (args.data.clone(), args.out.clone());
    let report = tokio::task::spawn_blocking(move || {
        let report = fleetd_store::rekey(&from, from_key.as_ref(), &to, to_key.as_ref())?;
        // Deliveries still queued (a receiver down) are sealed too: carry
        // them over under the new key.
        let queue = from.join("webhooks");
        let queued = if queue.is_dir() {
            let sealer =
                |k: Option<&StoreKey>| k.map(|k| std::sync::Arc::new(fleetd_store::Sealer::new(k)));
            fleetd_webhooks::rekey_queue(
                &queue,
                sealer(from_key.as_ref()),
                &to.join("webhooks"),
                sealer(to_key.as_ref()),
            )
            .map_err(|e| {
                anyhow::anyhow!("cannot copy the webhook queue in {}: {e}", queue.display())
            })?
        } else {
            0
        };
        anyhow::Ok((report, queued))
    })
    .await
    .context("rekey task")?
    .with_context(|| {
        format!(
            "cannot copy the store in {} (is fleetd still running on it?)",
            args.data.display()
        )
    })?;
    // The admin token lives beside the store; the copy is a whole data
    // directory only with it.
    let admin = args.data.join(fleetd_auth::ADMIN_TOKEN_FILE);
    if admin.exists() {
        let target = args.out.join(fleetd_auth::ADMIN_TOKEN_FILE);
        std::fs::copy(&admin, &target)
            .with_context(|| format!("cannot copy {} to {}", admin.display(), target.display()))?;
    }
    let (report, queued) = report;
    eprintln!(
        "fleetd: copied {} rows and {queued} queued webhook deliveries into {} ({}); start fleetd on it, then delete {}",
        report.rows,
        args.out.display(),
        if report.sealed {
            "encrypted"
        } else {
            "in clear"
        },
        args.data.display()
    );
    Ok(())
}
