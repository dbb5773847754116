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
        let out = std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default();
        out.lines()
            .find_map(|l| l.strip_prefix("fleetd: open the map at "))
            .unwrap_or_else(|| panic!("fleetd printed no map URL; stdout:\n{out}"))
            .trim()
            .to_owned()
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
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "fleetd did not stop within 30 s of SIGINT; log:\n{}",
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
