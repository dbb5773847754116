//! Resource limits that hold: idle, slow and numerous connections on both
//! listeners, with authentication on. Idle sockets are closed by the
//! timeouts and cannot starve a normal client; a reconnect storm of 10,000
//! devices is accepted at once; none of it floods the log.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{Fleetd, now_ms};

/// Raises this process's soft descriptor limit to the hard one; `None` (the
/// caller skips, saying why) when even that is below `needed`.
fn raise_own_fd_limit(needed: u64) -> Option<u64> {
    let soft = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    if soft < needed {
        eprintln!(
            "SKIPPED: this test needs {needed} file descriptors, the hard limit allows {soft} \
             (raise it with `ulimit -Hn` / LimitNOFILE)"
        );
        return None;
    }
    Some(soft)
}

/// A config file with the given `[api]` and `[ingest]` lines.
fn config(dir: &Path, api: &str, ingest: &str) -> String {
    let path = dir.join("limits.toml");
    std::fs::write(&path, format!("[api]\n{api}\n[ingest]\n{ingest}\n")).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Opens `n` TCP connections to `port`, a few hundred at a time.
async fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = (n - all.len()).min(500);
        let opened =
            futures::future::join_all((0..batch).map(|_| TcpStream::connect(("127.0.0.1", port))))
                .await;
        for stream in opened {
            all.push(stream.expect("open an idle connection"));
        }
    }
    all
}

/// Waits until the server closes each stream (EOF or reset); returns how
/// many it closed within `within`, and whether any of them got bytes.
async fn closed_by_server(streams: Vec<TcpStream>, within: Duration) -> (usize, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let waits = streams.into_iter().map(|mut stream| async move {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => (true, false),
            Ok(Ok(_)) => (true, true),
            Err(_) => (false, false),
        }
    });
    let results = futures::future::join_all(waits).await;
    let closed = results.iter().filter(|(closed, _)| *closed).count();
    (closed, results.iter().any(|(_, got)| *got))
}

/// A raw MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) with a login.
fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id, username, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// How a client of the storm fared.
enum Storm {
    /// CONNACK 0 after this long from the start; the connection is held.
    Accepted(Duration, TcpStream),
    Failed(String),
}

/// Connects, sends CONNECT, waits for CONNACK 0.
async fn storm_client(port: u16, id: String, login: (String, String), start: Instant) -> Storm {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(&connect_packet(&id, &login.0, &login.1))
            .await
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .await
            .map_err(|e| format!("read CONNACK: {e}"))?;
        if connack != [0x20, 0x02, 0x00, 0x00] {
            return Err(format!("CONNACK {connack:02x?}"));
        }
        Ok(stream)
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(stream)) => Storm::Accepted(start.elapsed(), stream),
        Ok(Err(e)) => Storm::Failed(e),
        Err(_) => Storm::Failed("no CONNACK within 30 s".into()),
    }
}

/// An authenticated MQTT client connects and has a QoS 1 publish
/// acknowledged; returns how long that took.
async fn mqtt_round_trip(fleetd: &Fleetd, id: &str) -> Duration {
    let started = Instant::now();
    let login = fleetd.mqtt_login().expect("authentication is on");
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", fleetd.mqtt_port);
    options.set_credentials(login.0, login.1);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let payload = format!(r#"{{"ts_ms":{},"lat":52.5,"lon":13.4}}"#, now_ms());
    client
        .publish(
            format!("fleet/{id}/pos"),
            rumqttc::QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("queue publish");
    let acked = async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("MQTT client {id} failed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("PUBACK within 10 s");
    let took = started.elapsed();
    let _ = client.disconnect().await;
    took
}

/// fleetd's own log lines (its stdout is the map URL only).
fn log_lines(fleetd: &Fleetd) -> Vec<String> {
    fleetd.log().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_on_both_ports_are_closed_and_starve_no_one() {
    const IDLE: usize = 5_000;
    // Both floods held at once, plus the normal clients and slack.
    if raise_own_fd_limit(2 * IDLE as u64 + 500).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout_ms = 4_000;
    let config = config(
        dir.path(),
        &format!("header_read_timeout_ms = {timeout_ms}\nidle_timeout_ms = {timeout_ms}"),
        &format!("connect_timeout_ms = {timeout_ms}"),
    );
    // fleetd's default log filter, as users run it.
    let fleetd = Fleetd::start_logging(&dir.path().join("d"), &["--config", &config], None).await;
    let http_port: u16 = fleetd
        .http
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let opening = Instant::now();
    let http_idle = open_idle(http_port, IDLE).await;
    let mqtt_idle = open_idle(fleetd.mqtt_port, IDLE).await;
    let opened_in = opening.elapsed();
    eprintln!("opened {IDLE} + {IDLE} idle connections in {opened_in:?}");
    assert!(
        opened_in < Duration::from_millis(timeout_ms * 3 / 4),
        "opening took {opened_in:?}, too close to the {timeout_ms} ms timeouts to test them"
    );

    // A normal client of each listener, while the idle ones are held.
    let started = Instant::now();
    let (status, vehicles) = fleetd.get("/v1/vehicles?bbox=13,52,14,53").await;
    let http_took = started.elapsed();
    assert_eq!(status, 200, "{vehicles}");
    let mqtt_took = mqtt_round_trip(&fleetd, "limits-normal").await;
    eprintln!("normal clients: HTTP {http_took:?}, MQTT connect+publish+PUBACK {mqtt_took:?}");
    assert!(
        http_took < Duration::from_secs(1),
        "HTTP took {http_took:?}"
    );
    assert!(
        mqtt_took < Duration::from_secs(1),
        "MQTT took {mqtt_took:?}"
    );
    // On a connection of its own: the pooled one may be at its idle
    // timeout by now (the floods took up to 3 s), and a request racing the
    // server's close is reset.
    let fresh = crate::util::authorized_client(fleetd.admin_token.as_deref().expect("token"));
    let metrics = fresh
        .get(format!("{}/metrics", fleetd.http))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let held_http = crate::util::parse_metric(&metrics, "fleetd_http_connections");
    let held_mqtt = crate::util::parse_metric(&metrics, "fleetd_mqtt_connections");
    eprintln!("held while serving: {held_http} HTTP, {held_mqtt} MQTT connections");
    assert!(
        held_http >= IDLE as f64 && held_mqtt >= IDLE as f64,
        "the idle connections must still be open while the normal clients are served: \
         {held_http} HTTP, {held_mqtt} MQTT"
    );

    // The timeouts close every idle connection, without a byte sent.
    let within = Duration::from_millis(timeout_ms) + Duration::from_secs(6);
    let (http, mqtt) = tokio::join!(
        closed_by_server(http_idle, within),
        closed_by_server(mqtt_idle, within)
    );
    let closed_after = opening.elapsed();
    eprintln!(
        "closed by fleetd within {closed_after:?}: {} HTTP, {} MQTT",
        http.0, mqtt.0
    );
    assert_eq!(
        http,
        (IDLE, false),
        "HTTP idle connections closed, no bytes"
    );
    assert_eq!(
        mqtt,
        (IDLE, false),
        "MQTT idle connections closed, no bytes"
    );
    assert!(
        closed_after >= Duration::from_millis(timeout_ms),
        "closed before the timeout: {closed_after:?}"
    );
    let timed_out = fleetd
        .metric("fleetd_http_connections_timed_out_total{reason=\"header_read\"}")
        .await;
    assert!(timed_out >= IDLE as f64, "{timed_out}");

    // And fleetd is still fine.
    assert_eq!(fleetd.get("/readyz").await.0, 200);
    let lines = log_lines(&fleetd);
    eprintln!("log: {} lines", lines.len());
    assert!(
        lines.len() < 100,
        "{} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let faults: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .filter(|l| !l.contains("authentication is OFF"))
        .collect();
    assert!(
        faults.is_empty(),
        "WARN/ERROR lines for idle clients: {faults:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mqtt_clients_connect_at_once() {
    const CLIENTS: usize = 10_000;
    if raise_own_fd_limit(CLIENTS as u64 + 500).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // fleetd inherits this process's raised limit; HTTP needs few
    // connections here, so MQTT gets the rest of the budget.
    let config = config(dir.path(), "max_connections = 100", "");
    let fleetd = Fleetd::start_logging(&dir.path().join("d"), &["--config", &config], None).await;
    let login = fleetd.mqtt_login().expect("authentication is on");

    let start = Instant::now();
    let clients = (0..CLIENTS).map(|i| {
        tokio::spawn(storm_client(
            fleetd.mqtt_port,
            format!("storm-{i:05}"),
            login.clone(),
            start,
        ))
    });
    let outcomes = futures::future::join_all(clients).await;
    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    let mut held = Vec::new();
    for outcome in outcomes {
        match outcome.expect("client task") {
            Storm::Accepted(at, stream) => {
                accepted.push(at);
                held.push(stream);
            }
            Storm::Failed(e) => failures.push(e),
        }
    }
    accepted.sort();
    let last = accepted.last().copied().unwrap_or_default();
    let p50 = accepted
        .get(accepted.len() / 2)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "{} of {CLIENTS} CONNACKed, {} failed; p50 {p50:?}, last {last:?}",
        accepted.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} clients failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        last < Duration::from_secs(10),
        "last CONNACK after {last:?}"
    );
    let sessions = fleetd.metric("fleetd_mqtt_sessions").await;
    assert!(sessions >= CLIENTS as f64, "{sessions} sessions");

    // The storm leaves the log as it was: no line per client.
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleetd.get("/readyz").await.0, 200);
    let lines = log_lines(&fleetd);
    eprintln!("log: {} lines", lines.len());
    assert!(
        lines.len() < 100,
        "{} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_by_the_header_timeout() {
    const SLOW: usize = 2_000;
    if raise_own_fd_limit(SLOW as u64 + 500).is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let header_ms = 3_000;
    let config = config(
        dir.path(),
        &format!("header_read_timeout_ms = {header_ms}"),
        "",
    );
    let fleetd = Fleetd::start_logging(&dir.path().join("d"), &["--config", &config], None).await;
    let http_port: u16 = fleetd
        .http
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    // Each sends a request head one byte every 250 ms (a complete head
    // would take ~25 s) and records when fleetd closed the connection.
    let head = b"GET /v1/vehicles?bbox=13,52,14,53 HTTP/1.1\r\nHost: fleetd\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n";
    let start = Instant::now();
    let drips = (0..SLOW).map(|_| {
        tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", http_port))
                .await
                .expect("connect");
            let (mut reader, mut writer) = stream.into_split();
            let drip = async {
                for byte in head {
                    if writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                std::future::pending::<()>().await;
            };
            let mut buf = [0u8; 256];
            let closed = async {
                let got_bytes = matches!(reader.read(&mut buf).await, Ok(n) if n > 0);
                (start.elapsed(), got_bytes)
            };
            tokio::select! {
                _ = drip => unreachable!("the drip never ends by itself"),
                closed = closed => closed,
                _ = tokio::time::sleep(Duration::from_secs(30)) => (Duration::MAX, false),
            }
        })
    });
    let drips: Vec<_> = drips.collect();

    // Meanwhile a normal client is served.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let started = Instant::now();
    assert_eq!(fleetd.get("/v1/vehicles?bbox=13,52,14,53").await.0, 200);
    let normal = started.elapsed();

    let results = futures::future::join_all(drips).await;
    let mut closed_at: Vec<Duration> = Vec::new();
    let mut answered = 0;
    for result in results {
        let (at, got_bytes) = result.expect("drip task");
        answered += usize::from(got_bytes);
        closed_at.push(at);
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[SLOW - 1]);
    eprintln!(
        "normal request {normal:?} among {SLOW} slowloris clients; closed from {first:?} to {last:?}"
    );
    assert!(normal < Duration::from_secs(1), "{normal:?}");
    assert_eq!(answered, 0, "a slowloris client got bytes back");
    assert!(
        first >= Duration::from_millis(header_ms - 100),
        "closed before the header timeout: {first:?}"
    );
    assert!(
        last < Duration::from_millis(header_ms) + Duration::from_secs(6),
        "not closed by the header timeout: the last after {last:?}"
    );
    let timed_out = fleetd
        .metric("fleetd_http_connections_timed_out_total{reason=\"header_read\"}")
        .await;
    assert!(timed_out >= SLOW as f64, "{timed_out}");
    let lines = log_lines(&fleetd);
    assert!(lines.len() < 100, "{} log lines", lines.len());
}
