//! Smoke runs of every `fleetsim bench` kind through the binary, with tiny
//! fleets and seconds of work, so the benchmarks keep working. They check
//! the JSON's fields and that the numbers are there and non-zero, never how
//! fast anything was: speed is for BENCHMARKS.md, not for tests.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `fleetsim bench <args>` writing into `dir`, and returns its JSON.
fn bench(dir: &Path, args: &[&str]) -> Value {
    let output_path = dir.join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .arg("bench")
        .args(args)
        .arg("--output")
        .arg(&output_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("fleetsim runs");
    assert!(
        output.status.success(),
        "fleetsim bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(&output_path).expect("results are written");
    let printed: Value = serde_json::from_slice(&output.stdout).expect("stdout is the JSON");
    let results: Value = serde_json::from_str(&written).expect("the file is JSON");
    assert_eq!(
        printed, results,
        "stdout and the file hold the same results"
    );
    results
}

fn positive(value: &Value, field: &str) -> f64 {
    let number = value[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is a number in {value:#}"));
    assert!(number > 0.0, "{field} is {number}");
    number
}

fn host_is_described(results: &Value, field: &str) {
    assert!(results[field]["cores"].as_u64().is_some_and(|c| c >= 1));
    assert_eq!(
        results[field]["load_average"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn the_crypto_ceiling_is_measured_for_every_key_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let results = bench(dir.path(), &["crypto", "--seconds", "0.2"]);
    host_is_described(&results, "host");
    let ceilings = results["ceilings"].as_array().expect("a list of ceilings");
    let names: Vec<&str> = ceilings
        .iter()
        .filter_map(|c| c["key_exchange"].as_str())
        .collect();
    assert_eq!(names, ["x25519", "secp256r1", "x25519mlkem768"]);
    for ceiling in ceilings {
        for field in [
            "provisionings_per_second",
            "rotations_per_second",
            "handshake_us",
            "refused_handshake_us",
            "key_and_csr_us",
            "sign_csr_us",
        ] {
            positive(ceiling, field);
        }
    }
}

#[test]
fn a_small_fleet_provisions_idles_and_rotates_with_its_ceiling_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let results = bench(
        dir.path(),
        &[
            "provision",
            "--devices",
            "12",
            "--rate",
            "40",
            "--ceiling-seconds",
            "0.2",
        ],
    );
    host_is_described(&results, "host_before");
    assert_eq!(results["devices"], 12);
    assert_eq!(results["failures"], 0, "{results:#}");
    assert_eq!(
        results["failure_reasons"],
        serde_json::json!([]),
        "no reason without a failure"
    );
    assert_eq!(results["bricked"], 0);
    positive(&results, "first_online_seconds");
    positive(&results, "all_online_seconds");
    positive(&results, "provisioning_per_second");
    positive(&results, "provisioning_vs_ceiling");
    positive(&results, "rotations_per_second");
    positive(&results, "rotation_vs_ceiling");
    positive(&results["ceiling"], "provisionings_per_second");
    positive(&results["ceiling_after"], "provisionings_per_second");
    positive(&results["memory"], "process_kib_online");
    let steps: Vec<&str> = results["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["op"].as_str())
        .collect();
    for op in [
        "claim_connect",
        "create_certificate",
        "register_thing",
        "provision",
        "rotate",
    ] {
        assert!(steps.contains(&op), "{op} is among {steps:?}");
    }
    let provision = results["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "provision")
        .unwrap();
    assert_eq!(provision["count"], 12);
    assert!(provision["p99_ms"].as_f64().unwrap() >= provision["p50_ms"].as_f64().unwrap());
}

#[test]
fn memory_is_read_apart_for_the_fleet_and_a_standalone_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let results = bench(dir.path(), &["memory", "--devices", "10", "--rate", "50"]);
    assert_eq!(results["emulator"], "standalone");
    assert_eq!(results["failures"], 0, "{results:#}");
    let memory = &results["memory"];
    for field in [
        "process_kib_online",
        "emulator_kib_before",
        "emulator_kib_online",
    ] {
        positive(memory, field);
    }
    assert!(memory["emulator_kib_per_device"].as_f64().is_some());
}

#[test]
fn telemetry_counts_acknowledged_messages_and_their_latency() {
    let dir = tempfile::tempdir().unwrap();
    let results = bench(
        dir.path(),
        &[
            "telemetry",
            "--devices",
            "10",
            "--rate",
            "50",
            "--interval",
            "100ms",
            "--seconds",
            "2",
        ],
    );
    positive(&results, "telemetry_messages_per_second");
    let window = &results["telemetry_window"];
    positive(window, "messages");
    assert!(window["p99_ms"].as_f64().unwrap() >= window["p50_ms"].as_f64().unwrap());
    let publish = results["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["op"] == "publish")
        .expect("a publish step");
    positive(publish, "p99_ms");
}

#[test]
fn the_emulator_and_mosquitto_serve_the_same_fleet_side_by_side() {
    if Command::new("mosquitto").arg("-h").output().is_err() {
        panic!("mosquitto is not installed: `bash .ci/run` installs Debian's mosquitto");
    }
    let dir = tempfile::tempdir().unwrap();
    let results = bench(
        dir.path(),
        &["mosquitto", "--devices", "8", "--messages", "3"],
    );
    for broker in ["emulator", "mosquitto"] {
        let side = &results[broker];
        assert_eq!(side["failed_connections"], 0, "{results:#}");
        positive(side, "connections_per_second");
        positive(side, "messages_per_second");
        positive(side, "rss_kib_connected");
    }
    positive(&results, "connection_rate_ratio");
    positive(&results, "message_rate_ratio");
    assert!(
        results["mosquitto_version"]
            .as_str()
            .unwrap()
            .contains("mosquitto")
    );
}

#[test]
fn micro_benchmarks_report_a_cost_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let results = bench(dir.path(), &["micro", "--ops", "200"]);
    let micro = results["micro"].as_array().expect("a list");
    assert_eq!(micro.len(), 5);
    for one in micro {
        positive(one, "ns_per_op");
    }
}

#[test]
fn an_unknown_bench_kind_is_refused_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .args(["bench", "warp"])
        .output()
        .expect("fleetsim runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("'warp'") && stderr.contains("fleetsim bench"),
        "{stderr}"
    );
}

#[test]
fn a_fleet_beyond_any_open_file_limit_is_refused_with_the_numbers() {
    // Ten million devices need 22.5 million sockets in-process (two per
    // device, a quarter more while rotating): more than the kernel lets one
    // descriptor table have, root or not, and more than the most descriptor
    // lanes hold, so this never starts.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("huge.yaml");
    std::fs::write(
        &scenario,
        "name: huge\nfleet: { size: 10000000 }\narrival: { rate: 1/s }\nrun: { duration: 1s }\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .args(["run", "--no-metrics"])
        .arg(&scenario)
        .output()
        .expect("fleetsim runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("22500000 connections need about 22501024 open files")
            && stderr.contains("cannot be raised"),
        "{stderr}"
    );
}
