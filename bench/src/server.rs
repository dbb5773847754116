//! The fleetd under test: a `fleetd serve` child process the bench starts on
//! free loopback ports with a throwaway data directory, and its CPU and
//! memory read from `/proc`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A fleetd the bench started; stopped (SIGINT, then kill) when dropped.
pub(crate) struct ChildServer {
    child: Child,
    /// MQTT address, `127.0.0.1:port`.
    pub mqtt: String,
    /// HTTP base URL.
    pub http: String,
    /// The admin token it wrote to its data directory (`None` with
    /// `--allow-anonymous`).
    pub admin_token: Option<String>,
    _data: tempfile::TempDir,
    /// Holds the server's stderr (`server.log`).
    _logs: tempfile::TempDir,
}

impl ChildServer {
    /// Starts `fleetd serve` (this executable) with `window_ms` and waits
    /// until `/readyz` answers.
    pub(crate) async fn start(window_ms: u64, anonymous: bool) -> anyhow::Result<ChildServer> {
        let data = tempfile::tempdir().context("temporary data directory")?;
        let port = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (mqtt, http) = (
            format!("127.0.0.1:{}", port()?),
            format!("127.0.0.1:{}", port()?),
        );
        let exe: PathBuf = std::env::current_exe().context("own executable")?;
        // The server's own warnings go to a file, not into the report.
        let logs = tempfile::tempdir().context("temporary log directory")?;
        let log =
            std::fs::File::create(logs.path().join("server.log")).context("server log file")?;
        let child = Command::new(exe)
            .args(["serve", "--mqtt", &mqtt, "--http", &http])
            .args(["--window-ms", &window_ms.to_string()])
            .arg("--data")
            .arg(data.path())
            .args(anonymous.then_some("--allow-anonymous"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start fleetd serve")?;
        let mut server = ChildServer {
            child,
            mqtt,
            http: format!("http://{http}"),
            admin_token: None,
            _data: data,
            _logs: logs,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", server.http)).send().await
                && r.status().is_success()
            {
                if !anonymous {
                    let file = server._data.path().join("admin.token");
                    let token = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    server.admin_token = Some(token.trim().to_owned());
                }
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("fleetd did not become ready within 30 s")
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` (`None`: this process).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    cpu_from_stat(&std::fs::read_to_string(path).ok()?)
}

/// CPU seconds from a `/proc/PID/stat` line (Linux; USER_HZ = 100).
pub(crate) fn cpu_from_stat(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Current and peak RSS of process `pid` (`None`: this process) in MB.
pub(crate) fn memory_mb(pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let Ok(status) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "1234 (fleetd serve) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_from_stat(stat), Some(3.0));
        assert_eq!(cpu_from_stat("garbage"), None);
        assert!(cpu_seconds(None).is_some());
        assert!(memory_mb(None).0.is_some_and(|mb| mb > 0.0));
    }
}
