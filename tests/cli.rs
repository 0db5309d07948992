//! The `fleetsim` binary as a user runs it: exit codes, error messages that
//! point into the scenario file, and Ctrl-C still writing the report.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");

fn fleetsim(args: &[&str], dir: &Path) -> Output {
    Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    name.to_owned()
}

const SMALL: &str = "name: cli
fleet:
  size: 10
arrival:
  rate: 20/s
clock:
  speedup: 86400
certificates:
  validity: 30d
telemetry:
  interval: 500ms
run:
  duration: 60s
credentials:
  storage: memory
";

#[test]
fn validate_accepts_the_quickstart_scenario() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = fleetsim(&["validate", "scenarios/quickstart.yaml"], root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn a_misspelled_field_is_reported_with_line_and_column_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let broken = SMALL.replace("  size: 10", "  sise: 10");
    let file = write(dir.path(), "broken.yaml", &broken);
    for command in ["validate", "run"] {
        let out = fleetsim(&[command, &file], dir.path());
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("broken.yaml:3:3: fleet.sise"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn a_missing_scenario_file_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleetsim(&["run", "nowhere.yaml", "--no-metrics"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.yaml"));
}

/// `fleetsim run` of a small scenario with `extra` arguments, which must
/// refuse to start (exit 2); returns what it printed.
fn cannot_start_with(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "small.yaml", SMALL);
    let mut args = vec!["run", &file, "--no-metrics"];
    args.extend_from_slice(extra);
    let out = fleetsim(&args, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn a_report_into_a_missing_folder_cannot_start() {
    let stderr = cannot_start_with(&["--report", "nodir/r.json"]);
    assert!(
        stderr.contains("--report nodir/r.json: the folder nodir does not exist"),
        "{stderr}"
    );
}

#[test]
fn an_emulator_connect_quota_is_refused_rather_than_ignored() {
    let stderr = cannot_start_with(&["--emulator-quota", "connect=1"]);
    assert!(
        stderr.contains("the emulator does not throttle MQTT connects"),
        "{stderr}"
    );
}

#[test]
fn a_metrics_address_in_use_cannot_start_and_says_so_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "small.yaml", SMALL);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = fleetsim(&["run", &file, "--metrics", &addr], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_source_address_not_on_this_machine_cannot_start() {
    // 192.0.2.0/24 is reserved for documentation: no machine has it.
    let stderr = cannot_start_with(&["--source-addresses", "192.0.2.1"]);
    assert!(
        stderr.contains("source address 192.0.2.1 cannot be used"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_stops_the_run_and_still_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "small.yaml", SMALL);
    let child = Command::new(BINARY)
        .args(["run", &file, "--no-metrics", "--report", "report.json"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("provision"),
        "the table is printed: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["devices"], 10);
    assert_eq!(report["provisioned"], 10, "all arrived and were checked");
    assert_eq!(report["bricked"], 0);
    assert!(
        report["elapsed_seconds"].as_f64().unwrap() < 30.0,
        "stopped early"
    );
}
