//! Test certificates for trying TLS locally (`fleetd cert dev`): a CA, a
//! server certificate for this machine and device certificates, made with
//! rcgen. Not for production: the CA key sits beside its certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What [`make`] wrote.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    /// The CA certificate: what clients trust (`--cafile`, `--cacert`) and
    /// what `--tls-client-ca` takes.
    pub ca: PathBuf,
    /// Whether the CA was made now (it is kept when it exists).
    pub ca_created: bool,
    /// Server certificate and key (`--tls-cert`, `--tls-key`).
    pub server: (PathBuf, PathBuf),
    /// Device certificates and keys, per device id.
    pub devices: Vec<(String, PathBuf, PathBuf)>,
}

/// Why test certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rcgen refused (an invalid name, an unreadable CA).
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), DevCertError> {
    let io = |source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io)
}

fn read(path: &Path) -> Result<String, DevCertError> {
    std::fs::read_to_string(path).map_err(|source| DevCertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A file name for a device id (`/` of OwnTracks ids becomes `_`).
fn file_stem(device: &str) -> String {
    device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes into `dir`: `ca.pem`/`ca.key` (kept if they exist, so running it
/// again renews the server certificate under the same CA), `server.pem`/
/// `server.key` for `localhost`, 127.0.0.1, ::1 and `hosts`, and
/// `device-{id}.pem`/`.key` for each device id (its CN). Certificates are
/// valid for `days` days.
pub fn make(
    dir: &Path,
    hosts: &[String],
    devices: &[String],
    days: u32,
) -> Result<DevCertificates, DevCertError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_created = !(ca_pem.exists() && ca_key_path.exists());
    let issuer = if ca_created {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "fleetd development CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Ten years: the CA outlives the certificates it renews.
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        write(&ca_pem, &cert.pem(), false)?;
        write(&ca_key_path, &key.serialize_pem(), true)?;
        Issuer::new(params, key)
    } else {
        let key = KeyPair::from_pem(&read(&ca_key_path)?)?;
        Issuer::from_ca_cert_pem(&read(&ca_pem)?, key)?
    };

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fleetd development server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let server = (dir.join("server.pem"), dir.join("server.key"));
    write(&server.0, &cert.pem(), false)?;
    write(&server.1, &key.serialize_pem(), true)?;

    let mut made = Vec::new();
    for device in devices {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let stem = format!("device-{}", file_stem(device));
        let (pem, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        write(&pem, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        made.push((device.clone(), pem, key_path));
    }
    Ok(DevCertificates {
        ca: ca_pem,
        ca_created,
        server,
        devices: made,
    })
}
