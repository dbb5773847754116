//! The command line: bad flags and config give a clear error and a non-zero
//! exit; `generate-config` prints the shipped defaults.

use std::process::Command;

fn fleetd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .args(args)
        .output()
        .expect("run fleetd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_config_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 5] = [
        (&["serve", "--bogus"], "--bogus"),
        (&["serve", "--data", data, "--window-ms", "0"], "window_ms"),
        (
            &["serve", "--data", data, "--store", "cassandra"],
            "store.backend",
        ),
        (
            &["serve", "--data", data, "--http", "not-an-address"],
            "api.http",
        ),
        (
            &[
                "serve",
                "--data",
                data,
                "--config",
                "/nonexistent/fleetd.toml",
            ],
            "cannot read config file",
        ),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = fleetd(args);
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr lacks {needle:?}:\n{stderr}"
        );
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[processor]\nwindow = 5\n").expect("write");
    let (ok, _, stderr) = fleetd(&["serve", "--config", bad.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[test]
fn generate_config_prints_a_loadable_default() {
    let (ok, stdout, _) = fleetd(&["generate-config"]);
    assert!(ok);
    assert!(stdout.contains("[processor]") && stdout.contains("window_ms = 1000"));
}

#[test]
fn an_mqtt_port_in_use_is_a_start_error_not_a_log_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let http = format!("127.0.0.1:{}", crate::util::free_port());
    let (ok, _, stderr) = fleetd(&[
        "serve",
        "--mqtt",
        &format!("127.0.0.1:{port}"),
        "--http",
        &http,
        "--data",
        data.to_str().expect("utf-8 path"),
    ]);
    assert!(!ok, "fleetd must not start without its MQTT port");
    assert!(
        stderr.contains(&format!("cannot listen for MQTT on 127.0.0.1:{port}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Runs `fleetd serve` with `args` and waits at most 5 s for it to exit:
/// (exited non-zero in time, stdout, stderr).
fn serve_must_fail(args: &[&str]) -> (bool, String, String) {
    serve_must_fail_with_env(args, &[])
}

/// [`serve_must_fail`] with `env` set for fleetd.
fn serve_must_fail_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = dir.path().join("out");
    let stderr = dir.path().join("err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetd"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("run fleetd");
    let started = std::time::Instant::now();
    let failed = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break !status.success();
        }
        if started.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (
        failed,
        std::fs::read_to_string(stdout).unwrap_or_default(),
        std::fs::read_to_string(stderr).unwrap_or_default(),
    )
}

#[test]
fn an_http_port_in_use_is_a_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let mqtt = format!("127.0.0.1:{}", crate::util::free_port());
    let (failed, stdout, stderr) = serve_must_fail(&[
        "--mqtt",
        &mqtt,
        "--http",
        &http,
        "--data",
        data.to_str().expect("utf-8 path"),
    ]);
    assert!(failed, "fleetd must exit non-zero within 5 s:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {http}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("fleetd ready") && !stdout.contains("open the map"));
}

#[test]
fn an_unusable_data_dir_is_a_start_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let under_file = file.join("d");
    let mut cases = vec![file.clone(), under_file];
    // Permission bits do not stop root; elsewhere a read-only directory
    // must fail too.
    let read_only = dir.path().join("read-only");
    std::fs::create_dir(&read_only).expect("mkdir");
    let mut permissions = std::fs::metadata(&read_only).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o500);
    std::fs::set_permissions(&read_only, permissions).expect("chmod");
    if std::fs::write(read_only.join("probe"), "x").is_err() {
        cases.push(read_only);
    }
    for data in cases {
        let shown = data.to_str().expect("utf-8 path");
        let (failed, stdout, stderr) = serve_must_fail(&[
            "--mqtt",
            &format!("127.0.0.1:{}", crate::util::free_port()),
            "--http",
            &format!("127.0.0.1:{}", crate::util::free_port()),
            "--data",
            shown,
        ]);
        assert!(
            failed,
            "{shown}: fleetd must exit non-zero within 5 s:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("data directory {shown}")),
            "{shown}: {stderr}"
        );
        assert!(!stderr.contains("fleetd ready") && !stdout.contains("open the map"));
    }
}

// What an operator sees: the URLs to open printed at start, log files
// without colour codes (or JSON lines on request), and `fleetd
// healthcheck` telling a ready node from one that is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_urls_plain_or_json_logs_and_a_healthcheck() {
    use crate::util::{Fleetd, free_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let osmand = format!("127.0.0.1:{}", free_port());
    let mut server = Fleetd::start(&dir.path().join("a"), &["--osmand", &osmand]).await;
    let out = server.printed();
    let http = &server.http;
    for expected in [
        format!("fleetd: open the map at {http}/#token="),
        format!("fleetd: API {http}/v1 (described at {http}/openapi.json), metrics {http}/metrics"),
        format!("mqtt://127.0.0.1:{}", server.mqtt_port),
        format!("OsmAnd http://{osmand}/"),
        format!("HTTP {http}/v1/positions"),
    ] {
        assert!(out.contains(&expected), "{expected:?} not printed:\n{out}");
    }
    let log = server.log();
    assert!(log.contains("fleetd ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );

    let addr = http.trim_start_matches("http://").to_owned();
    let (ok, _, stderr) = fleetd(&["healthcheck", "--http", &addr]);
    assert!(ok, "healthcheck of a ready node: {stderr}");
    server.crash();
    let (ok, _, stderr) = fleetd(&["healthcheck", "--http", &addr]);
    assert!(!ok, "healthcheck of a stopped node succeeded");
    assert!(stderr.contains(&addr), "names the address: {stderr}");

    let server = Fleetd::start(&dir.path().join("b"), &["--log-format", "json"]).await;
    let log = server.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 3 && log.contains("\"fleetd ready\""), "{log}");
}

// Every config key has an environment variable, FLEETD_{SECTION}__{KEY}:
// it reaches the stage that validates it, and an unknown one stops the
// start naming the variable.
#[test]
fn config_keys_can_be_set_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let (mqtt, http) = (
        format!("127.0.0.1:{}", crate::util::free_port()),
        format!("127.0.0.1:{}", crate::util::free_port()),
    );
    let base = ["--data", data, "--mqtt", &mqtt, "--http", &http];
    let (failed, _, stderr) =
        serve_must_fail_with_env(&base, &[("FLEETD_PROCESSOR__WINDOW_MS", "5")]);
    assert!(failed, "a window of 5 ms is refused");
    assert!(
        stderr.contains("processor.window_ms") && stderr.contains("got 5"),
        "{stderr}"
    );
    let (failed, _, stderr) = serve_must_fail_with_env(&base, &[("FLEETD_API__HTPP", "x")]);
    assert!(failed, "an unknown key is refused");
    assert!(
        stderr.contains("FLEETD_API__HTPP"),
        "names the variable: {stderr}"
    );
    // A good one takes effect (fleetd runs until the helper stops it).
    let (failed, _, stderr) =
        serve_must_fail_with_env(&base, &[("FLEETD_PROCESSOR__WINDOW_MS", "700")]);
    assert!(!failed, "{stderr}");
    assert!(stderr.contains("window_ms=700"), "{stderr}");
}
