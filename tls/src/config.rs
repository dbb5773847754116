//! `[tls]` of fleetd.toml: the TLS listeners and their certificate files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fleetd_schemas::InvalidSetting;
use serde::Deserialize;

use crate::TlsFiles;

/// Port of `--mqtts` when the address has none (MQTT over TLS, IANA).
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Port of `--https` when the address has none.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// Port of `--osmands` when the address has none (the plain OsmAnd port,
/// Traccar's 5055, plus one).
pub const DEFAULT_OSMANDS_PORT: u16 = 5056;

/// `[tls]`: the TLS listeners, the certificate files, and which plain
/// listeners stay open.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // fleetd.toml documents every key.
pub struct TlsConfig {
    pub mqtts: String,
    pub https: String,
    pub osmands: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub plain_mqtt: bool,
    pub plain_http: bool,
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            mqtts: String::new(),
            https: String::new(),
            osmands: String::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            plain_mqtt: true,
            plain_http: true,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Validated `[tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// The files, when a TLS listener is on.
    pub files: Option<TlsFiles>,
    /// MQTT over TLS listen address.
    pub mqtts: Option<SocketAddr>,
    /// HTTPS listen address.
    pub https: Option<SocketAddr>,
    /// OsmAnd protocol over TLS listen address.
    pub osmands: Option<SocketAddr>,
    /// Whether the plain MQTT listener is open.
    pub plain_mqtt: bool,
    /// Whether the plain HTTP listener is open.
    pub plain_http: bool,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// `host:port`, or a bare IP with `default_port`.
fn listen_addr(what: &str, s: &str, default_port: u16) -> Result<SocketAddr, InvalidSetting> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(InvalidSetting(format!(
        "{what}: {s:?} is not an address like 0.0.0.0:{default_port}"
    )))
}

fn path(p: &std::path::Path) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then(|| p.to_path_buf())
}

impl TlsConfig {
    /// Validates the section: a TLS listener needs a certificate and a key,
    /// certificate files need a TLS listener, and closing a plain listener
    /// needs its TLS twin.
    pub fn validate(&self) -> Result<TlsSettings, InvalidSetting> {
        let mqtts = (!self.mqtts.is_empty())
            .then(|| listen_addr("tls.mqtts (--mqtts)", &self.mqtts, DEFAULT_MQTTS_PORT))
            .transpose()?;
        let https = (!self.https.is_empty())
            .then(|| listen_addr("tls.https (--https)", &self.https, DEFAULT_HTTPS_PORT))
            .transpose()?;
        let osmands = (!self.osmands.is_empty())
            .then(|| {
                listen_addr(
                    "tls.osmands (--osmands)",
                    &self.osmands,
                    DEFAULT_OSMANDS_PORT,
                )
            })
            .transpose()?;
        let (cert, key, client_ca) = (path(&self.cert), path(&self.key), path(&self.client_ca));
        let listening = mqtts.is_some() || https.is_some() || osmands.is_some();
        let files = match (cert, key) {
            (Some(cert), Some(key)) if listening => Some(TlsFiles {
                cert,
                key,
                client_ca: client_ca.clone(),
            }),
            (Some(_), Some(_)) => {
                return Err(InvalidSetting(
                    "tls.cert and tls.key (--tls-cert, --tls-key) are set but no TLS listener \
                     is: add --mqtts ADDR, --https ADDR and/or --osmands ADDR"
                        .into(),
                ));
            }
            (None, None) if !listening => None,
            _ => {
                return Err(InvalidSetting(
                    "TLS listeners need both tls.cert and tls.key (--tls-cert FILE --tls-key FILE)"
                        .into(),
                ));
            }
        };
        if client_ca.is_some() && mqtts.is_none() {
            return Err(InvalidSetting(
                "tls.client_ca (--tls-client-ca) verifies device certificates on MQTT over TLS: \
                 add --mqtts ADDR"
                    .into(),
            ));
        }
        if !self.plain_mqtt && mqtts.is_none() {
            return Err(InvalidSetting(
                "--no-plain-mqtt (tls.plain_mqtt = false) without --mqtts leaves no MQTT listener"
                    .into(),
            ));
        }
        if !self.plain_http && https.is_none() {
            return Err(InvalidSetting(
                "--no-plain-http (tls.plain_http = false) without --https leaves no HTTP listener"
                    .into(),
            ));
        }
        if !(100..=120_000).contains(&self.handshake_timeout_ms) {
            return Err(InvalidSetting(format!(
                "tls.handshake_timeout_ms must be in [100, 120000], got {}",
                self.handshake_timeout_ms
            )));
        }
        Ok(TlsSettings {
            files,
            mqtts,
            https,
            osmands,
            plain_mqtt: self.plain_mqtt,
            plain_http: self.plain_http,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_files_go_together() {
        let off = TlsConfig::default().validate().expect("off");
        assert_eq!(off.files, None);
        assert!(off.plain_mqtt && off.plain_http);

        let mut c = TlsConfig {
            mqtts: "127.0.0.1".into(),
            https: "0.0.0.0:9443".into(),
            ..TlsConfig::default()
        };
        let err = c.validate().expect_err("no files").0;
        assert!(err.contains("--tls-cert"), "{err}");
        c.cert = "c.pem".into();
        c.key = "k.pem".into();
        let s = c.validate().expect("valid");
        assert_eq!(s.mqtts, Some(SocketAddr::from(([127, 0, 0, 1], 8883))));
        assert_eq!(s.https, Some(SocketAddr::from(([0, 0, 0, 0], 9443))));

        c.plain_http = false;
        c.https.clear();
        let err = c.validate().expect_err("no http at all").0;
        assert!(err.contains("--no-plain-http"), "{err}");

        let c = TlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            ..TlsConfig::default()
        };
        assert!(
            c.validate()
                .expect_err("files, no listener")
                .0
                .contains("--mqtts")
        );
        let c = TlsConfig {
            https: "127.0.0.1:1".into(),
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: "ca.pem".into(),
            ..TlsConfig::default()
        };
        assert!(
            c.validate()
                .expect_err("client CA, no mqtts")
                .0
                .contains("--mqtts")
        );
        let c = TlsConfig {
            mqtts: "nope".into(),
            ..TlsConfig::default()
        };
        assert!(c.validate().expect_err("bad addr").0.contains("tls.mqtts"));
    }
}
