//! Reading the PEM files into rustls configurations.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Loaded, TlsError, TlsFiles};

/// What the server certificate in use says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number, hex (as `openssl x509 -serial` prints it).
    pub serial: String,
    /// The subject, as text.
    pub subject: String,
    /// End of validity, RFC 2822 text.
    pub not_after: String,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
}

/// The subject of a verified device certificate: who an MQTT client over
/// TLS is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceCertificate {
    /// The subject's common name: the device id.
    pub common_name: Option<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names.
    pub uri_names: Vec<String>,
}

impl DeviceCertificate {
    /// The subject of the client certificate `conn` verified, if the
    /// client sent one.
    pub fn of(conn: &rustls::ServerConnection) -> Option<DeviceCertificate> {
        let leaf = conn.peer_certificates()?.first()?;
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut out = DeviceCertificate {
            common_name,
            ..DeviceCertificate::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => out.dns_names.push((*d).to_owned()),
                    GeneralName::URI(u) => out.uri_names.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        Some(out)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in it",
        ));
    }
    Ok(certs)
}

fn info(path: &Path, leaf: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| invalid(path, format!("the certificate does not parse: {e}")))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    let not_after = validity.not_after.to_rfc2822().unwrap_or_default();
    if now > validity.not_after {
        return Err(invalid(
            path,
            format!("the certificate expired on {not_after}"),
        ));
    }
    if now < validity.not_before {
        let from = validity.not_before.to_rfc2822().unwrap_or_default();
        return Err(invalid(
            path,
            format!("the certificate is not valid before {from}"),
        ));
    }
    Ok(CertificateInfo {
        serial: cert.raw_serial_as_string().replace(':', "").to_uppercase(),
        subject: cert.subject().to_string(),
        not_after,
        not_after_unix: validity.not_after.timestamp(),
    })
}

pub(crate) fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let chain = certificates(&files.cert)?;
    let info = info(&files.cert, &chain[0])?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| invalid(&files.key, format!("no PEM private key in it: {e}")))?;
    let provider = provider();
    let builder = || {
        ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| invalid(&files.cert, format!("TLS configuration: {e}")))
    };
    let mismatch = |e: rustls::Error| {
        invalid(
            &files.key,
            format!("unusable with {}: {e}", files.cert.display()),
        )
    };

    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];

    let mqtt = match &files.client_ca {
        None => builder()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(mismatch)?,
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(ca, format!("not a usable CA certificate: {e}")))?;
            }
            // Optional: devices without a certificate still log in with a
            // password; a certificate that is sent must verify.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| invalid(ca, format!("cannot verify clients with it: {e}")))?;
            builder()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(mismatch)?
        }
    };
    Ok(Loaded {
        mqtt: TlsAcceptor::from(Arc::new(mqtt)),
        http: TlsAcceptor::from(Arc::new(http)),
        info,
    })
}
