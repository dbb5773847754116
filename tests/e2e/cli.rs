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
