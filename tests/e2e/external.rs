//! External-broker ingest: two fleetd processors subscribe to one Mosquitto
//! broker with a shared subscription and split the device stream between
//! them, without duplicates or losses.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    AckedDevice, Fleetd, assert_odometer_is_track_length, free_port, missing_after, mqtt_client,
    now_ms,
};

/// A Mosquitto broker on a loopback port, killed on drop.
pub(crate) struct Mosquitto {
    child: Child,
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// A broker that keeps nothing on disk.
    pub(crate) fn start() -> Mosquitto {
        Mosquitto::start_with(|_| "persistence false\n".to_owned())
    }

    /// A broker as deployed for fleetd: persistence on, and no cap on the
    /// QoS 1 messages it queues for an offline persistent session (the
    /// default of 1,000 drops the rest, counted by the broker, not by us).
    fn persistent() -> Mosquitto {
        Mosquitto::start_with(|dir| {
            format!(
                "persistence true\npersistence_location {}/\nmax_queued_messages 0\n",
                dir.display()
            )
        })
    }

    /// `extra` gives configuration lines for the broker's own directory.
    fn start_with(extra: impl FnOnce(&std::path::Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{}",
                extra(dir.path())
            ),
        )
        .expect("write mosquitto.conf");
        // Debian installs the broker in /usr/sbin, which not every PATH has.
        let program = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ts_ms` of every stored history row of `device` on `server`.
async fn stored(server: &Fleetd, device: &str) -> Vec<i64> {
    let (status, track) = server
        .get(&format!("/v1/vehicles/{device}/track?limit=10000"))
        .await;
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{track}");
    track["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["ts_ms"].as_i64().expect("ts_ms"))
        .collect()
}

/// Waits until `server` has subscribed to its broker, or found its
/// session there (and the SUBACK is back, a round trip after the log line).
async fn wait_subscribed(server: &Fleetd) {
    let subscribed = server
        .wait_for(Duration::from_secs(10), || async {
            let log = server.log();
            // A restart finds its persistent session (and subscription)
            // still there.
            (log.contains("subscribed to the external broker")
                || log.contains("external broker kept the session"))
            .then_some(())
        })
        .await;
    assert!(
        subscribed.is_some(),
        "not subscribed; log:\n{}",
        server.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_processors_share_one_stream_without_duplicates_or_losses() {
    let broker = Mosquitto::start();
    let external = ["--ingest", "external", "--broker"];
    let broker_addr = format!("127.0.0.1:{}", broker.port);
    let args: Vec<&str> = external
        .iter()
        .copied()
        .chain([broker_addr.as_str()])
        .collect();
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let a = Fleetd::start(&dirs[0].path().join("a"), &args).await;
    let b = Fleetd::start(&dirs[1].path().join("b"), &args).await;
    for server in [&a, &b] {
        wait_subscribed(server).await;
    }

    let publisher = mqtt_client(broker.port, "test-publisher").await;
    let (devices, per_device) = (20, 10);
    let t0 = now_ms() - 60_000;
    for i in 0..per_device {
        for d in 0..devices {
            let payload = format!(
                "{{\"ts_ms\": {}, \"lat\": {}, \"lon\": 13.4}}",
                t0 + i * 1000,
                52.5 + d as f64 * 0.001
            );
            publisher
                .publish(
                    format!("fleet/ext-{d}/pos"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("publish");
        }
    }
    let total = (devices * per_device) as f64;
    let received = a
        .wait_for(Duration::from_secs(20), || async {
            let sum =
                a.metric("fleetd_received_total").await + b.metric("fleetd_received_total").await;
            (sum >= total).then_some(sum)
        })
        .await;
    assert_eq!(
        received,
        Some(total),
        "every publish reached exactly one processor"
    );
    let (got_a, got_b) = (
        a.metric("fleetd_received_total").await,
        b.metric("fleetd_received_total").await,
    );
    assert!(
        got_a > 0.0 && got_b > 0.0,
        "the stream is shared: {got_a} + {got_b}"
    );

    // Stored: each position on exactly one of the two, none lost.
    let stored_all = a
        .wait_for(Duration::from_secs(10), || async {
            let mut rows = 0;
            for d in 0..devices {
                let id = format!("ext-{d}");
                rows += stored(&a, &id).await.len() + stored(&b, &id).await.len();
            }
            (rows as f64 >= total).then_some(rows)
        })
        .await;
    assert_eq!(stored_all, Some(devices as usize * per_device as usize));
    for d in 0..devices {
        let id = format!("ext-{d}");
        let mut all = stored(&a, &id).await;
        all.extend(stored(&b, &id).await);
        let unique: BTreeSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "{id}: stored twice");
        let expected: BTreeSet<i64> = (0..per_device).map(|i| t0 + i * 1000).collect();
        assert_eq!(unique, expected, "{id}: every position stored");
    }
}

// fleetd killed twice while devices keep publishing to a persistent
// Mosquitto: the broker holds what fleetd had not acknowledged (fleetd acks
// only once its journal holds a publish) and what arrived while it was
// down, for its persistent session under the client id kept in the data
// directory. After the restarts every publish the broker accepted is
// stored, and once: redeliveries of what the journal already had move no
// odometer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_an_external_broker_stores_every_accepted_publish_once() {
    let broker = Mosquitto::persistent();
    let broker_addr = format!("127.0.0.1:{}", broker.port);
    let args = ["--ingest", "external", "--broker", broker_addr.as_str()];
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Fleetd::start(&data, &args).await;
    // The first subscription makes the session; from then on the broker
    // keeps what it accepts for fleetd, connected or not.
    wait_subscribed(&server).await;
    // Room for 43,200 fixes a device before their times reach the present
    // (fixes from the future are refused).
    let first_ts = now_ms() - 12 * 3_600_000;
    let devices: Vec<AckedDevice> = (0..4)
        .map(|d| {
            AckedDevice::start_paced(
                broker.port,
                None,
                &format!("extcrash-{d}"),
                first_ts,
                100_000,
                Duration::from_millis(2),
            )
        })
        .collect();
    for crash in 0..2 {
        let received = server
            .wait_for(Duration::from_secs(30), || async {
                let n = server.metric("fleetd_received_total").await;
                (n >= 1500.0).then_some(n)
            })
            .await;
        assert!(
            received.is_some(),
            "crash {crash}: fleetd received too little; log:\n{}",
            server.log()
        );
        server.crash();
        // The devices go on: the broker accepts and queues for fleetd.
        let before: usize = devices.iter().map(AckedDevice::acked).sum();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during: usize = devices.iter().map(AckedDevice::acked).sum::<usize>() - before;
        assert!(
            during > 0,
            "the broker accepted nothing while fleetd was down"
        );
        server = Fleetd::start(&data, &args).await;
    }
    wait_subscribed(&server).await;
    let mut total = 0;
    for device in devices {
        let id = device.id.clone();
        let acked = device.stop().await;
        total += acked.len();
        let missing = missing_after(&server, &id, &acked, Duration::from_secs(60)).await;
        assert!(
            missing.is_empty(),
            "{} of {id}'s {} publishes the broker accepted are not stored (first: {:?}); log:\n{}",
            missing.len(),
            acked.len(),
            missing.first(),
            server.log()
        );
        assert_odometer_is_track_length(&server, &id, first_ts).await;
    }
    assert!(total >= 3000, "{total} publishes accepted in all");
    eprintln!("external broker: all {total} accepted publishes stored once");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
