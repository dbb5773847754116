//! Acknowledged means stored: a position fleetd acknowledged (QoS 1 PUBACK,
//! HTTP 202) survives `kill -9` and SIGTERM under load, because the ingest
//! journal holds it before the acknowledgement and a restart replays it.
//! The devices here behave like the trackers: one publish at a time, the
//! next only after the PUBACK, no resend of what was acknowledged.

use std::time::Duration;

use crate::util::{AckedDevice, Fleetd, assert_odometer_is_track_length, missing_after, now_ms};

/// Devices publishing at once in the crash tests.
const DEVICES: usize = 8;

/// Starts [`DEVICES`] devices `{prefix}-0`... whose first fix is `first_ts`.
fn start_devices(server: &Fleetd, prefix: &str, first_ts: i64) -> Vec<AckedDevice> {
    (0..DEVICES)
        .map(|d| {
            AckedDevice::start(
                server.mqtt_port,
                server.mqtt_login(),
                &format!("{prefix}-{d}"),
                first_ts,
                100_000,
            )
        })
        .collect()
}

/// Waits until the devices have `at_least` acknowledgements between them.
async fn wait_acked(server: &Fleetd, devices: &[AckedDevice], at_least: usize) {
    let enough = server
        .wait_for(Duration::from_secs(60), || async {
            let n: usize = devices.iter().map(AckedDevice::acked).sum();
            (n >= at_least).then_some(())
        })
        .await;
    let n: usize = devices.iter().map(AckedDevice::acked).sum();
    assert!(
        enough.is_some(),
        "only {n} positions acknowledged in 60 s; log:\n{}",
        server.log()
    );
}

/// Waits until each device stops by itself; (id, acknowledged `ts_ms`).
async fn finish_all(devices: Vec<AckedDevice>) -> Vec<(String, Vec<i64>)> {
    let mut acked = Vec::new();
    for device in devices {
        let id = device.id.clone();
        acked.push((id, device.finish().await));
    }
    acked
}

/// Every acknowledged position of every device is stored after the
/// restart; returns how many there were.
async fn assert_all_stored(server: &Fleetd, acked: &[(String, Vec<i64>)], what: &str) -> usize {
    let mut total = 0;
    for (id, ts) in acked {
        total += ts.len();
        let missing = missing_after(server, id, ts, Duration::from_secs(30)).await;
        assert!(
            missing.is_empty(),
            "{what}: {} of {id}'s {} acknowledged positions are not stored (first: {:?}); log:\n{}",
            missing.len(),
            ts.len(),
            missing.first(),
            server.log()
        );
    }
    eprintln!("{what}: all {total} acknowledged positions stored");
    total
}

// Three crashes in a row on one data directory, each in the middle of a
// QoS 1 load from eight trackers and two pipelining gateways (tens of
// thousands of positions a second) with a one-second window: without the
// journal each crash lost the last one to two windows of acknowledged
// positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_qos1_load_loses_no_acknowledged_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut acked_all: Vec<(String, Vec<i64>)> = Vec::new();
    for round in 0..3 {
        let mut server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
        // Everything acknowledged before the previous crash is still there.
        assert_all_stored(&server, &acked_all, "after the restart").await;
        let first_ts = now_ms() - 3_600_000 + round * 600_000;
        let devices = start_devices(&server, &format!("crash{round}"), first_ts);
        // Beside the trackers, two gateway connections pipeline QoS 1 as
        // fast as they are acknowledged: the crash comes at full rate.
        let started = std::time::Instant::now();
        let floods: Vec<_> = (0..2)
            .map(|c| {
                tokio::spawn(qos1_flood(
                    server.mqtt_port,
                    server.mqtt_login(),
                    format!("crash{round}-gw{c}"),
                    50,
                    first_ts,
                    60,
                ))
            })
            .collect();
        wait_acked(&server, &devices, 1500).await;
        let received = server
            .wait_for(Duration::from_secs(60), || async {
                let n = server.metric("fleetd_received_total").await;
                (n >= 30_000.0).then_some(n)
            })
            .await
            .unwrap_or_else(|| panic!("the floods stalled; log:\n{}", server.log()));
        eprintln!(
            "crash {round}: kill -9 at {:.0} positions/s received",
            received / started.elapsed().as_secs_f64()
        );
        server.crash();
        acked_all.extend(finish_all(devices).await);
        let mut flooded: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for flood in floods {
            for (id, ts) in flood.await.expect("flood task") {
                flooded.entry(id).or_default().push(ts);
            }
        }
        acked_all.extend(flooded);
    }
    let server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let total = assert_all_stored(&server, &acked_all, "after the last crash").await;
    assert!(total >= 60_000, "{total} positions acknowledged in all");
    // None processed twice: what a restart replays and was already stored
    // moves no odometer (a tracker's first acknowledged fix is its first;
    // the gateways' devices do not drive along one meridian).
    for (id, ts) in acked_all.iter().filter(|(id, _)| !id.contains("-gw")) {
        if let Some(&first) = ts.first() {
            assert_odometer_is_track_length(&server, id, first).await;
        }
    }
    // They came back through the journal: the load never paused, so the
    // last segment always held positions when the process died.
    assert!(
        server
            .metric("fleetd_journal_replayed_positions_total")
            .await
            > 0.0,
        "nothing replayed from the journal; log:\n{}",
        server.log()
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

// A service manager's stop under load: what was acknowledged before or
// during the drain is stored, and fleetd exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_qos1_load_loses_no_acknowledged_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let first_ts = now_ms() - 3_600_000;
    let devices = start_devices(&server, "term", first_ts);
    wait_acked(&server, &devices, 1500).await;
    let status = server.terminate();
    assert!(status.success(), "clean exit; log:\n{}", server.log());
    let acked = finish_all(devices).await;
    let server = Fleetd::start(&data, &["--window-ms", "1000"]).await;
    let total = assert_all_stored(&server, &acked, "after SIGTERM").await;
    assert!(total >= 1500, "{total} positions acknowledged");
}

// HTTP ingest: a 202 is sent once the batch is in the journal. A long
// window keeps it in the processor's pending batch, so only the journal
// can bring it back after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_202_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Fleetd::start(&data, &["--window-ms", "30000"]).await;
    let first_ts = now_ms() - 600_000;
    let items: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            serde_json::json!({
                "device_id": "http-crash-1",
                "ts_ms": first_ts + i * 1000,
                "lat": 52.52 + i as f64 * 1e-5,
                "lon": 13.41,
            })
        })
        .collect();
    let r = server
        .client
        .post(format!("{}/v1/positions", server.http))
        .json(&items)
        .send()
        .await
        .expect("POST /v1/positions");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        server.metric("fleetd_positions_stored_total").await,
        0.0,
        "the window still holds the batch"
    );
    server.crash();
    let server = Fleetd::start(&data, &[]).await;
    let acked: Vec<i64> = (0..200).map(|i| first_ts + i * 1000).collect();
    let missing = missing_after(&server, "http-crash-1", &acked, Duration::from_secs(30)).await;
    assert!(
        server
            .metric("fleetd_journal_replayed_positions_total")
            .await
            >= 200.0,
        "the batch came back through the journal; log:\n{}",
        server.log()
    );
    assert!(
        missing.is_empty(),
        "{} of 200 positions lost; log:\n{}",
        missing.len(),
        server.log()
    );
}

/// A tmpfs of `mb` MiB mounted on `{tempdir}/data`, unmounted on drop;
/// `None` where this process may not mount (no CAP_SYS_ADMIN). The test
/// helpers write fleetd's log beside the data directory, so it stays off
/// the full disk.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(mb: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("data");
        std::fs::create_dir(&mount).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&mount)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { _dir: dir, mount })
    }

    fn path(&self) -> &std::path::Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

/// Fills the file system of `dir` until a write fails; returns the file.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 256 * 1024];
    while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
    // Whatever is left is smaller than a block: take it too.
    while file.write_all(&block[..4096]).is_ok() {}
    path
}

// A full disk under QoS 1 load: nothing is acknowledged that is not in the
// journal, and fjall stops for good after a failed write, so fleetd exits
// with an error naming the cause. Restarted (as its supervisor does) once
// space is freed, it stores every position it ever acknowledged. (A full
// journal alone, with the store still writing, answers 503 and waits:
// ingest's and the API's unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_and_a_restart_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount(64) else {
        eprintln!(
            "SKIPPED: mounting a 64 MiB tmpfs needs CAP_SYS_ADMIN (run scripts/test as root)"
        );
        return;
    };
    let data = disk.path().to_path_buf();
    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let first_ts = now_ms() - 3_600_000;
    let devices = start_devices(&server, "full", first_ts);
    wait_acked(&server, &devices, 400).await;

    let filler = fill(disk.path());
    let mut server = server;
    let status = server.wait_exit(Duration::from_secs(60));
    let log = server.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "fleetd kept running on a stopped store ({status:?}); log:\n{log}"
    );
    assert!(
        log.contains("restart fleetd once the disk has room"),
        "{log}"
    );
    let acked = finish_all(devices).await;

    std::fs::remove_file(&filler).expect("free the space");
    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let total = assert_all_stored(&server, &acked, "after the disk was full").await;
    assert!(total >= 400);
    assert!(
        server
            .metric("fleetd_journal_replayed_positions_total")
            .await
            > 0.0
    );
    let mut server = server;
    assert!(
        server.interrupt().success(),
        "clean exit; log:\n{}",
        server.log()
    );
}

// A QoS 0 flood from one gateway connection beside a QoS 1 device: the
// flood is pushed back (its connection is read only as fast as the journal
// takes it), the device keeps getting acknowledgements, and nothing of
// either is lost (the broker used to drop the device's acknowledged
// positions with the flood).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_flood_neither_starves_nor_loses_a_qos1_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Fleetd::start(&data, &["--window-ms", "200"]).await;
    let first_ts = now_ms() - 3_600_000;
    let flooder = server.mqtt_client("e2e-flood").await;
    const FLOOD_DEVICES: i64 = 50;
    const PER_DEVICE: i64 = 400;
    let flood = tokio::spawn(async move {
        for i in 0..PER_DEVICE {
            for d in 0..FLOOD_DEVICES {
                let payload = format!(
                    "{{\"ts_ms\": {}, \"lat\": 48.1, \"lon\": {:.5}}}",
                    first_ts + i * 1000,
                    11.5 + d as f64 * 1e-3
                );
                flooder
                    .publish(
                        format!("fleet/flood-{d}/pos"),
                        rumqttc::QoS::AtMostOnce,
                        false,
                        payload,
                    )
                    .await
                    .expect("queue the flood");
            }
        }
        flooder
            .disconnect()
            .await
            .expect("disconnect after the flood");
    });
    let device = AckedDevice::start(
        server.mqtt_port,
        server.mqtt_login(),
        "steady-1",
        first_ts,
        100_000,
    );
    flood.await.expect("flood task");
    let flood_total = (FLOOD_DEVICES * PER_DEVICE) as f64;
    let stored = server
        .wait_for(Duration::from_secs(60), || async {
            let n = server.metric("fleetd_positions_stored_total").await;
            (n >= flood_total).then_some(n)
        })
        .await;
    let acked_during = device.acked();
    let acked = device.stop().await;
    assert!(
        acked_during >= 20,
        "the QoS 1 device got only {acked_during} acknowledgements during the flood"
    );
    let missing = missing_after(&server, "steady-1", &acked, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "{} acknowledged positions lost",
        missing.len()
    );
    assert!(
        stored.is_some(),
        "the flood was not stored whole: {} of {flood_total}; log:\n{}",
        server.metric("fleetd_positions_stored_total").await,
        server.log()
    );
}

/// One gateway connection flooding QoS 1 positions of `devices` devices
/// (`{prefix}-0`...) with up to 100 publishes in flight, for `seconds`;
/// the (device, `ts_ms`) of every publish fleetd acknowledged. A PUBACK
/// is matched to its publish by packet id: rumqttc sends requests in
/// order and reports each publish's id as it goes out.
async fn qos1_flood(
    port: u16,
    login: Option<(String, String)>,
    prefix: String,
    devices: usize,
    first_ts: i64,
    seconds: u64,
) -> Vec<(String, i64)> {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    let mut options =
        rumqttc::MqttOptions::new(format!("{prefix}-{}", now_ms()), "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    let sent: Arc<Mutex<VecDeque<(String, i64)>>> = Arc::default();
    let queue = Arc::clone(&sent);
    let acks = tokio::spawn(async move {
        let (mut in_flight, mut acked) = (HashMap::new(), Vec::new());
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    if let Some(item) = queue.lock().expect("queue").pop_front() {
                        in_flight.insert(pkid, item);
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                    if let Some(item) = in_flight.remove(&ack.pkid) {
                        acked.push(item);
                    }
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        acked
    });
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    // Device times stay in the past: a fix from the future is refused
    // (`future_timestamp`), which is not what this measures.
    let last_i = (now_ms() - 60_000 - first_ts) / 1000;
    'flood: for i in 0..=last_i {
        for d in 0..devices {
            if std::time::Instant::now() >= until {
                break 'flood;
            }
            let (id, ts) = (format!("{prefix}-{d}"), first_ts + i * 1000);
            let payload = format!(
                "{{\"ts_ms\": {ts}, \"lat\": {:.6}, \"lon\": {:.5}}}",
                AckedDevice::lat(i),
                11.5 + d as f64 * 1e-3
            );
            let topic = format!("fleet/{id}/pos");
            sent.lock().expect("queue").push_back((id, ts));
            if client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break 'flood;
            }
        }
    }
    // Acknowledgements of what is still in flight, then goodbye.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = client.disconnect().await;
    tokio::time::timeout(Duration::from_secs(10), acks)
        .await
        .expect("the flood's event loop ends after the disconnect")
        .expect("acks task")
}

/// The largest resident set of process `pid` seen until `stop`, in bytes.
fn sample_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            max = max.max(crate::util::rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        max
    })
}

/// Resident set fleetd must stay under during the overload test: the
/// journal and processor queues are bounded (README "Memory bounds"), so
/// an overload costs waiting publishers, not memory.
const OVERLOAD_RSS_BOUND: u64 = 512 << 20;

// Four gateway connections flood QoS 1 positions as fast as they are
// acknowledged, into small queues, so the journal is full most of the
// time and publishers wait; beside them a light device publishes a fix a
// second. Every acknowledged position is stored, the light device's fixes
// are queryable within three windows of their publish, and fleetd's
// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_loses_nothing_acknowledged_starves_no_light_device_and_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("overload.toml");
    std::fs::write(
        &config,
        "[journal]\nqueue_appends = 64\n[processor]\nqueue_chunks = 8\npartition_queue_chunks = 4\n",
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let data = dir.path().join("data");
    let window_ms = 1000;
    let server = Fleetd::start(&data, &["--config", &config, "--window-ms", "1000"]).await;
    let stop_rss = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rss = sample_rss(server.pid(), std::sync::Arc::clone(&stop_rss));
    // Room for 43,200 fixes a device before reaching the present.
    let first_ts = now_ms() - 12 * 3_600_000;
    let floods: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(qos1_flood(
                server.mqtt_port,
                server.mqtt_login(),
                format!("storm{c}"),
                50,
                first_ts,
                12,
            ))
        })
        .collect();

    // The light device: publish, wait for the PUBACK, then for the fix to
    // be queryable as its latest position; one fix a second.
    let light = server.mqtt_client("e2e-light").await;
    let mut delays = Vec::new();
    for i in 0..10 {
        let ts = first_ts + i * 1000;
        let published = std::time::Instant::now();
        let payload = format!(
            "{{\"ts_ms\": {ts}, \"lat\": {:.6}, \"lon\": 13.4}}",
            AckedDevice::lat(i)
        );
        light
            .publish(
                "fleet/light-1/pos",
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish");
        let seen = server
            .wait_for(Duration::from_secs(10), || async {
                let (_, v) = server.get("/v1/vehicles/light-1").await;
                (v["ts_ms"].as_i64() >= Some(ts)).then_some(())
            })
            .await;
        let delay = published.elapsed();
        assert!(
            seen.is_some(),
            "light fix {i} not queryable in 10 s; log:\n{}",
            server.log()
        );
        delays.push(delay);
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(delay)).await;
    }
    let mut acked = Vec::new();
    for flood in floods {
        acked.extend(flood.await.expect("flood task"));
    }
    stop_rss.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_rss = rss.join().expect("rss sampler");

    let blocked = server.metric("fleetd_ingest_blocked_seconds_count").await;
    let slowest = delays.iter().max().copied().unwrap_or_default();
    eprintln!(
        "overload: {} flood positions acknowledged, publishers blocked {blocked} times, \
         light device delays {delays:?}, max RSS {} MiB",
        acked.len(),
        max_rss >> 20
    );
    assert!(
        blocked > 0.0,
        "the flood never filled the journal: not an overload"
    );
    assert!(
        slowest <= Duration::from_millis(3 * window_ms),
        "a light fix took {slowest:?} to be queryable (more than three windows): {delays:?}"
    );
    assert!(
        max_rss > 0 && max_rss < OVERLOAD_RSS_BOUND,
        "fleetd's RSS reached {} MiB",
        max_rss >> 20
    );
    let mut by_device: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (id, ts) in acked {
        by_device.entry(id).or_default().push(ts);
    }
    for (id, ts) in &by_device {
        let missing = missing_after(&server, id, ts, Duration::from_secs(30)).await;
        assert!(
            missing.is_empty(),
            "{} of {id}'s {} acknowledged positions lost (first {:?}); log:\n{}",
            missing.len(),
            ts.len(),
            missing.first(),
            server.log()
        );
    }
}
