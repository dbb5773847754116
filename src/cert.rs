//! `fleetd cert dev`: test certificates for trying TLS on one machine.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `fleetd cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    action: CertAction,
}

#[derive(Debug, Subcommand)]
enum CertAction {
    /// Write a development CA (kept when DIR has one), a server certificate
    /// for localhost, 127.0.0.1, ::1 and --host names, and a certificate per
    /// --device (its CN is the device id). For local trials and tests only:
    /// the CA's key lies next to it.
    Dev {
        /// Where to write the PEM files.
        #[arg(long, default_value = "./fleetd-certs")]
        out: PathBuf,
        /// More names (DNS or IP) for the server certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// A device certificate for this device id (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Days the server and device certificates are valid.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

/// Runs `fleetd cert …`.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    match args.action {
        CertAction::Dev {
            out,
            hosts,
            devices,
            days,
        } => {
            let made = fleetd_tls::dev::make(&out, &hosts, &devices, days)?;
            let (cert, key) = &made.server;
            println!(
                "{} {}\nserver certificate: {}\nserver key: {}",
                if made.ca_created {
                    "CA (new):"
                } else {
                    "CA (kept):"
                },
                made.ca.display(),
                cert.display(),
                key.display()
            );
            for (device, cert, key) in &made.devices {
                println!("device {device}: {} {}", cert.display(), key.display());
            }
            println!(
                "serve with: fleetd serve --mqtts 0.0.0.0:8883 --https 0.0.0.0:8443 \
                 --tls-cert {} --tls-key {}{}",
                cert.display(),
                key.display(),
                if made.devices.is_empty() {
                    String::new()
                } else {
                    format!(" --tls-client-ca {}", made.ca.display())
                }
            );
            Ok(())
        }
    }
}
