//! `report merge` on hand-built shard reports whose merged figures are known:
//! percentiles come from the added histograms (not from averaging the
//! shards' percentiles), counts add up, the per-device rotation mean is
//! weighted by devices, every objective is judged again, and the command's
//! exit code and errors follow `fleetsim run`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fleetsim::observe::merge::{MergeError, NamedReport, ShardInfo, merge};
use fleetsim::observe::{DeviceState, FailureReason, FinalCheck, Op, Recorder, Report};
use fleetsim::scenario::Slo;
use hdrhistogram::Histogram;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");

/// Connect p99 at most 1.8 ms, failure ratio at most 0.3, at least 2
/// rotations per device.
fn slo() -> Slo {
    Slo {
        connect_p99: Some(Duration::from_micros(1800)),
        provisioning_p99: Some(Duration::from_millis(100)),
        max_failure_ratio: Some(0.3),
        min_rotations_per_device: Some(2),
    }
}

fn shard(index: u32, report: Report) -> NamedReport {
    let report = Report {
        shard: Some(ShardInfo {
            index,
            count: 2,
            fleet_devices: 4,
        }),
        ..report
    };
    NamedReport {
        name: format!("shard-{index}.json"),
        report,
    }
}

fn record(recorder: &Recorder, op: Op, micros: u64, times: usize) {
    for _ in 0..times {
        recorder.record(op, Duration::from_micros(micros));
    }
}

/// Shard 0: three devices, 80 connects at 1 ms, provisions at 10 ms and 40 ms,
/// three rotations each, two connect timeouts. Passes its objectives alone.
fn shard_zero() -> NamedReport {
    let recorder = Recorder::new("merge");
    record(&recorder, Op::Connect, 1_000, 80);
    record(&recorder, Op::Provision, 10_000, 99);
    record(&recorder, Op::Provision, 40_000, 1);
    recorder.failure(Op::Connect, FailureReason::Timeout);
    recorder.failure(Op::Connect, FailureReason::Timeout);
    let check = FinalCheck {
        devices: 3,
        provisioned: 3,
        rotations_per_device: vec![3, 3, 3],
        ..FinalCheck::default()
    };
    let report = Report::build(&recorder, &slo(), &check, Duration::from_secs(10)).unwrap();
    assert!(report.passed(), "shard 0 alone passes");
    shard(0, report)
}

/// Shard 1: one device that failed, 15 connects at 1.5 ms and 5 at 2 ms,
/// provisions at 20 ms, one rotation, one connect timeout and four publish
/// connection failures; a longer run.
fn shard_one() -> NamedReport {
    let recorder = Recorder::new("merge");
    record(&recorder, Op::Connect, 1_500, 15);
    record(&recorder, Op::Connect, 2_000, 5);
    record(&recorder, Op::Provision, 20_000, 100);
    recorder.failure(Op::Connect, FailureReason::Timeout);
    for _ in 0..4 {
        recorder.failure(Op::Publish, FailureReason::Connection);
    }
    recorder.device_state(None, DeviceState::Failed);
    let check = FinalCheck {
        devices: 1,
        provisioned: 1,
        rotations_per_device: vec![1],
        ..FinalCheck::default()
    };
    shard(
        1,
        Report::build(&recorder, &slo(), &check, Duration::from_secs(12)).unwrap(),
    )
}

fn verdict(report: &Report, name: &str) -> (Option<f64>, bool) {
    let verdict = report.slo.iter().find(|v| v.name == name).unwrap();
    (verdict.measured, verdict.passed)
}

#[test]
fn merged_percentiles_come_from_the_added_histograms() {
    let merged = merge(&[shard_zero(), shard_one()]).unwrap();
    let connect = merged.operation(Op::Connect).unwrap();
    assert_eq!(connect.count, 100);
    assert_eq!(connect.p50_ms, Some(1.0));
    assert_eq!(connect.p90_ms, Some(1.5));
    assert_eq!(connect.p99_ms, Some(2.0));
    assert_eq!(connect.max_ms, Some(2.0));

    // Provision: shard p99s are 10 ms (shard 0) and 20 ms (shard 1); the
    // fleet's p99 is the 198th of 200 samples, 20 ms, not their mean.
    let mut raw = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    raw.record_n(10_000, 99).unwrap();
    raw.record(40_000).unwrap();
    raw.record_n(20_000, 100).unwrap();
    let provision = merged.operation(Op::Provision).unwrap();
    assert_eq!(provision.histogram().unwrap(), raw, "lossless");
    let p99_ms = raw.value_at_quantile(0.99) as f64 / 1000.0;
    assert_eq!(provision.p99_ms, Some((p99_ms * 1000.0).round() / 1000.0));
    assert!((19.9..20.1).contains(&provision.p99_ms.unwrap()));
    assert_eq!(provision.max_ms, Some(raw.max() as f64 / 1000.0));
}

#[test]
fn merged_counts_are_sums_and_the_rotation_mean_is_weighted_by_devices() {
    let merged = merge(&[shard_zero(), shard_one()]).unwrap();
    assert_eq!(merged.run, "merge");
    assert_eq!(
        merged.shard, None,
        "the merged report covers the whole fleet"
    );
    assert_eq!(
        (merged.devices, merged.provisioned, merged.devices_failed),
        (4, 4, 1)
    );
    assert_eq!(merged.elapsed_seconds, 12.0, "shards run side by side");
    let failures: Vec<_> = merged
        .failures
        .iter()
        .map(|f| (f.op.as_str(), f.reason.as_str(), f.count))
        .collect();
    assert_eq!(
        failures,
        [("connect", "timeout", 3), ("publish", "connection", 4)]
    );
    assert_eq!(merged.operation(Op::Connect).unwrap().failures, 3);
    assert_eq!(
        merged.rotations.total, 0,
        "no rotation counter was recorded"
    );
    assert_eq!(merged.rotations.per_device_min, Some(1));
    assert_eq!(merged.rotations.per_device_mean, Some(2.5));
    assert_eq!(
        merged.operation(Op::Connect).unwrap().throughput_per_second,
        8.333
    );
}

#[test]
fn every_objective_is_judged_again_on_the_fleet() {
    let merged = merge(&[shard_zero(), shard_one()]).unwrap();
    assert_eq!(verdict(&merged, "connect_p99"), (Some(2.0), false));
    assert_eq!(verdict(&merged, "max_failure_ratio"), (Some(0.25), true));
    assert_eq!(
        verdict(&merged, "min_rotations_per_device"),
        (Some(1.0), false)
    );
    assert_eq!(merged.slo.last().unwrap().measured, Some(0.0));
    assert!(!merged.passed && !merged.passed());
    let thresholds: Vec<f64> = merged.slo.iter().map(|v| v.threshold).collect();
    assert_eq!(thresholds, [1.8, 100.0, 0.3, 2.0, 0.0]);
}

#[test]
fn a_merged_report_survives_json() {
    let merged = merge(&[shard_one(), shard_zero()]).unwrap();
    let again = Report::from_json(&merged.to_json_pretty().unwrap()).unwrap();
    assert_eq!(again, merged);
}

#[test]
fn reports_of_another_run_a_missing_shard_or_a_repeated_shard_are_refused() {
    let mut other = shard_one();
    other.report.run = "other".into();
    let error = merge(&[shard_zero(), other]).unwrap_err();
    assert!(matches!(error, MergeError::Mismatch { .. }));
    assert_eq!(
        error.to_string(),
        "shard-1.json: run `other` differs from `merge` in shard-0.json; reports of different runs cannot be merged"
    );

    let error = merge(&[shard_one()]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "shards [0] of 2 are missing; merge needs every shard of the run"
    );

    let error = merge(&[shard_zero(), shard_one(), shard_zero()]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "shard-0.json: shard 0/2 is also in shard-0.json"
    );

    let mut stricter = shard_one();
    stricter.report.slo[0].threshold = 1.0;
    let error = merge(&[shard_zero(), stricter]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("shard-1.json: objectives `connect_p99 AtMost 1 ms;")
    );
}

#[test]
fn the_key_exchange_is_kept_when_shards_agree_and_refused_when_they_differ() {
    let with_group = |mut named: NamedReport, group: &str| {
        named.report.key_exchange = Some(group.to_owned());
        named
    };
    let merged = merge(&[
        with_group(shard_zero(), "secp256r1"),
        with_group(shard_one(), "secp256r1"),
    ])
    .unwrap();
    assert_eq!(merged.key_exchange.as_deref(), Some("secp256r1"));
    assert!(merged.render_table().contains("secp256r1 key exchange"));

    let error = merge(&[
        with_group(shard_zero(), "secp256r1"),
        with_group(shard_one(), "x25519"),
    ])
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "shard-1.json: key exchange `x25519` differs from `secp256r1` in shard-0.json; reports of different runs cannot be merged"
    );
}

fn write(dir: &Path, named: &NamedReport) -> String {
    let path = dir.join(&named.name);
    std::fs::write(&path, named.report.to_json_pretty().unwrap()).unwrap();
    path.display().to_string()
}

fn fleetsim(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

#[test]
fn report_merge_exits_1_when_the_fleet_misses_an_objective_and_writes_the_merged_json() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        write(dir.path(), &shard_zero()),
        write(dir.path(), &shard_one()),
    );
    let output = dir.path().join("fleet.json");
    let out = fleetsim(&[
        "report",
        "merge",
        &a,
        &b,
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("run merge: 12.0 s, 4 devices, 4 provisioned, 1 failed"));
    let written = Report::from_json(&std::fs::read_to_string(output).unwrap()).unwrap();
    assert_eq!(written, merge(&[shard_zero(), shard_one()]).unwrap());
}

#[test]
fn report_merge_exits_0_when_the_fleet_holds_every_objective() {
    let dir = tempfile::tempdir().unwrap();
    let lenient = |mut named: NamedReport| {
        named.report.slo.retain(|v| v.name == "max_failure_ratio");
        named
    };
    let a = write(dir.path(), &lenient(shard_zero()));
    let b = write(dir.path(), &lenient(shard_one()));
    let out = fleetsim(&["report", "merge", &a, &b]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("result: PASS"));
}

#[test]
fn report_merge_exits_2_naming_the_file_it_cannot_read_or_parse() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), &shard_zero());
    let missing = dir.path().join("absent.json").display().to_string();
    let out = fleetsim(&["report", "merge", &a, &missing]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{missing}: cannot read report")),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"run\": 3}").unwrap();
    let garbage = garbage.display().to_string();
    let out = fleetsim(&["report", "merge", &a, &garbage]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{garbage}: not a fleetsim report")),
        "{stderr}"
    );
}
