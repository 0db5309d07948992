//! `fleetsim emulator` as a separate process: a Python paho-mqtt device provisions by
//! claim against it, its identity survives a crash and a restart (and a revoked one stays
//! refused), and `fleetsim run --emulator` aims a fleet at it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetsim::control::ControlPlane;
use fleetsim::standalone::EmulatorInfo;
use serde_json::Value;
use support::standalone::StandaloneProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/claim_client.py");

/// Fails (never skips) when the Python client's packages are missing: `.ci/run` installs them.
fn python(args: &[&str]) -> Output {
    let check = Command::new("python3")
        .args(["-c", "import paho.mqtt.client, cryptography"])
        .output()
        .expect("python3 is installed (the test needs it; .ci/run installs its packages)");
    assert!(
        check.status.success(),
        "python3 lacks paho-mqtt or cryptography (`pip install paho-mqtt cryptography`): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    Command::new("python3")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("python3 runs")
}

fn info_path(state: &Path) -> String {
    state.join("emulator.json").display().to_string()
}

/// Provisions one device with the Python client; returns its JSON summary.
fn python_provision(state: &Path, out: &Path, serial: &str) -> Value {
    let output = python(&[
        "provision",
        &info_path(state),
        &out.display().to_string(),
        serial,
    ]);
    assert!(
        output.status.success(),
        "python provisioning failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}

fn python_connects(state: &Path, device: &Value) -> bool {
    let output = python(&[
        "connect",
        &info_path(state),
        device["certificate"].as_str().unwrap(),
        device["key"].as_str().unwrap(),
        device["thing"].as_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON answer");
    answer["connected"].as_bool().unwrap()
}

async fn revoke(info: &EmulatorInfo, device: &Value) {
    let control = ControlPlane::for_endpoint(&info.control_url, &info.region);
    control
        .retire_certificate(
            device["thing"].as_str().unwrap(),
            device["certificate_id"].as_str().unwrap(),
        )
        .await
        .expect("revocation through the control plane");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_device_provisions_by_claim_and_its_identity_survives_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let emulator = StandaloneProcess::start(&state, "365d");
    assert_eq!(mode(&emulator.info.claim_private_key), 0o600);
    assert_eq!(mode(&state.join("ca/root-ca.key")), 0o600);

    let kept = python_provision(&state, &dir.path().join("kept"), "py-kept");
    let revoked = python_provision(&state, &dir.path().join("revoked"), "py-revoked");
    assert_eq!(kept["thing"], "fleetsim-py-kept");
    revoke(&emulator.info, &revoked).await;
    assert!(!python_connects(&state, &revoked), "refused once revoked");
    let claim_id = emulator.info.claim_certificate_id.clone();
    emulator.crash();

    let restarted = StandaloneProcess::start(&state, "365d");
    assert!(
        python_connects(&state, &kept),
        "provisioned before the crash"
    );
    assert!(
        !python_connects(&state, &revoked),
        "revoked before the crash"
    );
    assert_eq!(restarted.info.claim_certificate_id, claim_id, "claim kept");
    let after = python_provision(&state, &dir.path().join("after"), "py-after");
    assert!(restarted.stop().success(), "SIGTERM stops it cleanly");

    let again = StandaloneProcess::start(&state, "365d");
    for device in [&kept, &after] {
        assert!(
            python_connects(&state, device),
            "{device} after a clean stop"
        );
    }
    assert!(!python_connects(&state, &revoked));
    drop(again);
}

#[test]
fn a_second_emulator_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = StandaloneProcess::start(dir.path(), "365d");
    let second = Command::new(BINARY)
        .args([
            "emulator",
            "--mqtt-port",
            "0",
            "--control-port",
            "0",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("the binary runs");
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another emulator is using"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
}

fn scenario(dir: &Path, validity: &str, size: u32, duration: &str) -> PathBuf {
    let text = format!(
        "name: standalone
fleet:
  size: {size}
arrival:
  rate: 50/s
certificates:
  validity: {validity}
rotation:
  check_every: 500ms
  renew_before: 3s
telemetry:
  interval: 500ms
run:
  duration: {duration}
credentials:
  dir: {}
slo:
  min_rotations_per_device: 1
",
        dir.join("certs").display()
    );
    let path = dir.join(format!("{validity}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run_against(state: &Path, scenario: &Path, report: &Path) -> Output {
    Command::new(BINARY)
        .arg("run")
        .arg(scenario)
        .args(["--no-metrics", "--emulator"])
        .arg(state)
        .arg("--report")
        .arg(report)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[test]
fn fleetsim_run_targets_a_running_standalone_emulator_and_rotates_there() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let emulator = StandaloneProcess::start(&state, "6s");
    let report_path = dir.path().join("report.json");

    let out = run_against(&state, &scenario(dir.path(), "6s", 8, "9s"), &report_path);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    assert!(!stderr.contains("different real validity"), "{stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["provisioned"], 8);
    assert_eq!(report["bricked"], 0);
    assert!(report["rotations"]["per_device_min"].as_u64().unwrap() >= 1);
    assert_eq!(report["retired_still_accepted"], 0);
    assert!(emulator.stop().success());
}

#[test]
fn a_run_whose_validity_differs_from_the_emulators_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _emulator = StandaloneProcess::start(&state, "1h");

    let out = run_against(
        &state,
        &scenario(dir.path(), "6s", 1, "1s"),
        &dir.path().join("report.json"),
    );

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("different real validity"), "{stderr}");
    assert!(stderr.contains("1h") && stderr.contains("6s"), "{stderr}");
}
