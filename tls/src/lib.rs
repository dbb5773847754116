//! TLS for fleetd's listeners: MQTT over TLS and HTTPS.
//!
//! * [`TlsConfig`] is `[tls]` of fleetd.toml (and the `--mqtts`, `--https`,
//!   `--tls-*`, `--no-plain-*` flags); [`TlsConfig::validate`] makes it
//!   [`TlsSettings`].
//! * [`ServerTls`] holds the server certificate, its key and the device CA
//!   as loaded rustls configurations, one for MQTT (device certificates
//!   asked for when a client CA is set) and one for HTTPS (never asks: a
//!   browser would prompt for a certificate). [`ServerTls::reload`] swaps
//!   them; connections already open keep the configuration they started
//!   with. [`reload_on_sighup`] calls it on SIGHUP.
//! * [`handshake`] runs the server side of a handshake within a deadline
//!   and counts how it ended; [`DeviceCertificate::of`] reads the verified
//!   client certificate's subject.
//!
//! Protocols are TLS 1.2 and 1.3 only, with rustls' default cipher suites
//! (AEAD suites with forward secrecy), over the aws-lc-rs provider.

mod config;
pub mod dev;
mod load;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

pub use config::{
    DEFAULT_HTTPS_PORT, DEFAULT_MQTTS_PORT, DEFAULT_OSMANDS_PORT, TlsConfig, TlsSettings,
};
pub use load::{CertificateInfo, DeviceCertificate};

/// Why certificates could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is not what it should be (no PEM certificate, no key, a
    /// certificate outside its validity, a key that does not match).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The certificate files of the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) of device certificates; `None`: MQTT clients
    /// log in with a user name and password only.
    pub client_ca: Option<PathBuf>,
}

struct Loaded {
    mqtt: TlsAcceptor,
    http: TlsAcceptor,
    info: CertificateInfo,
}

/// The loaded server TLS configurations; shared by every listener.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files; any problem (unreadable, not PEM, expired or not
    /// yet valid, a key that does not match the certificate) is an error
    /// naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = load::load(&files)?;
        record(&loaded.info);
        tracing::info!(
            cert = %files.cert.display(),
            serial = %loaded.info.serial,
            not_after = %loaded.info.not_after,
            device_certificates = files.client_ca.is_some(),
            "TLS certificate loaded"
        );
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    /// Reads the files again; new connections use what was read, open ones
    /// keep theirs. On an error the certificate in use stays, and the
    /// error is returned (and counted in `fleetd_tls_reloads_total`).
    pub fn reload(&self) -> Result<CertificateInfo, TlsError> {
        match load::load(&self.files) {
            Ok(loaded) => {
                let info = loaded.info.clone();
                record(&info);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
                metrics::counter!("fleetd_tls_reloads_total", "result" => "ok").increment(1);
                Ok(info)
            }
            Err(e) => {
                metrics::counter!("fleetd_tls_reloads_total", "result" => "failed").increment(1);
                Err(e)
            }
        }
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The acceptor of MQTT connections (asks for a device certificate when
    /// a client CA is configured; one is optional).
    pub fn mqtt_acceptor(&self) -> TlsAcceptor {
        self.current().mqtt.clone()
    }

    /// The acceptor of HTTPS connections (ALPN `http/1.1`).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        self.current().http.clone()
    }

    /// The certificate in use.
    pub fn certificate(&self) -> CertificateInfo {
        self.current().info.clone()
    }

    /// Whether device certificates are verified (a client CA is set).
    pub fn device_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn record(info: &CertificateInfo) {
    metrics::gauge!("fleetd_tls_certificate_not_after_seconds").set(info.not_after_unix as f64);
}

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The handshake failed (not TLS, a refused certificate, a reset).
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

/// Runs the server side of a TLS handshake on `stream`, at most `timeout`
/// long, counting the outcome in `fleetd_tls_handshakes_total{listener,
/// result}`.
pub async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
    timeout: Duration,
    listener: &'static str,
) -> Result<TlsStream<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let result = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::Timeout),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(HandshakeError::Timeout) => "timeout",
        Err(HandshakeError::Failed(e)) if is_certificate_error(e) => "bad_certificate",
        Err(HandshakeError::Failed(_)) => "failed",
    };
    metrics::counter!("fleetd_tls_handshakes_total", "listener" => listener, "result" => outcome)
        .increment(1);
    result
}

fn is_certificate_error(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// Reloads `tls` on every SIGHUP until `cancel`; a failed reload is logged
/// and the certificate in use stays.
pub async fn reload_on_sighup(tls: Arc<ServerTls>, cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: certificates will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            match tls.reload() {
                Ok(info) => tracing::info!(
                    serial = %info.serial,
                    not_after = %info.not_after,
                    "SIGHUP: TLS certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: cannot reload the TLS certificate; the one in use stays"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        cancel.cancelled().await;
    }
}
