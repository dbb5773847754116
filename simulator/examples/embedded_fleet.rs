//! Runs a simulated fleet against an embedded rumqttd broker and prints the
//! report: the quickest way to see the simulator work, and to time how long
//! a large fleet takes to connect.
//!
//! ```text
//! cargo run -p fleetd-simulator --release --example embedded_fleet -- [VEHICLES] [SECONDS] [RATE_HZ] [QOS]
//! ```
//!
//! Defaults: 1000 vehicles, 10 s, 1 Hz, QoS 1. `RUST_LOG=info` shows the
//! simulator's log lines.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use fleetd_simulator::{Qos, SimConfig, run};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio_util::sync::CancellationToken;

fn arg<T: std::str::FromStr>(index: usize, default: T) -> T {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// rumqttd on a free loopback port, on its own thread for the life of the
/// process (it has no stop API).
fn start_broker(max_connections: usize) -> SocketAddr {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let config = Config {
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 2,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([(
            "1".to_owned(),
            ServerSettings {
                name: "v4".to_owned(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: ConnectionSettings {
                    connection_timeout_ms: 10_000,
                    max_payload_size: 20 * 1024,
                    max_inflight_count: 100,
                    auth: None,
                    external_auth: None,
                    dynamic_filters: true,
                },
            },
        )])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("rumqttd".to_owned())
        .spawn(move || {
            if let Err(err) = broker.start() {
                eprintln!("broker stopped: {err}");
            }
        })
        .expect("spawn broker thread");
    while TcpStream::connect(listen).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    listen
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let vehicles: usize = arg(1, 1000);
    let seconds: f64 = arg(2, 10.0);
    let rate_hz: f64 = arg(3, 1.0);
    let qos: Qos = arg(4, Qos::AtLeastOnce);

    let broker = start_broker(vehicles + 10);
    let config = SimConfig {
        broker: broker.to_string(),
        vehicles,
        rate_hz,
        qos,
        duration: Some(Duration::from_secs_f64(seconds)),
        show_progress: true,
        ..SimConfig::default()
    };
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    match run(config, cancel).await {
        Ok(report) => println!("{}", report.summary()),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
