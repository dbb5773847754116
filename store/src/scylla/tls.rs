//! TLS to ScyllaDB (client-to-node encryption): a rustls client
//! configuration built from PEM files.
//!
//! Only the CAs of [`ScyllaTls::ca_file`] are trusted, never the system's
//! store: a cluster's node certificates are normally signed by its own CA,
//! and trusting every public CA would let any certificate for the right
//! name impersonate a node.
//!
//! The driver names each node by the IP address it dials (nodes are
//! discovered by address), so by default a node's certificate must list
//! that address among its subject alternative names. Clusters whose
//! certificates carry one DNS name instead set
//! [`ScyllaTls::server_name`]: the chain is then verified as usual and
//! checked against that name in place of the address.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::StoreError;

/// How fleetd encrypts and authenticates its connections to ScyllaDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaTls {
    /// PEM file with the CA certificate(s) that sign the nodes'
    /// certificates; the only ones trusted.
    pub ca_file: PathBuf,
    /// A client certificate for clusters that require one
    /// (`require_client_auth: true` in scylla.yaml).
    pub client_cert: Option<ClientCertificate>,
    /// The name every node's certificate must carry; `None`: the node's IP
    /// address, as the driver dials it.
    pub server_name: Option<String>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl ScyllaTls {
    /// Checks what can be checked without reading the files.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.ca_file.as_os_str().is_empty() {
            return Err(StoreError::Config(
                "scylla TLS needs a CA file (PEM) to verify the nodes".into(),
            ));
        }
        if let Some(name) = &self.server_name {
            server_name(name)?;
        }
        Ok(())
    }

    /// Reads the PEM files and builds the client configuration. Blocking
    /// (file reads): call it off the async runtime.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, StoreError> {
        self.validate()?;
        let provider = provider();
        let mut roots = RootCertStore::empty();
        let (added, _unparsable) =
            roots.add_parsable_certificates(read_certs(&self.ca_file, "CA")?);
        if added == 0 {
            return Err(StoreError::Config(format!(
                "scylla TLS CA file {}: no usable CA certificate",
                self.ca_file.display()
            )));
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|err| StoreError::Config(format!("scylla TLS CA: {err}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match &self.server_name {
            Some(name) => Arc::new(FixedServerName {
                name: server_name(name)?,
                inner: webpki,
            }),
            None => webpki,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| StoreError::Config(format!("scylla TLS: {err}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let chain = read_certs(&client.cert_file, "client certificate")?;
                if chain.is_empty() {
                    return Err(StoreError::Config(format!(
                        "scylla TLS client certificate {}: no certificate in the file",
                        client.cert_file.display()
                    )));
                }
                let key = PrivateKeyDer::from_pem_file(&client.key_file).map_err(|err| {
                    StoreError::Config(format!(
                        "scylla TLS client key {}: {err}",
                        client.key_file.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|err| {
                    StoreError::Config(format!(
                        "scylla TLS client certificate {} and key {}: {err}",
                        client.cert_file.display(),
                        client.key_file.display()
                    ))
                })?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The crypto provider, chosen explicitly: rustls' process-wide default is
/// ambiguous when more than one provider is compiled in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate of a PEM file (other PEM sections are skipped).
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let fail = |err: &dyn fmt::Display| {
        StoreError::Config(format!("scylla TLS {what} file {}: {err}", path.display()))
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|err| fail(&err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fail(&err))
}

fn server_name(name: &str) -> Result<ServerName<'static>, StoreError> {
    ServerName::try_from(name.to_owned())
        .map_err(|err| StoreError::Config(format!("scylla TLS server name {name:?}: {err}")))
}

/// The standard WebPKI verification, against a configured name instead of
/// the address the driver dialled. Nothing else is relaxed.
#[derive(Debug)]
struct FixedServerName {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: &str) -> ScyllaTls {
        ScyllaTls {
            ca_file: PathBuf::from(ca),
            client_cert: None,
            server_name: None,
        }
    }

    #[test]
    fn settings_are_checked_before_any_file_is_read() {
        tls("ca.pem").validate().expect("valid");
        let err = tls("").validate().expect_err("no CA file");
        assert!(err.to_string().contains("CA file"), "{err}");
        let named = ScyllaTls {
            server_name: Some("scylla.internal".into()),
            ..tls("ca.pem")
        };
        named.validate().expect("a DNS name");
        let bad = ScyllaTls {
            server_name: Some("not a name".into()),
            ..tls("ca.pem")
        };
        let err = bad.validate().expect_err("spaces");
        assert!(err.to_string().contains("not a name"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = tls("/nonexistent/fleetd-ca.pem")
            .client_config()
            .expect_err("no such file");
        assert!(matches!(err, StoreError::Config(_)), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/fleetd-ca.pem"),
            "{err}"
        );
    }
}
