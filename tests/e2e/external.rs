//! External-broker ingest: two fleetd processors subscribe to one Mosquitto
//! broker with a shared subscription and split the device stream between
//! them, without duplicates or losses.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Fleetd, free_port, mqtt_client, now_ms};

/// A Mosquitto broker on a loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
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
        let subscribed = server
            .wait_for(Duration::from_secs(10), || async {
                server
                    .log()
                    .contains("subscribed to the external broker")
                    .then_some(())
            })
            .await;
        assert!(
            subscribed.is_some(),
            "not subscribed; log:\n{}",
            server.log()
        );
    }
    // The SUBACK follows the log line by a round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;

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
