//! TLS to ScyllaDB without a server: a throwaway CA made at test time signs
//! a node certificate, and a TLS endpoint (rustls) with that certificate
//! stands in front of the fake node of `support/fake_scylla.rs`, relaying
//! the decrypted CQL to it. The real driver, configured as fleetd
//! configures it, must complete the handshake and verify the certificate
//! before any statement reaches the node.

#[path = "support/fake_scylla.rs"]
mod fake_scylla;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_scylla::{FakeScylla, KEYSPACE};
use fleetd_schemas::EnrichedPosition;
use fleetd_store::scylla::{ClientCertificate, ScyllaTls};
use fleetd_store::{ScyllaSettings, ScyllaStore, Store, StoreError, WriteBatch};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A certificate authority that exists for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Issued {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names` (IP addresses or DNS names).
    fn issue(&self, names: &[String], usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::new(names.to_vec()).expect("names");
        params
            .distinguished_name
            .push(DnType::CommonName, "fleetd test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A TLS endpoint in front of a fake node: terminates TLS and relays the
/// plain CQL stream. Records the outcome of every handshake.
struct TlsFront {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Result<(), String>>>>,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on `ip`:9042 with the `node` certificate; requires a client
    /// certificate signed by `client_ca` when given.
    async fn start(
        ip: IpAddr,
        node: &Issued,
        client_ca: Option<&Ca>,
        backend: SocketAddr,
    ) -> TlsFront {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.issuer.der().clone()).expect("client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = vec![CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).expect("key");
        let config = builder.with_single_cert(chain, key).expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let addr = SocketAddr::new(ip, 9042);
        let listener = TcpListener::bind(addr).await.expect("bind the TLS front");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&handshakes);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            seen.lock().expect("lock").push(Ok(()));
                            if let Ok(mut plain) = TcpStream::connect(backend).await {
                                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                            }
                        }
                        Err(err) => seen.lock().expect("lock").push(Err(err.to_string())),
                    }
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            task,
        }
    }

    fn handshakes(&self) -> Vec<Result<(), String>> {
        self.handshakes.lock().expect("lock").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

fn settings(front: &TlsFront, tls: ScyllaTls) -> ScyllaSettings {
    ScyllaSettings {
        contact_points: vec![front.addr.to_string()],
        keyspace: KEYSPACE.into(),
        tls: Some(tls),
        retry_backoff: Duration::from_millis(5),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..ScyllaSettings::default()
    }
}

fn trusting(ca_file: PathBuf) -> ScyllaTls {
    ScyllaTls {
        ca_file,
        client_cert: None,
        server_name: None,
    }
}

async fn connect(settings: ScyllaSettings) -> Result<ScyllaStore, StoreError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        ScyllaStore::connect(settings, false),
    )
    .await
    .expect("connect ends within 20 s")
}

fn position(device: &str, ts_ms: i64) -> EnrichedPosition {
    let mut p = fleetd_schemas::test_support::position(device, ts_ms, 60.1699, 24.9384);
    p.report.accuracy_m = Some(5.0);
    p
}

/// Writes one position and checks that its statements reached the node.
async fn writes_through(store: &ScyllaStore, fake: &FakeScylla, device: &str) {
    let before = fake.executed().len();
    let batch = WriteBatch {
        history: vec![position(device, 1_700_000_000_000)],
        ..WriteBatch::default()
    };
    store
        .write_batch(batch.into())
        .await
        .expect("batch written over TLS");
    let executed = fake.executed();
    let history: Vec<_> = executed[before..]
        .iter()
        .filter(|e| {
            e.text
                .starts_with(&format!("INSERT INTO {KEYSPACE}.positions "))
        })
        .collect();
    assert_eq!(history.len(), 1, "{executed:#?}");
    assert_eq!(history[0].text_of("device_id"), device);
    store.ready().await.expect("ready over TLS");
}

/// The connection error, with the driver's cause, for assertions.
fn refused(result: Result<ScyllaStore, StoreError>) -> String {
    match result {
        Ok(_) => panic!("connected although the TLS check should fail"),
        Err(err) => {
            assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("over TLS"), "{message}");
            message
        }
    }
}

#[tokio::test]
async fn connects_over_tls_and_writes_a_batch() {
    let fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fleetd test CA");
    let ip = scylla_proxy::get_exclusive_local_address();
    let node = ca.issue(&[ip.to_string()], ExtendedKeyUsagePurpose::ServerAuth);
    let front = TlsFront::start(ip, &node, None, fake.addr).await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());

    let store = connect(settings(&front, trusting(ca_file)))
        .await
        .expect("connects over TLS");
    writes_through(&store, &fake, "tls-truck-1").await;
    let handshakes = front.handshakes();
    assert!(
        !handshakes.is_empty(),
        "the driver went through the TLS front"
    );
    assert!(handshakes.iter().all(Result::is_ok), "{handshakes:?}");
    assert!(
        !fake.prepared_texts().is_empty(),
        "statements were prepared through TLS"
    );
}

#[tokio::test]
async fn a_node_signed_by_another_ca_is_refused() {
    let fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster_ca = Ca::new("cluster CA");
    let other_ca = Ca::new("some other CA");
    let ip = scylla_proxy::get_exclusive_local_address();
    let node = cluster_ca.issue(&[ip.to_string()], ExtendedKeyUsagePurpose::ServerAuth);
    let front = TlsFront::start(ip, &node, None, fake.addr).await;
    let ca_file = write(dir.path(), "other-ca.pem", &other_ca.pem());

    let message = refused(connect(settings(&front, trusting(ca_file))).await);
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(
        fake.prepared_texts().is_empty() && fake.executed().is_empty(),
        "nothing reached the node"
    );
}

#[tokio::test]
async fn the_node_certificate_must_name_the_node() {
    let fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fleetd test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let ip = scylla_proxy::get_exclusive_local_address();
    // A certificate for a DNS name only, not for the address fleetd dials.
    let node = ca.issue(
        &["scylla.fleet.test".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let front = TlsFront::start(ip, &node, None, fake.addr).await;

    let by_address = refused(connect(settings(&front, trusting(ca_file.clone()))).await);
    assert!(by_address.contains("not valid for name"), "{by_address}");
    let wrong_name = ScyllaTls {
        server_name: Some("other.fleet.test".into()),
        ..trusting(ca_file.clone())
    };
    let message = refused(connect(settings(&front, wrong_name)).await);
    assert!(message.contains("not valid for name"), "{message}");
    assert!(fake.executed().is_empty(), "nothing reached the node");

    let named = ScyllaTls {
        server_name: Some("scylla.fleet.test".into()),
        ..trusting(ca_file)
    };
    let store = connect(settings(&front, named))
        .await
        .expect("the configured name matches");
    writes_through(&store, &fake, "tls-named-1").await;
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_cluster_ca() {
    let fake = FakeScylla::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("cluster CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let ip = scylla_proxy::get_exclusive_local_address();
    let node = ca.issue(&[ip.to_string()], ExtendedKeyUsagePurpose::ServerAuth);
    let front = TlsFront::start(ip, &node, Some(&ca), fake.addr).await;
    let client = ca.issue(&["fleetd".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger =
        Ca::new("stranger CA").issue(&["fleetd".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let identity = |issued: &Issued, name: &str| ClientCertificate {
        cert_file: write(dir.path(), &format!("{name}.pem"), &issued.cert_pem),
        key_file: write(dir.path(), &format!("{name}.key"), &issued.key_pem),
    };

    let message = refused(connect(settings(&front, trusting(ca_file.clone()))).await);
    assert!(message.contains("CertificateRequired"), "{message}");
    let handshakes = front.handshakes();
    assert!(
        handshakes
            .iter()
            .any(|h| h.as_ref().is_err_and(|e| e.contains("no certificates"))),
        "the node saw no client certificate: {handshakes:?}"
    );

    let foreign = ScyllaTls {
        client_cert: Some(identity(&stranger, "stranger")),
        ..trusting(ca_file.clone())
    };
    let message = refused(connect(settings(&front, foreign)).await);
    assert!(message.contains("alert"), "{message}");
    assert!(fake.executed().is_empty(), "nothing reached the node");

    let mutual = ScyllaTls {
        client_cert: Some(identity(&client, "client")),
        ..trusting(ca_file)
    };
    let store = connect(settings(&front, mutual))
        .await
        .expect("connects with the client certificate");
    writes_through(&store, &fake, "tls-mutual-1").await;
}

#[tokio::test]
async fn unusable_tls_files_are_configuration_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("fleetd test CA");
    let client = ca.issue(&["fleetd".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let other = ca.issue(&["fleetd".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let key_only = write(dir.path(), "key-only.pem", &client.key_pem);
    let cert_file = write(dir.path(), "client.pem", &client.cert_pem);
    let other_key = write(dir.path(), "other.key", &other.key_pem);
    // Nothing listens: every case must fail before connecting.
    let nowhere = ScyllaSettings {
        contact_points: vec![format!(
            "{}:9042",
            scylla_proxy::get_exclusive_local_address()
        )],
        connect_timeout: Duration::from_secs(1),
        ..ScyllaSettings::default()
    };
    let cases = [
        (trusting(key_only.clone()), "no usable CA certificate"),
        (trusting(dir.path().join("missing.pem")), "missing.pem"),
        (
            ScyllaTls {
                client_cert: Some(ClientCertificate {
                    cert_file: cert_file.clone(),
                    key_file: dir.path().join("missing.key"),
                }),
                ..trusting(ca_file.clone())
            },
            "missing.key",
        ),
        (
            ScyllaTls {
                client_cert: Some(ClientCertificate {
                    cert_file: key_only,
                    key_file: other_key.clone(),
                }),
                ..trusting(ca_file.clone())
            },
            "no certificate",
        ),
        (
            ScyllaTls {
                client_cert: Some(ClientCertificate {
                    cert_file,
                    key_file: other_key,
                }),
                ..trusting(ca_file)
            },
            "client certificate",
        ),
    ];
    for (tls, expected) in cases {
        let settings = ScyllaSettings {
            tls: Some(tls.clone()),
            ..nowhere.clone()
        };
        match connect(settings).await {
            Ok(_) => panic!("connected with {tls:?}"),
            Err(err) => {
                assert!(matches!(err, StoreError::Config(_)), "{tls:?}: {err:?}");
                assert!(err.to_string().contains(expected), "{tls:?}: {err}");
            }
        }
    }
}
