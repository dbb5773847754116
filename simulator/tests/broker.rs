//! The simulator against a real MQTT broker: an embedded rumqttd on a free
//! loopback port, with a separate subscriber checking that what the report
//! says was published is exactly what the broker delivered.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use fleetd_schemas::proto::Position;
use fleetd_simulator::{Qos, RoadMap, SimConfig, SimError, SimReport, haversine_m, run};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A port nothing listens on right now (bound, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Starts rumqttd on a free loopback port, on its own OS thread (it has no
/// stop API and blocks forever), and returns its address once it accepts.
fn start_broker() -> SocketAddr {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let router = RouterConfig {
        max_connections: 200,
        max_outgoing_packet_count: 200,
        // Small segments keep the broker's RAM to a few MiB.
        max_segment_size: 4 * 1024 * 1024,
        max_segment_count: 2,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let server = ServerSettings {
        name: "v4-test".to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 20 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), server)])),
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
    for _ in 0..100 {
        if TcpStream::connect(listen).is_ok() {
            return listen;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("broker did not start listening on {listen}");
}

/// A separate client subscribed to `fleet/+/pos`, forwarding every message.
async fn subscribe(broker: SocketAddr) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("fleet/+/pos", QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send((publish.topic, publish.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => panic!("subscriber connection failed: {err}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
        .await
        .expect("suback within 5 s")
        .expect("subscriber task alive");
    rx
}

/// Receives `expected` messages, then anything arriving within a short quiet
/// period after (so extra deliveries are seen too).
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    expected: u64,
) -> Vec<(String, Vec<u8>)> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (received.len() as u64) < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(message)) => received.push(message),
            _ => break,
        }
    }
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        received.push(message);
    }
    received
}

/// Checks that the subscriber saw exactly what `report` says was published:
/// same count, well-formed positions on the right topics, per-device `seq`
/// from 0 without gaps, strictly increasing time, no teleports, and the
/// last one received per device equal to the report's `last`.
fn check_received(report: &SimReport, received: &[(String, Vec<u8>)]) {
    assert_eq!(
        received.len() as u64,
        report.published,
        "{}",
        report.summary()
    );
    let mut by_device: BTreeMap<String, Vec<Position>> = BTreeMap::new();
    for (topic, payload) in received {
        let position = Position::decode(payload.as_slice()).expect("payload is a Position");
        let device_id = topic
            .strip_prefix("fleet/")
            .and_then(|rest| rest.strip_suffix("/pos"))
            .unwrap_or_else(|| panic!("unexpected topic {topic}"));
        assert_eq!(position.device_id, device_id);
        by_device
            .entry(device_id.to_owned())
            .or_default()
            .push(position);
    }
    for vehicle in &report.vehicles {
        let track = by_device.remove(&vehicle.device_id).unwrap_or_default();
        assert_eq!(
            track.len() as u64,
            vehicle.published,
            "{}",
            vehicle.device_id
        );
        for (i, position) in track.iter().enumerate() {
            assert_eq!(
                position.seq,
                Some(i as u64),
                "{}: seq gap",
                vehicle.device_id
            );
            assert!(position.accuracy_m.is_some() && position.battery_pct.is_some());
        }
        for pair in track.windows(2) {
            let dt_s = (pair[1].ts_ms - pair[0].ts_ms) as f64 / 1000.0;
            assert!(dt_s > 0.0, "{}: time not increasing", vehicle.device_id);
            let d = haversine_m(pair[0].lat, pair[0].lon, pair[1].lat, pair[1].lon);
            assert!(d / dt_s < 25.0, "{}: {d} m in {dt_s} s", vehicle.device_id);
        }
        assert_eq!(track.last(), vehicle.last.as_ref(), "{}", vehicle.device_id);
    }
    assert!(
        by_device.is_empty(),
        "messages from unknown devices: {:?}",
        by_device.keys()
    );
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_fleet_is_delivered_exactly_as_reported() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let config = SimConfig {
        broker: broker.to_string(),
        vehicles: 20,
        rate_hz: 2.0,
        duration: Some(Duration::from_secs(3)),
        qos: Qos::AtLeastOnce,
        seed: 7,
        connect_concurrency: 4,
        ..SimConfig::default()
    };
    let report = run(config, CancellationToken::new()).await.expect("run");

    assert_eq!(report.vehicles_connected, 20);
    assert_eq!(report.vehicles.len(), 20);
    assert_eq!(report.failed, 0, "{}", report.summary());
    assert_eq!(report.acked, report.published);
    for vehicle in &report.vehicles {
        // 3 s at 2 Hz, the first tick shifted by up to one period.
        assert!((5..=7).contains(&vehicle.published), "{vehicle:?}");
        assert_eq!(vehicle.acked, vehicle.published);
    }
    let received = receive(&mut rx, report.published).await;
    check_received(&report, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_fleet_is_delivered_exactly_as_reported() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let config = SimConfig {
        broker: broker.to_string(),
        vehicles: 10,
        rate_hz: 4.0,
        duration: Some(Duration::from_secs(2)),
        qos: Qos::AtMostOnce,
        id_prefix: "q0-".to_owned(),
        ..SimConfig::default()
    };
    let report = run(config, CancellationToken::new()).await.expect("run");

    assert_eq!(report.failed, 0, "{}", report.summary());
    assert_eq!(report.acked, 0);
    assert!(report.published >= 70, "{}", report.summary());
    assert!(
        report
            .vehicles
            .iter()
            .all(|v| v.device_id.starts_with("q0-"))
    );
    let received = receive(&mut rx, report.published).await;
    check_received(&report, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_fleet_on_the_helsinki_map_is_delivered_exactly_as_reported() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let roads = RoadMap::named("helsinki").expect("embedded map");
    let config = SimConfig {
        broker: broker.to_string(),
        vehicles: 60,
        connections: Some(3),
        roads: Some(std::sync::Arc::new(roads)),
        rate_hz: 2.0,
        duration: Some(Duration::from_secs(3)),
        qos: Qos::AtLeastOnce,
        seed: 11,
        id_prefix: "hel-".to_owned(),
        ..SimConfig::default()
    };
    let report = run(config, CancellationToken::new()).await.expect("run");
    assert_eq!(report.connections, 3);
    assert_eq!(report.vehicles_connected, 60);
    assert_eq!(report.vehicles.len(), 60);
    assert_eq!(report.failed, 0, "{}", report.summary());
    assert_eq!(report.acked, report.published);
    for vehicle in &report.vehicles {
        assert!((5..=7).contains(&vehicle.published), "{vehicle:?}");
        let last = vehicle.last.as_ref().expect("published");
        // Central Helsinki, where the extract is.
        assert!((60.16..60.18).contains(&last.lat) && (24.93..24.96).contains(&last.lon));
    }
    let received = receive(&mut rx, report.published).await;
    check_received(&report, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_open_ended_run_drains_and_reports() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let cancel = CancellationToken::new();
    let config = SimConfig {
        broker: broker.to_string(),
        vehicles: 5,
        rate_hz: 5.0,
        duration: None,
        ..SimConfig::default()
    };
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stopper.cancel();
    });
    let report = tokio::time::timeout(Duration::from_secs(10), run(config, cancel))
        .await
        .expect("run stops after cancel")
        .expect("run");

    assert_eq!(report.failed, 0, "{}", report.summary());
    assert!(report.published >= 20, "{}", report.summary());
    let received = receive(&mut rx, report.published).await;
    check_received(&report, &received);
}

/// A TCP proxy to `target` that delays everything the broker sends by
/// `delay` (so PUBACKs arrive late, as from a distant or loaded broker) and
/// drops every open connection whenever `cut` changes, as a broker restart
/// or network blip would; new connections still go through.
async fn start_proxy(target: SocketAddr, delay: Duration, cut: watch::Receiver<u32>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let mut cut = cut.clone();
            cut.borrow_and_update();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_r, mut client_w) = inbound.into_split();
                let (mut broker_r, mut broker_w) = outbound.into_split();
                let (late_tx, mut late_rx) = mpsc::unbounded_channel();
                let upstream = tokio::io::copy(&mut client_r, &mut broker_w);
                let read_downstream = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = broker_r.read(&mut buf).await {
                        let due = tokio::time::Instant::now() + delay;
                        if late_tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                };
                let write_downstream = async move {
                    while let Some((due, bytes)) = late_rx.recv().await {
                        tokio::time::sleep_until(due).await;
                        if client_w.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = upstream => {}
                    _ = async { tokio::join!(read_downstream, write_downstream) } => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicles_reconnect_after_a_cut_and_count_what_they_lost() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let (cut_tx, cut_rx) = watch::channel(0u32);
    let proxy = start_proxy(broker, Duration::ZERO, cut_rx).await;
    let config = SimConfig {
        broker: proxy.to_string(),
        vehicles: 10,
        rate_hz: 4.0,
        duration: Some(Duration::from_secs(4)),
        ..SimConfig::default()
    };
    let cutter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cut_tx.send_replace(1);
        // Dropping the sender would make every later connection look cut.
        cut_tx
    });
    let report = run(config, CancellationToken::new()).await.expect("run");
    let _cut_tx = cutter.await.expect("cutter");

    // Positions generated while reconnecting (or unacknowledged at the cut)
    // are failed; every vehicle reconnected and published after the cut.
    assert!(report.failed > 0, "{}", report.summary());
    let received = receive(&mut rx, report.published).await;
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for (topic, payload) in &received {
        let position = Position::decode(payload.as_slice()).expect("payload is a Position");
        assert_eq!(topic, &format!("fleet/{}/pos", position.device_id));
        seqs.entry(position.device_id)
            .or_default()
            .push(position.seq.expect("seq"));
    }
    for vehicle in &report.vehicles {
        let got = seqs.remove(&vehicle.device_id).unwrap_or_default();
        let generated = vehicle.published + vehicle.failed;
        // Never re-sent, in order, nothing beyond what was generated.
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{}: {got:?}",
            vehicle.device_id
        );
        assert!(
            got.iter().all(|&seq| seq < generated),
            "{}: {got:?}",
            vehicle.device_id
        );
        // Everything confirmed arrived; unconfirmed ones may or may not have.
        assert!(
            got.len() as u64 >= vehicle.published,
            "{}: {got:?}",
            vehicle.device_id
        );
        let last = vehicle.last.as_ref().and_then(|p| p.seq).expect("last");
        assert!(got.contains(&last), "{}", vehicle.device_id);
        // About 4 s at 4 Hz; the reconnect took well under a second.
        assert!(
            last >= 12,
            "{}: reconnect too late, last seq {last}",
            vehicle.device_id
        );
        assert!(vehicle.failed < 8, "{vehicle:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_waits_for_late_acks() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let (_cut_tx, cut_rx) = watch::channel(0u32);
    let proxy = start_proxy(broker, Duration::from_millis(400), cut_rx).await;
    let config = SimConfig {
        broker: proxy.to_string(),
        vehicles: 10,
        rate_hz: 5.0,
        duration: Some(Duration::from_secs(2)),
        ..SimConfig::default()
    };
    let report = run(config, CancellationToken::new()).await.expect("run");

    // The last two positions of each vehicle were still unacknowledged at
    // the stop; the drain waited for them.
    assert_eq!(report.failed, 0, "{}", report.summary());
    // 2 s at 5 Hz; one vehicle may squeeze in a tick as the stop fires.
    assert!(
        (100..=101).contains(&report.published),
        "{}",
        report.summary()
    );
    let received = receive(&mut rx, report.published).await;
    check_received(&report, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_bounded_and_unacknowledged_publishes_count_as_failed() {
    init_tracing();
    let broker = start_broker();
    let mut rx = subscribe(broker).await;
    let (_cut_tx, cut_rx) = watch::channel(0u32);
    let proxy = start_proxy(broker, Duration::from_millis(800), cut_rx).await;
    let config = SimConfig {
        broker: proxy.to_string(),
        vehicles: 5,
        rate_hz: 5.0,
        duration: Some(Duration::from_secs(2)),
        drain_timeout: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let report = run(config, CancellationToken::new()).await.expect("run");
    let took = started.elapsed();

    // Acks take 0.8 s but the drain allows 0.2 s: each vehicle's last few
    // publishes are failed, although the broker did receive them.
    assert!(took < Duration::from_secs(5), "run took {took:?}");
    let generated = report.published + report.failed;
    assert!((50..=51).contains(&generated), "{}", report.summary());
    for vehicle in &report.vehicles {
        assert!((1..=6).contains(&vehicle.failed), "{vehicle:?}");
    }
    let received = receive(&mut rx, generated).await;
    assert_eq!(received.len() as u64, generated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_fails_fast() {
    let config = SimConfig {
        broker: format!("127.0.0.1:{}", free_port()),
        vehicles: 3,
        duration: Some(Duration::from_secs(1)),
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let result = run(config, CancellationToken::new()).await;
    assert!(
        matches!(result, Err(SimError::ConnectFailed { vehicles: 3, .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_connecting_returns_promptly() {
    // Accepts TCP (into the backlog) but never answers CONNECT.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = SimConfig {
        broker: silent.local_addr().expect("addr").to_string(),
        vehicles: 50,
        connect_concurrency: 8,
        connect_timeout: Duration::from_secs(30),
        duration: Some(Duration::from_secs(30)),
        ..SimConfig::default()
    };
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let report = tokio::time::timeout(Duration::from_secs(3), run(config, cancel))
        .await
        .expect("run returns soon after cancel")
        .expect("a cancelled run is not an error");
    assert_eq!((report.published, report.failed), (0, 0));
    assert_eq!(report.vehicles_connected, 0);
    assert_eq!(report.vehicles.len(), 50);
}

#[tokio::test]
async fn bad_broker_address_is_rejected_before_connecting() {
    let config = SimConfig {
        broker: "localhost".to_owned(),
        ..SimConfig::default()
    };
    let result = run(config, CancellationToken::new()).await;
    assert!(
        matches!(result, Err(SimError::InvalidBroker { .. })),
        "{result:?}"
    );
}
