//! Helpers: start the real `fleetd` binary on free loopback ports with a
//! temporary data directory, talk to it over HTTP and MQTT, stop it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fleetd process started by a test. Killed on drop if still running.
///
/// Authentication is on unless the test passed `--allow-anonymous`: then
/// `admin_token` is the token fleetd wrote to `admin.token` on its first
/// start, `client` sends it on every request, and MQTT helpers log in with
/// it (an admin token may publish for any device, like a gateway).
pub struct Fleetd {
    child: Option<Child>,
    pub mqtt_port: u16,
    pub http: String,
    log: PathBuf,
    pub client: reqwest::Client,
    /// The admin token (`None` in anonymous mode).
    pub admin_token: Option<String>,
}

/// The log filter of [`Fleetd::start`].
const TEST_LOG_FILTER: &str = "info,fleetd_processor=debug,rumqttd=warn";

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Fleetd {
    /// Starts `fleetd serve` on fresh ports with `data` as its directory and
    /// waits until `/readyz` answers 200. Retries with other ports if one was
    /// taken in between (tests run in parallel).
    pub async fn start(data: &Path, extra: &[&str]) -> Fleetd {
        Self::start_logging(data, extra, Some(TEST_LOG_FILTER)).await
    }

    /// [`Fleetd::start`] with `RUST_LOG` set to `log_filter`, or unset
    /// (`None`: fleetd's own default, as users run it).
    pub async fn start_logging(data: &Path, extra: &[&str], log_filter: Option<&str>) -> Fleetd {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let (mqtt_port, http_port) = (free_port(), free_port());
            let log = data.with_extension(format!("{http_port}.log"));
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_fleetd"));
            match log_filter {
                Some(filter) => command.env("RUST_LOG", filter),
                None => command.env_remove("RUST_LOG"),
            };
            let child = command
                .arg("serve")
                .args(["--mqtt", &format!("127.0.0.1:{mqtt_port}")])
                .args(["--http", &format!("127.0.0.1:{http_port}")])
                .arg("--data")
                .arg(data)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(log.with_extension("out")).expect("stdout file"))
                .stderr(log_file)
                .spawn()
                .expect("spawn fleetd");
            let mut server = Fleetd {
                child: Some(child),
                mqtt_port,
                http: format!("http://127.0.0.1:{http_port}"),
                log,
                client: reqwest::Client::new(),
                admin_token: None,
            };
            if server.wait_ready(Duration::from_secs(30)).await {
                if !extra.contains(&"--allow-anonymous") {
                    let token = std::fs::read_to_string(data.join("admin.token"))
                        .expect("fleetd wrote admin.token before it was ready");
                    let token = token.trim().to_owned();
                    server.client = authorized_client(&token);
                    server.admin_token = Some(token);
                }
                return server;
            }
            last_log = server.log();
            server.kill();
        }
        panic!("fleetd did not become ready; its log:\n{last_log}");
    }

    async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.http))
                .send()
                .await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The map URL with the admin token that `fleetd serve` printed on
    /// stdout.
    pub fn printed_map_url(&self) -> String {
        let out = self.printed();
        out.lines()
            .find_map(|l| l.strip_prefix("fleetd: open the map at "))
            .unwrap_or_else(|| panic!("fleetd printed no map URL; stdout:\n{out}"))
            .trim()
            .to_owned()
    }

    /// What `fleetd serve` printed on stdout so far.
    pub fn printed(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGINT and waits (up to 30 s) for a clean exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal_and_wait("-INT")
    }

    /// Sends SIGTERM (what service managers send) and waits (up to 30 s)
    /// for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_and_wait("-TERM")
    }

    /// Waits (up to `timeout`) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9`: the process gets no chance to write anything more.
    pub fn crash(&mut self) {
        self.kill();
    }

    fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "fleetd did not stop within 30 s of kill {signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET a path; returns status and JSON body (Null if not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{}", self.http, path))
            .send()
            .await
            .expect("http request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// PUT `body` as JSON; returns status and JSON answer (Null if none).
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .put(format!("{}{}", self.http, path))
            .json(body)
            .send()
            .await
            .expect("PUT");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// DELETE a path; returns the status.
    pub async fn delete(&self, path: &str) -> u16 {
        self.client
            .delete(format!("{}{}", self.http, path))
            .send()
            .await
            .expect("DELETE")
            .status()
            .as_u16()
    }

    /// GET a text path (e.g. /metrics).
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{}", self.http, path))
            .send()
            .await
            .expect("http request")
            .text()
            .await
            .expect("body")
    }

    /// The value of a Prometheus counter/gauge line, e.g.
    /// `metric("fleetd_rejected_total{reason=\"oversize\"}")`; 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get_text("/metrics").await;
        parse_metric(&text, series)
    }

    /// Polls until `f` returns Some or `timeout` passes.
    pub async fn wait_for<T, F, Fut>(&self, timeout: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A connected rumqttc client logged in with the admin token (none in
    /// anonymous mode); its event loop runs in a task.
    pub async fn mqtt_client(&self, id: &str) -> rumqttc::AsyncClient {
        mqtt_client_as(self.mqtt_port, id, self.mqtt_login().as_ref()).await
    }

    /// The MQTT user name and password the helpers log in with.
    pub fn mqtt_login(&self) -> Option<(String, String)> {
        self.admin_token
            .as_ref()
            .map(|t| ("fleetd-tests".to_owned(), t.clone()))
    }

    /// `mosquitto_pub` once, logged in like [`Fleetd::mqtt_client`].
    pub fn mosquitto_pub(&self, topic: &str, message: &[u8]) {
        mosquitto_pub_as(self.mqtt_port, self.mqtt_login().as_ref(), topic, message)
    }
}

/// `fleetd credentials issue` on `data` (fleetd stopped, or not started
/// yet): a login (user name, secret) per id, in order. Many ids go through
/// `--file`, as a fleet provisions in bulk.
pub fn issue(data: &Path, ids: &[&str], user: bool) -> Vec<(String, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetd"));
    command
        .args(["credentials", "--data"])
        .arg(data)
        .arg("issue");
    if user {
        command.arg("--user");
    }
    let list = tempfile::NamedTempFile::with_suffix(".json").expect("id list");
    if ids.len() > 10 {
        std::fs::write(list.path(), serde_json::to_vec(ids).expect("json")).expect("write ids");
        command.arg("--file").arg(list.path());
    } else {
        command.args(ids);
    }
    let out = command.output().expect("run fleetd credentials");
    assert!(
        out.status.success(),
        "credentials issue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON list");
    assert_eq!(issued.len(), ids.len());
    issued
        .iter()
        .map(|c| {
            let username = c["username"].as_str().expect("username").to_owned();
            let password = c["password"].as_str().expect("password").to_owned();
            // 192 random bits, hex: no one guesses it, no slow hash needed.
            assert_eq!(password.len(), 48, "{c}");
            (username, password)
        })
        .collect()
}

/// A reqwest client that sends `Authorization: Bearer {token}` on every
/// request (a request's own Authorization header wins).
pub fn authorized_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a valid header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses one series out of Prometheus text (0 if absent).
pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.starts_with(' ')
                .then(|| rest.trim().parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// A rumqttc client connected to 127.0.0.1:`port` without credentials.
pub async fn mqtt_client(port: u16, id: &str) -> rumqttc::AsyncClient {
    mqtt_client_as(port, id, None).await
}

/// A rumqttc client connected to 127.0.0.1:`port` with `login` (user name,
/// password), with its event loop polled in a background task; waits for
/// the CONNACK and panics if the broker refused.
pub async fn mqtt_client_as(
    port: u16,
    id: &str,
    login: Option<&(String, String)>,
) -> rumqttc::AsyncClient {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    if let Some((username, password)) = login {
        options.set_credentials(username.clone(), password.clone());
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected_rx)
        .await
        .expect("MQTT connect timed out")
        .expect("MQTT event loop ended before CONNACK");
    client
}

/// Runs `mosquitto_pub` once with `-u`/`-P` from `login`; panics if it fails.
pub fn mosquitto_pub_as(port: u16, login: Option<&(String, String)>, topic: &str, message: &[u8]) {
    let out = run_mosquitto_pub(port, login, topic, message);
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `mosquitto_pub` once (QoS 1) and returns how it ended.
pub fn run_mosquitto_pub(
    port: u16,
    login: Option<&(String, String)>,
    topic: &str,
    message: &[u8],
) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("payload");
    std::fs::write(&file, message).expect("write payload");
    let mut command = Command::new("mosquitto_pub");
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-t",
        topic,
    ]);
    if let Some((username, password)) = login {
        command.args(["-u", username, "-P", password]);
    }
    command.arg("-f").arg(&file).output().expect(
        "mosquitto_pub is not installed: run scripts/test, which installs mosquitto-clients",
    )
}

/// Current Unix time in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A device that publishes QoS 1 positions one at a time and waits for each
/// PUBACK before the next, as the OwnTracks apps and Traccar Client do (they
/// delete a fix once it is acknowledged): what it records as acknowledged is
/// exactly what fleetd promised to keep. It stops at its first unanswered
/// publish (20 s), lost connection, after `count` positions, or on
/// [`AckedDevice::stop`]; it never reconnects.
pub struct AckedDevice {
    /// The device id (topic `fleet/{id}/pos`).
    pub id: String,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<i64>>,
}

impl AckedDevice {
    /// Starts publishing positions of `id` with `ts_ms` = `first_ts`,
    /// `first_ts + 1000`, ... to `port`, logged in with `login`; the
    /// device drives north along a meridian at a constant speed (see
    /// [`AckedDevice::lat`]).
    pub fn start(
        port: u16,
        login: Option<(String, String)>,
        id: &str,
        first_ts: i64,
        count: usize,
    ) -> AckedDevice {
        AckedDevice::start_paced(port, login, id, first_ts, count, Duration::ZERO)
    }

    /// Longitude of every fix.
    pub const LON: f64 = 13.4132;
    /// Latitude of fix `i` (`ts_ms = first_ts + i * 1000`): about 11 m a
    /// fix, 40 km/h at one fix a second, clearly moving and well below any
    /// speed filter.
    pub fn lat(i: i64) -> f64 {
        52.5 + i as f64 * 1e-4
    }

    /// As [`AckedDevice::start`], waiting `pace` after each acknowledgement
    /// (a broker that acknowledges in microseconds would otherwise take a
    /// device's whole `count` in a blink).
    pub fn start_paced(
        port: u16,
        login: Option<(String, String)>,
        id: &str,
        first_ts: i64,
        count: usize,
        pace: Duration,
    ) -> AckedDevice {
        use std::sync::atomic::Ordering;
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut options =
            rumqttc::MqttOptions::new(format!("{id}-{}", now_ms()), "127.0.0.1", port);
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                        if ack_tx.send(ack.pkid).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    // No reconnect: what was not acknowledged stays so.
                    Err(_) => break,
                }
            }
        });
        let topic = format!("fleet/{id}/pos");
        let (counter, stopped) = (std::sync::Arc::clone(&acked), std::sync::Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..count {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let ts = first_ts + i as i64 * 1000;
                let payload = format!(
                    "{{\"ts_ms\": {ts}, \"lat\": {:.6}, \"lon\": {}}}",
                    AckedDevice::lat(i as i64),
                    AckedDevice::LON
                );
                if client
                    .publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(20), ack_rx.recv()).await {
                    Ok(Some(_)) => {
                        done.push(ts);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            let _ = client.disconnect().await;
            done
        });
        AckedDevice {
            id: id.to_owned(),
            acked,
            stop,
            task,
        }
    }

    /// Positions acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops after the publish in flight; the `ts_ms` of every
    /// acknowledged position.
    pub async fn stop(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.finish().await
    }

    /// Waits until the device stops by itself (see [`AckedDevice`]).
    pub async fn finish(self) -> Vec<i64> {
        self.task.await.expect("device task")
    }
}

/// The `ts_ms` of every stored position of `id` from `from_ms` on (the
/// track, page by page).
pub async fn stored_ts(server: &Fleetd, id: &str, from_ms: i64) -> std::collections::BTreeSet<i64> {
    let mut got = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/vehicles/{id}/track?from={from_ms}&limit=10000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.get(&path).await;
        if status != 200 {
            return got;
        }
        for item in body["items"].as_array().into_iter().flatten() {
            if let Some(ts) = item["ts_ms"].as_i64() {
                got.insert(ts);
            }
        }
        match body["next_cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
            _ => return got,
        }
    }
}

/// Waits (up to `timeout`) until every position in `acked` of device `id`
/// is stored; the acknowledged ones still missing then.
pub async fn missing_after(
    server: &Fleetd,
    id: &str,
    acked: &[i64],
    timeout: Duration,
) -> Vec<i64> {
    let Some(&from) = acked.iter().min() else {
        return Vec::new();
    };
    let deadline = Instant::now() + timeout;
    loop {
        let stored = stored_ts(server, id, from).await;
        let missing: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|ts| !stored.contains(ts))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The odometer of an [`AckedDevice`] `id` whose first fix was `first_ts`
/// equals the geodesic length of its stored track: each stored fix counted
/// once, even those stored twice over (a journal replay, a broker's
/// redelivery). Waits (up to 30 s) for the vehicle state to reach the last
/// stored fix; returns the odometer.
pub async fn assert_odometer_is_track_length(server: &Fleetd, id: &str, first_ts: i64) -> f64 {
    let stored = stored_ts(server, id, first_ts).await;
    let (Some(&first), Some(&last)) = (stored.first(), stored.last()) else {
        panic!("nothing stored for {id}");
    };
    let fix = |ts: i64| (ts - first_ts) / 1000;
    // Along a meridian (a geodesic) the length of the track is the
    // distance between its ends, whatever fixes are missing between them.
    let length = fleetd_processor::kinematics::geodesic_m(
        AckedDevice::lat(fix(first)),
        AckedDevice::LON,
        AckedDevice::lat(fix(last)),
        AckedDevice::LON,
    );
    let state = server
        .wait_for(Duration::from_secs(30), || async {
            let (_, v) = server.get(&format!("/v1/vehicles/{id}")).await;
            (v["state_ts_ms"] == last).then_some(v)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{id}: vehicle state never reached its last stored fix {last}; log:\n{}",
                server.log()
            )
        });
    let odometer = state["odometer_m"].as_f64().expect("odometer_m");
    // The API rounds to 0.1 m; summing per-fix geodesics drifts by far less
    // than a metre over thousands of fixes.
    assert!(
        (odometer - length).abs() <= 1.0,
        "{id}: odometer {odometer} m, but the {} stored fixes span {length:.1} m",
        stored.len()
    );
    odometer
}

/// Resident set of process `pid`, in bytes (`VmRSS`; 0 once it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}
