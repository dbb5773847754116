//! Encryption in transit and at rest against the real binary: MQTT over TLS
//! with mosquitto_pub, HTTPS with curl and headless Chromium, certificate
//! reload on SIGHUP (checked by serial with openssl), device certificates,
//! and the encrypted embedded store. Certificates are made at run time with
//! `fleetd cert dev`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::map::{Browser, Cdp, MARKERS};
use crate::util::{Fleetd, free_port, now_ms, parse_metric};

fn fleetd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetd"))
}

/// `fleetd cert dev --out dir --device …`: a CA (kept if `dir` has one), a
/// server certificate, device certificates.
pub(crate) fn dev_certs(dir: &Path, devices: &[&str]) {
    let mut command = fleetd();
    command.args(["cert", "dev", "--out"]).arg(dir);
    for d in devices {
        command.args(["--device", d]);
    }
    let out = command.output().expect("run fleetd cert dev");
    assert!(
        out.status.success(),
        "cert dev: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The flags of the TLS listeners on fresh ports, with device certificates
/// from `certs`' CA.
struct TlsPorts {
    mqtts: u16,
    https: u16,
    args: Vec<String>,
}

fn tls_args(certs: &Path, client_ca: bool) -> TlsPorts {
    let (mqtts, https) = (free_port(), free_port());
    let mut args = vec![
        "--mqtts".to_owned(),
        format!("127.0.0.1:{mqtts}"),
        "--https".to_owned(),
        format!("127.0.0.1:{https}"),
        "--tls-cert".to_owned(),
        certs.join("server.pem").display().to_string(),
        "--tls-key".to_owned(),
        certs.join("server.key").display().to_string(),
    ];
    if client_ca {
        args.push("--tls-client-ca".to_owned());
        args.push(certs.join("ca.pem").display().to_string());
    }
    TlsPorts { mqtts, https, args }
}

/// `curl --cacert ca` (status, body).
fn curl(ca: &Path, url: &str, token: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command
        .arg(url)
        .output()
        .expect("curl is not installed: run scripts/test, which installs it");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

enum Login<'a> {
    Password(&'a str, &'a str),
    Certificate(&'a Path, &'a Path),
}

/// `mosquitto_pub --cafile ca` once over TLS.
fn mosquitto_pub_tls(
    port: u16,
    ca: &Path,
    login: &Login<'_>,
    topic: &str,
    qos: u8,
    message: &str,
) -> Output {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(ca)
        .args(["-q", &qos.to_string(), "-t", topic, "-m", message]);
    match login {
        Login::Password(user, password) => {
            command.args(["-u", user, "-P", password]);
        }
        Login::Certificate(cert, key) => {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    command.output().expect(
        "mosquitto_pub is not installed: run scripts/test, which installs mosquitto-clients",
    )
}

fn position(lat: f64, lon: f64) -> String {
    json!({"ts_ms": now_ms(), "lat": lat, "lon": lon}).to_string()
}

/// The serial of the certificate a new TLS connection to `port` is served.
fn served_serial(port: u16, ca: &Path) -> String {
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is not installed: run scripts/test, which installs it");
    let mut chain = String::new();
    s_client
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut chain)
        .expect("s_client output");
    let _ = s_client.wait();
    serial_of(chain.as_bytes())
}

/// The serial of the first certificate in PEM `text`, as openssl prints it.
fn serial_of(text: &[u8]) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(text)
        .expect("pipe");
    let out = x509.wait_with_output().expect("x509");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

fn signal(server: &Fleetd, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn wait_latest(server: &Fleetd, device: &str) -> Option<Value> {
    server
        .wait_for(Duration::from_secs(10), || async {
            let (status, body) = server.get(&format!("/v1/vehicles/{device}")).await;
            (status == 200).then_some(body)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_https_reload_and_device_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    dev_certs(&certs, &["tls-a", "tls-b"]);
    let ca = certs.join("ca.pem");
    let ports = tls_args(&certs, true);
    let args: Vec<&str> = ports.args.iter().map(String::as_str).collect();
    let server = Fleetd::start(&dir.path().join("data"), &args).await;
    let token = server.admin_token.clone().expect("auth is on");

    // A password login over TLS stores a position; curl reads it over HTTPS.
    let login = Login::Password("fleetd-tests", &token);
    let out = mosquitto_pub_tls(
        ports.mqtts,
        &ca,
        &login,
        "fleet/tls-1/pos",
        1,
        &position(60.25, 24.5),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let https = format!("https://127.0.0.1:{}", ports.https);
    let url = format!("{https}/v1/vehicles/tls-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = curl(&ca, &url, Some(&token));
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let vehicle: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(vehicle["lat"], 60.25);
    let (status, _) = curl(&ca, &url, None);
    assert_eq!(status, 401, "HTTPS asks for a token like HTTP");

    // Plain MQTT on the TLS port: no CONNACK, the connection is closed.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", ports.mqtts)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // CONNECT, MQTT 3.1.1, clean session, client id "x".
    tcp.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 1, b'x',
    ])
    .expect("write");
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => assert_ne!(buf[0], 0x20, "a CONNACK over plain TCP: {:?}", &buf[..n]),
    }
    let failed = server
        .wait_for(Duration::from_secs(5), || async {
            let text = server.get_text("/metrics").await;
            let n = parse_metric(
                &text,
                "fleetd_tls_handshakes_total{listener=\"mqtt\",result=\"failed\"}",
            );
            (n >= 1.0).then_some(n)
        })
        .await;
    assert!(failed.is_some(), "the failed handshake is counted");

    // Device certificates: A publishes as itself, not as B.
    let (cert_a, key_a) = (
        certs.join("device-tls-a.pem"),
        certs.join("device-tls-a.key"),
    );
    let as_a = Login::Certificate(&cert_a, &key_a);
    let out = mosquitto_pub_tls(
        ports.mqtts,
        &ca,
        &as_a,
        "fleet/tls-a/pos",
        1,
        &position(61.0, 25.0),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_latest(&server, "tls-a").await.is_some(),
        "A's own position"
    );
    let denied = "fleetd_rejected_total{reason=\"not_authorized\"}";
    let before = server.metric(denied).await;
    // QoS 0: a refused publish gets no PUBACK, so mosquitto_pub would wait.
    let out = mosquitto_pub_tls(
        ports.mqtts,
        &ca,
        &as_a,
        "fleet/tls-b/pos",
        0,
        &position(61.5, 25.5),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted = server
        .wait_for(Duration::from_secs(5), || async {
            (server.metric(denied).await > before).then_some(())
        })
        .await;
    assert!(
        counted.is_some(),
        "A publishing as B is refused and counted"
    );
    let (_, rejections) = server.get("/v1/rejections?limit=5").await;
    assert!(
        rejections["rejections"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x["detail"] == "device tls-a may not publish to this topic")),
        "{rejections}"
    );
    let (status, _) = server.get("/v1/vehicles/tls-b").await;
    assert_eq!(status, 404, "nothing stored for B");

    // A device certificate of another CA fails the handshake.
    let other = dir.path().join("other");
    dev_certs(&other, &["tls-a"]);
    let (cert_x, key_x) = (
        other.join("device-tls-a.pem"),
        other.join("device-tls-a.key"),
    );
    let out = mosquitto_pub_tls(
        ports.mqtts,
        &ca,
        &Login::Certificate(&cert_x, &key_x),
        "fleet/tls-a/pos",
        1,
        &position(62.0, 26.0),
    );
    assert!(!out.status.success(), "another CA's certificate is refused");
    let refused = server
        .wait_for(Duration::from_secs(5), || async {
            let text = server.get_text("/metrics").await;
            let n = parse_metric(
                &text,
                "fleetd_tls_handshakes_total{listener=\"mqtt\",result=\"bad_certificate\"}",
            );
            (n >= 1.0).then_some(n)
        })
        .await;
    assert!(refused.is_some(), "refused at the handshake, counted");

    // Reload: a session opened before keeps publishing; new connections
    // get the new certificate; a bad file keeps the old one.
    let first = served_serial(ports.https, &ca);
    assert_eq!(
        first,
        serial_of(&std::fs::read(certs.join("server.pem")).expect("pem"))
    );
    let mut session = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports.mqtts.to_string(),
            "--cafile",
        ])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert_a)
        .arg("--key")
        .arg(&key_a)
        .args(["-q", "1", "-t", "fleet/tls-a/pos", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub -l");
    let mut lines = session.stdin.take().expect("stdin");
    // Close to the last fix: a jump of hundreds of kilometres in seconds
    // would be dropped by the speed filter.
    writeln!(lines, "{}", position(61.0004, 25.0)).expect("line");
    let lat_is = |lat: f64| {
        let server = &server;
        async move {
            server
                .wait_for(Duration::from_secs(10), || async {
                    let (_, v) = server.get("/v1/vehicles/tls-a").await;
                    (v["lat"] == lat).then_some(())
                })
                .await
        }
    };
    assert!(
        lat_is(61.0004).await.is_some(),
        "the long session publishes"
    );

    dev_certs(&certs, &[]);
    let renewed = serial_of(&std::fs::read(certs.join("server.pem")).expect("pem"));
    assert_ne!(renewed, first);
    signal(&server, "HUP");
    let reloaded = server
        .wait_for(Duration::from_secs(10), || async {
            let serial = served_serial(ports.https, &ca);
            (serial == renewed).then_some(serial)
        })
        .await;
    assert!(
        reloaded.is_some(),
        "HTTPS serves the new certificate after SIGHUP"
    );
    assert_eq!(
        served_serial(ports.mqtts, &ca),
        renewed,
        "and MQTT over TLS"
    );
    writeln!(lines, "{}", position(61.0008, 25.0)).expect("line");
    assert!(
        lat_is(61.0008).await.is_some(),
        "the session opened before the reload still publishes"
    );

    std::fs::write(certs.join("server.pem"), "not a certificate").expect("write");
    signal(&server, "HUP");
    let logged = server
        .wait_for(Duration::from_secs(10), || async {
            server
                .log()
                .contains("cannot reload the TLS certificate")
                .then_some(())
        })
        .await;
    assert!(
        logged.is_some(),
        "a bad file at reload is logged:\n{}",
        server.log()
    );
    assert!(server.log().contains("server.pem"), "naming the file");
    assert_eq!(
        served_serial(ports.https, &ca),
        renewed,
        "the old certificate stays"
    );
    drop(lines);
    let _ = session.wait();
}

/// A fleetd started with both plain listeners off; readiness is asked over
/// HTTPS with curl. Killed on drop.
struct TlsOnly {
    child: Child,
    log: PathBuf,
}

impl Drop for TlsOnly {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listeners_can_be_closed_and_bad_certificates_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    dev_certs(&certs, &[]);
    let ca = certs.join("ca.pem");
    let data = dir.path().join("data");

    // A certificate file that does not load: the start fails naming it.
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let out = fleetd()
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--mqtt", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--https", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-cert")
        .arg(&bad)
        .arg("--tls-key")
        .arg(certs.join("server.key"))
        .output()
        .expect("run fleetd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.pem"), "{stderr}");
    assert!(!data.join("version").exists(), "the store was not opened");

    let (mqtt, http) = (free_port(), free_port());
    let ports = tls_args(&certs, false);
    let log = dir.path().join("fleetd.log");
    let child = fleetd()
        .args(["serve", "--data"])
        .arg(&data)
        .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(&ports.args)
        .args(["--no-plain-mqtt", "--no-plain-http"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn fleetd");
    let server = TlsOnly { child, log };
    let https = format!("https://127.0.0.1:{}", ports.https);
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&ca, &format!("{https}/readyz"), None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready over HTTPS:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for port in [mqtt, http] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "plain port {port} is closed"
        );
    }
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
    let login = Login::Password("fleetd-tests", token.trim());
    let out = mosquitto_pub_tls(
        ports.mqtts,
        &ca,
        &login,
        "fleet/tls-only/pos",
        1,
        &position(59.5, 18.0),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(
        &ca,
        &format!("{https}/v1/vehicles/tls-only"),
        Some(token.trim()),
    )
    .0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "the position over TLS-only listeners"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_page_over_https_shows_the_fleet_live() {
    let vehicles = 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    dev_certs(&certs, &[]);
    let ports = tls_args(&certs, false);
    let mut args: Vec<&str> = ports.args.iter().map(String::as_str).collect();
    let count = vehicles.to_string();
    args.extend(["--demo", &count, "--window-ms", "250"]);
    let server = Fleetd::start(&dir.path().join("data"), &args).await;
    let url = server.printed_map_url();
    let https = format!("https://127.0.0.1:{}/", ports.https);
    assert!(
        url.starts_with(&format!("{https}#token=fltd_")),
        "the printed URL is HTTPS: {url}"
    );

    // The test CA is not in Chromium's store: certificate errors are
    // ignored for this browser only.
    let browser = Browser::launch_with(&["--ignore-certificate-errors"]);
    let mut cdp = Cdp::new_page(&browser).await;
    cdp.call("Page.navigate", json!({"url": url})).await;
    let shown = cdp
        .wait_for(MARKERS, Duration::from_secs(45), |v| {
            v.as_u64() == Some(vehicles)
        })
        .await;
    assert_eq!(shown.as_u64(), Some(vehicles));
    let status = cdp
        .wait_for(
            "document.getElementById('status').textContent",
            Duration::from_secs(15),
            |v| v.as_str().is_some_and(|s| s.starts_with("live")),
        )
        .await;
    assert!(
        status.as_str().is_some_and(|s| s.starts_with("live")),
        "{status}"
    );
    assert_eq!(cdp.eval("location.protocol").await, "https:");
    let handshakes = server
        .metric("fleetd_tls_handshakes_total{listener=\"https\",result=\"ok\"}")
        .await;
    assert!(handshakes >= 1.0, "the page came over HTTPS");
}

/// Every file under `dir` (path, bytes).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encrypted_store_keeps_no_coordinate_or_secret_in_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, key, wrong) = (
        dir.path().join("data"),
        dir.path().join("store.key"),
        dir.path().join("wrong.key"),
    );
    for k in [&key, &wrong] {
        let out = fleetd()
            .args(["store-key", "new"])
            .arg(k)
            .output()
            .expect("store-key");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key_arg = key.display().to_string();
    let (lat, lon): (f64, f64) = (48.137_154_3, 11.576_124_9);
    // A long window keeps the position in the processor's batch: when
    // fleetd is killed it is only in the journal, which must be sealed too.
    let server = Fleetd::start(&data, &["--store-key", &key_arg, "--window-ms", "30000"]).await;
    // A fence around the spot and a webhook nobody answers: the enter alert
    // waits in the webhook queue, which must be sealed too.
    let fence = json!({"center": [lon, lat], "radius_m": 200.0});
    let r = server
        .client
        .put(format!("{}/v1/geofences/vault", server.http))
        .json(&fence)
        .send()
        .await
        .expect("fence");
    assert_eq!(r.status(), 201);
    let hook_secret = "whsec_c2VhbGVkLWF0LXJlc3Qtd2ViaG9vay1zZWNyZXQ=";
    let r = server
        .client
        .put(format!("{}/v1/webhooks/sink", server.http))
        .json(&json!({"url": format!("http://127.0.0.1:{}/", free_port()), "secret": hook_secret}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(r.status(), 201);
    let (status, issued) = {
        let r = server
            .client
            .post(format!("{}/v1/devices/vault-1/credentials", server.http))
            .send()
            .await
            .expect("issue");
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    };
    assert!(status == 200 || status == 201, "{status} {issued}");
    let secret = issued["password"].as_str().expect("password").to_owned();
    let login = (
        issued["username"].as_str().expect("username").to_owned(),
        secret.clone(),
    );
    let message = json!({"ts_ms": now_ms(), "lat": lat, "lon": lon}).to_string();
    crate::util::mosquitto_pub_as(
        server.mqtt_port,
        Some(&login),
        "fleet/vault-1/pos",
        message.as_bytes(),
    );
    let journaled = server
        .wait_for(Duration::from_secs(10), || async {
            let n = server.metric("fleetd_journal_positions_total").await;
            (n >= 1.0).then_some(n)
        })
        .await;
    assert!(journaled.is_some(), "log:\n{}", server.log());
    let mut server = server;
    server.crash();
    let journal: Vec<(PathBuf, Vec<u8>)> = files(&data.join("journal"));
    assert!(
        journal.iter().any(|(_, bytes)| bytes.len() > 8),
        "the journal holds the position: {:?}",
        journal.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (path, bytes) in &journal {
        assert!(
            bytes.starts_with(b"FLTDJRS1"),
            "{} is sealed",
            path.display()
        );
        for needle in [lat.to_le_bytes(), lon.to_le_bytes()] {
            assert!(
                !contains(bytes, &needle),
                "{} holds a coordinate in clear",
                path.display()
            );
        }
        assert!(
            !contains(bytes, b"vault-1"),
            "{} holds the device id in clear",
            path.display()
        );
    }
    // The restart opens the sealed journal and stores what it held.
    let server = Fleetd::start(&data, &["--store-key", &key_arg]).await;
    let stored = wait_latest(&server, "vault-1").await.expect("stored");
    assert_eq!(stored["lat"], lat);
    let queued = server
        .wait_for(Duration::from_secs(10), || async {
            let (_, hook) = server.get("/v1/webhooks/sink").await;
            (hook["pending"].as_u64().unwrap_or(0) + hook["dead_letters"].as_u64().unwrap_or(0)
                >= 1)
                .then_some(())
        })
        .await;
    assert!(
        queued.is_some(),
        "the enter alert is queued for the webhook"
    );
    let mut server = server;
    assert!(server.interrupt().success());

    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("latitude as f64", lat.to_le_bytes().to_vec()),
        ("longitude as f64", lon.to_le_bytes().to_vec()),
        ("latitude as text", lat.to_string().into_bytes()),
        ("the device secret", secret.clone().into_bytes()),
        ("the webhook secret", hook_secret.as_bytes().to_vec()),
        (
            "the webhook secret's key part",
            b"c2VhbGVkLWF0LXJlc3Qtd2ViaG9vay1zZWNyZXQ".to_vec(),
        ),
        (
            "the secret's hash",
            fleetd_auth::hash_secret(&secret).into_bytes(),
        ),
    ];
    let before = files(&data);
    assert!(
        before.len() > 3,
        "{:?}",
        before.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (path, bytes) in &before {
        for (what, needle) in &needles {
            assert!(
                !contains(bytes, needle),
                "{} holds {what} in clear",
                path.display()
            );
        }
    }

    // A wrong key, or none: a non-zero exit naming the problem, nothing
    // changed.
    for (flags, expect) in [
        (
            vec!["--store-key".to_owned(), wrong.display().to_string()],
            "not the key",
        ),
        (vec![], "is encrypted"),
    ] {
        let out = fleetd()
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--mqtt", &format!("127.0.0.1:{}", free_port())])
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .args(&flags)
            .output()
            .expect("run fleetd");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{stderr}");
        assert!(
            files(&data) == before,
            "a refused start changed the data directory"
        );
    }

    // The right key reads everything back, the secret still logs in.
    let server = Fleetd::start(&data, &["--store-key", &key_arg]).await;
    let (status, latest) = server.get("/v1/vehicles/vault-1").await;
    assert_eq!((status, latest["lat"].clone()), (200, json!(lat)));
    let (status, track) = server.get("/v1/vehicles/vault-1/track").await;
    assert_eq!(status, 200, "{track}");
    assert_eq!(track["items"].as_array().map(Vec::len), Some(1), "{track}");
    let again = json!({"ts_ms": now_ms(), "lat": lat + 0.001, "lon": lon}).to_string();
    crate::util::mosquitto_pub_as(
        server.mqtt_port,
        Some(&login),
        "fleet/vault-1/pos",
        again.as_bytes(),
    );
    let mut server = server;
    assert!(server.interrupt().success());

    // Key rotation: `fleetd rekey` copies the store under a new key; the
    // copy opens with the new key only, and reads the same data.
    let (rotated, new_key) = (dir.path().join("rotated"), dir.path().join("new.key"));
    let made = fleetd()
        .args(["store-key", "new"])
        .arg(&new_key)
        .output()
        .expect("store-key");
    assert!(made.status.success());
    let out = fleetd()
        .args(["rekey", "--data"])
        .arg(&data)
        .arg("--from-key")
        .arg(&key)
        .arg("--out")
        .arg(&rotated)
        .arg("--to-key")
        .arg(&new_key)
        .output()
        .expect("rekey");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, bytes) in files(&rotated) {
        for (what, needle) in &needles {
            assert!(
                !contains(&bytes, needle),
                "{} holds {what} in clear",
                path.display()
            );
        }
    }
    let out = fleetd()
        .args(["serve", "--data"])
        .arg(&rotated)
        .args(["--mqtt", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args(["--store-key", &key_arg])
        .output()
        .expect("run fleetd");
    assert!(
        !out.status.success(),
        "the old key no longer opens the copy"
    );
    let new_arg = new_key.display().to_string();
    let server = Fleetd::start(&rotated, &["--store-key", &new_arg]).await;
    let (status, track) = server.get("/v1/vehicles/vault-1/track").await;
    assert_eq!(status, 200, "{track}");
    assert_eq!(track["items"].as_array().map(Vec::len), Some(2), "{track}");
    let (status, _) = server.get("/v1/vehicles/vault-1").await;
    assert_eq!(status, 200);
    // The queued delivery came along, under the new key.
    let (_, hook) = server.get("/v1/webhooks/sink").await;
    let queued = hook["pending"].as_u64().unwrap_or(0) + hook["dead_letters"].as_u64().unwrap_or(0);
    assert!(queued >= 1, "{hook}");
}
