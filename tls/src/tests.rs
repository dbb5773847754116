use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use super::*;

fn files(dir: &Path, client_ca: bool) -> TlsFiles {
    TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: client_ca.then(|| dir.join("ca.pem")),
    }
}

fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
    };
    TlsConnector::from(Arc::new(config))
}

/// Handshakes a client against `acceptor` over an in-memory pipe; returns
/// the server's view (the device certificate) or the server's error.
async fn connect(
    acceptor: &tokio_rustls::TlsAcceptor,
    connector: TlsConnector,
) -> Result<(Option<DeviceCertificate>, String), HandshakeError> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("localhost").expect("name");
    // Both ends at once, and the client's end kept open until the server
    // is done (a TLS 1.3 server writes its session tickets last).
    let (_client, server) = tokio::join!(
        connector.connect(name, client),
        handshake(acceptor, server, Duration::from_secs(5), "test")
    );
    server.map(|s| {
        let (_, conn) = s.get_ref();
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        (DeviceCertificate::of(conn), alpn)
    })
}

#[tokio::test]
async fn device_certificates_name_the_device_and_other_cas_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let made = dev::make(dir.path(), &[], &["truck-1".into()], 30).expect("certs");
    let foreign = dev::make(other.path(), &[], &["truck-1".into()], 30).expect("certs");
    let tls = ServerTls::load(files(dir.path(), true)).expect("load");
    assert!(tls.device_certificates());

    let (_, cert, key) = &made.devices[0];
    let (device, _) = connect(&tls.mqtt_acceptor(), connector(&made.ca, Some((cert, key))))
        .await
        .expect("device handshake");
    assert_eq!(
        device.expect("a certificate").common_name.as_deref(),
        Some("truck-1")
    );

    // Without a certificate: still a TLS session (a password login follows).
    let (device, _) = connect(&tls.mqtt_acceptor(), connector(&made.ca, None))
        .await
        .expect("no certificate");
    assert_eq!(device, None);

    let (_, cert, key) = &foreign.devices[0];
    let err = connect(&tls.mqtt_acceptor(), connector(&made.ca, Some((cert, key))))
        .await
        .expect_err("another CA's device");
    assert!(matches!(err, HandshakeError::Failed(_)), "{err}");

    // HTTPS never asks for a certificate and speaks HTTP/1.1.
    let (device, alpn) = connect(&tls.http_acceptor(), connector(&made.ca, None))
        .await
        .expect("https");
    assert_eq!((device, alpn.as_str()), (None, ""));
}

#[tokio::test]
async fn a_reload_takes_new_files_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    dev::make(dir.path(), &[], &[], 30).expect("certs");
    let tls = ServerTls::load(files(dir.path(), false)).expect("load");
    let first = tls.certificate();
    assert!(!first.serial.is_empty());

    let again = dev::make(dir.path(), &[], &[], 30).expect("renew");
    assert!(!again.ca_created, "the CA is kept");
    let second = tls.reload().expect("reload");
    assert_ne!(second.serial, first.serial);
    assert_eq!(tls.certificate(), second);
    connect(&tls.http_acceptor(), connector(&again.ca, None))
        .await
        .expect("the renewed certificate verifies with the same CA");

    std::fs::write(dir.path().join("server.key"), "not a key").expect("write");
    let err = tls.reload().expect_err("bad key").to_string();
    assert!(err.contains("server.key"), "{err}");
    assert_eq!(tls.certificate(), second, "the old certificate stays");
}

#[test]
fn bad_files_at_start_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ServerTls::load(files(dir.path(), false))
        .expect_err("missing")
        .to_string();
    assert!(err.contains("server.pem"), "{err}");

    dev::make(dir.path(), &[], &[], 30).expect("certs");
    let other = tempfile::tempdir().expect("tempdir");
    dev::make(other.path(), &[], &[], 30).expect("certs");
    let mismatched = TlsFiles {
        key: other.path().join("server.key"),
        ..files(dir.path(), false)
    };
    let err = ServerTls::load(mismatched)
        .expect_err("key of another cert")
        .to_string();
    assert!(err.contains("server.key"), "{err}");

    std::fs::write(dir.path().join("ca.pem"), "garbage").expect("write");
    let err = ServerTls::load(files(dir.path(), true))
        .expect_err("bad CA")
        .to_string();
    assert!(err.contains("ca.pem"), "{err}");

    // An expired certificate.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).expect("self-signed");
    let (pem, key_file) = (dir.path().join("old.pem"), dir.path().join("old.key"));
    std::fs::write(&pem, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let err = ServerTls::load(TlsFiles {
        cert: pem,
        key: key_file,
        client_ca: None,
    })
    .expect_err("expired")
    .to_string();
    assert!(err.contains("old.pem") && err.contains("expired"), "{err}");
}
