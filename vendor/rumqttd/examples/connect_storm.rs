//! Connection-storm benchmark: how fast does the broker hand out CONNACKs?
//!
//! Loopback only, bounded in count and time. The broker runs in this process;
//! the clients run in a child process (the same binary, re-executed with
//! `--client`), so that each side stays under the per-process file limit.
//!
//! ```text
//! cargo run --release --example connect_storm -- [--count N] [--mode burst|sequential]
//!     [--listener config|acceptor] [--auth-hook] [--timeout-s S]
//! ```
//!
//! * `burst`: N clients connect at once; reports the time until the last
//!   CONNACK and how many connections failed.
//! * `sequential`: one client after the other (CONNECT, CONNACK, DISCONNECT);
//!   reports connects per second.
//! * `--listener config` uses rumqttd's own `[v4]` listener; `acceptor` (only
//!   with the patched crate) feeds streams accepted here to
//!   `Broker::acceptor(..).serve(..)`; `--auth-hook` adds a cheap
//!   `ConnectionHooks::on_connect` that checks the password.
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use rumqttd::hooks::BoxFuture;
use rumqttd::{
    Broker, Config, ConnectInfo, ConnectRefusal, ConnectionHooks, ConnectionMeta,
    ConnectionSettings, IncomingPublish, PublishVerdict, RouterConfig, ServerSettings,
    SessionHooks,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    count: usize,
    mode: String,
    listener: String,
    auth_hook: bool,
    timeout: Duration,
    client: Option<SocketAddr>,
}

fn parse_args() -> Args {
    let mut args = Args {
        count: 3000,
        mode: "burst".into(),
        listener: "config".into(),
        auth_hook: false,
        timeout: Duration::from_secs(60),
        client: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => args.count = it.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--mode" => args.mode = it.next().expect("--mode burst|sequential"),
            "--listener" => args.listener = it.next().expect("--listener config|acceptor"),
            "--auth-hook" => args.auth_hook = true,
            "--timeout-s" => {
                args.timeout = Duration::from_secs(
                    it.next().and_then(|v| v.parse().ok()).expect("--timeout-s S"),
                )
            }
            "--client" => args.client = it.next().and_then(|v| v.parse().ok()),
            other => panic!("unknown argument {other}"),
        }
    }
    args.count = args.count.min(15_000);
    args.timeout = args.timeout.min(Duration::from_secs(300));
    args
}

fn connection_settings() -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 20 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

fn config(listen: Option<SocketAddr>, count: usize) -> Config {
    let router = RouterConfig {
        max_connections: count + 100,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024 * 1024,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let v4 = listen.map(|listen| {
        HashMap::from([(
            "storm".to_owned(),
            ServerSettings {
                name: "storm".to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connection_settings(),
            },
        )])
    });
    Config {
        id: 0,
        router,
        v4,
        ..Default::default()
    }
}

fn free_port() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let password = b"secret";
    let username = b"user";
    let remaining = 10 + 2 + client_id.len() + 2 + username.len() + 2 + password.len();
    let mut p = vec![0x10];
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    // "MQTT", level 4, flags: username + password + clean session, keep-alive 60 s.
    p.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60]);
    for field in [client_id.as_bytes(), username, password] {
        p.extend_from_slice(&(field.len() as u16).to_be_bytes());
        p.extend_from_slice(field);
    }
    p
}

async fn one_connect(addr: SocketAddr, id: usize) -> std::io::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&connect_packet(&format!("storm-{id}"))).await?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await?;
    if connack != [0x20, 2, 0, 0] {
        return Err(std::io::Error::new(std::io::ErrorKind::Other, format!("bad CONNACK {connack:?}")));
    }
    Ok(s)
}

fn run_client(args: &Args, addr: SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let start = Instant::now();
        match args.mode.as_str() {
            "sequential" => {
                let mut errors = 0;
                for i in 0..args.count {
                    if start.elapsed() > args.timeout {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(10), one_connect(addr, i)).await {
                        Ok(Ok(mut s)) => {
                            let _ = s.write_all(&[0xe0, 0]).await;
                        }
                        _ => errors += 1,
                    }
                }
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "sequential: {} connects in {:.2} s = {:.0}/s, {} errors",
                    args.count,
                    secs,
                    args.count as f64 / secs,
                    errors
                );
            }
            _ => {
                let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
                let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
                for i in 0..args.count {
                    let mut hold = hold_rx.clone();
                    let done_tx = done_tx.clone();
                    let timeout = args.timeout;
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let r = tokio::time::timeout(timeout, one_connect(addr, i)).await;
                        let outcome = match r {
                            Ok(Ok(stream)) => Ok((t.elapsed(), stream)),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("timed out".to_owned()),
                        };
                        let (report, stream) = match outcome {
                            Ok((latency, stream)) => (Ok(latency), Some(stream)),
                            Err(e) => (Err(e), None),
                        };
                        let _ = done_tx.send(report);
                        // Keep the connection open until every client is through.
                        let _ = hold.wait_for(|v| *v).await;
                        drop(stream);
                    });
                }
                drop(done_tx);
                let mut latencies = Vec::with_capacity(args.count);
                let mut errors = 0usize;
                let mut first_error = None;
                for _ in 0..args.count {
                    match done_rx.recv().await {
                        Some(Ok(latency)) => latencies.push(latency),
                        Some(Err(e)) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        None => break,
                    }
                }
                let _ = hold_tx.send(true);
                latencies.sort();
                let pct = |p: f64| {
                    let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
                    latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
                };
                println!(
                    "burst: {} clients, {} CONNACKed, {} errors, last CONNACK after {:.2} s \
                     (p50 {:.0} ms, p99 {:.0} ms){}",
                    args.count,
                    latencies.len(),
                    errors,
                    latencies.last().copied().unwrap_or_default().as_secs_f64(),
                    pct(0.5),
                    pct(0.99),
                    first_error.map(|e| format!(", first error: {e}")).unwrap_or_default()
                );
                // Let the held connections close before the process exits.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}

fn main() {
    let args = parse_args();
    if let Some(addr) = args.client {
        run_client(&args, addr);
        return;
    }

    let addr = free_port();
    let use_config_listener = args.listener == "config";
    let mut broker = Broker::new(config(use_config_listener.then_some(addr), args.count));
    if !use_config_listener {
        start_acceptor(&broker, addr, args.auth_hook);
    }
    std::thread::spawn(move || {
        let _ = broker.start();
    });
    // Wait until the listener is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--client",
            &addr.to_string(),
            "--count",
            &args.count.to_string(),
            "--mode",
            &args.mode,
            "--timeout-s",
            &args.timeout.as_secs().to_string(),
        ])
        .env("TOKIO_WORKER_THREADS", "2")
        .stdout(Stdio::inherit())
        .spawn()
        .expect("spawn client process");
    let status = child.wait().expect("client process");
    // Peak resident memory of the broker process (Linux only).
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("broker process peak RSS: {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
    std::process::exit(status.code().unwrap_or(1));
}

/// A cheap authentication hook: accepts user "user" with password "secret".
struct PasswordCheck;

struct NoopSession;

impl SessionHooks for NoopSession {
    fn on_publish(&mut self, _publish: &IncomingPublish) -> BoxFuture<'static, PublishVerdict> {
        Box::pin(std::future::ready(PublishVerdict::Forward))
    }
}

impl ConnectionHooks for PasswordCheck {
    fn on_connect<'a>(
        &'a self,
        info: &'a ConnectInfo,
    ) -> BoxFuture<'a, Result<Box<dyn SessionHooks>, ConnectRefusal>> {
        let ok = info.username.as_deref() == Some("user")
            && info.password.as_deref() == Some("secret");
        Box::pin(async move {
            if ok {
                Ok(Box::new(NoopSession) as Box<dyn SessionHooks>)
            } else {
                Err(ConnectRefusal::BadUserNamePassword)
            }
        })
    }
}

/// Accepts on `addr` in this process (a 2-worker runtime on its own
/// thread) and hands every stream to `Broker::acceptor`.
fn start_acceptor(broker: &Broker, addr: SocketAddr, auth_hook: bool) {
    let mut acceptor = broker.acceptor(connection_settings());
    if auth_hook {
        acceptor = acceptor.with_hooks(Arc::new(PasswordCheck));
    }
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind");
            let listener = socket.listen(8192).expect("listen");
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.serve(stream, ConnectionMeta::new(Some(peer))).await;
                });
            }
        });
    });
}
