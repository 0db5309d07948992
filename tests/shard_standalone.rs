//! Three shard processes against one standalone emulator process: together
//! they are the fleet, device for device, nobody is provisioned twice, and
//! `fleetsim report merge` sums their counts and reads its percentiles from
//! the combined samples.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fleetsim::control::ControlPlane;
use fleetsim::observe::{Op, Report};
use fleetsim::standalone::EmulatorInfo;
use support::standalone::StandaloneProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const FLEET: u64 = 30;
const SHARDS: u32 = 3;

fn start_emulator(state: &Path) -> (StandaloneProcess, EmulatorInfo) {
    let emulator = StandaloneProcess::start(state, "5s");
    let info = emulator.info.clone();
    (emulator, info)
}

fn scenario(dir: &Path) -> PathBuf {
    // 30 simulated days are the emulator's 5 real seconds at this speedup.
    let text = format!(
        "name: sharded
fleet:
  size: {FLEET}
  serial_pattern: \"sh-{{seq:03}}\"
arrival:
  rate: 30/s
clock:
  speedup: 518400
certificates:
  validity: 30d
rotation:
  check_every: 6h
  renew_before: 12d
telemetry:
  interval: 500ms
run:
  duration: 9s
credentials:
  dir: {}
slo:
  max_failure_ratio: 0
  min_rotations_per_device: 1
",
        dir.join("certs").display()
    );
    let path = dir.join("sharded.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn report(path: &Path) -> Report {
    Report::from_json(&std::fs::read_to_string(path).unwrap()).expect("a report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_against_one_emulator_are_the_fleet_once_and_merge_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (_emulator, info) = start_emulator(&state);
    let scenario = scenario(dir.path());

    let shards: Vec<(Child, PathBuf)> = (0..SHARDS)
        .map(|index| {
            let report = dir.path().join(format!("shard-{index}.json"));
            let child = Command::new(BINARY)
                .arg("run")
                .arg(&scenario)
                .args(["--no-metrics", "--shard", &format!("{index}/{SHARDS}")])
                .arg("--emulator")
                .arg(&state)
                .arg("--report")
                .arg(&report)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the binary runs");
            (child, report)
        })
        .collect();
    let mut paths = Vec::new();
    for (child, path) in shards {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        paths.push(path);
    }
    let reports: Vec<Report> = paths.iter().map(|p| report(p)).collect();

    // Disjoint slices whose union is the fleet.
    let sizes: Vec<u64> = reports.iter().map(|r| r.devices).collect();
    assert_eq!(sizes.iter().sum::<u64>(), FLEET, "{sizes:?}");
    assert_eq!(reports.iter().map(|r| r.provisioned).sum::<u64>(), FLEET);

    // The emulator saw each device once: one thing per serial, and one
    // certificate per provisioning plus one per rotation (plus the claim).
    let control = ControlPlane::for_endpoint(&info.control_url, &info.region);
    let things = list_things(&control).await;
    let mut expected: Vec<String> = (0..FLEET).map(|k| format!("fleetsim-sh-{k:03}")).collect();
    expected.sort();
    assert_eq!(things, expected);
    let rotations: u64 = reports.iter().map(|r| r.rotations.total).sum();
    let certificates = count_certificates(&control).await;
    assert_eq!(
        certificates,
        FLEET + rotations + 1,
        "no device provisioned twice"
    );

    // report merge: sums, and percentiles of the combined samples.
    let merged_path = dir.path().join("fleet.json");
    let out = Command::new(BINARY)
        .args(["report", "merge"])
        .args(&paths)
        .arg("--output")
        .arg(&merged_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = report(&merged_path);
    assert_eq!(merged.devices, FLEET);
    assert_eq!(merged.provisioned, FLEET);
    assert_eq!(merged.rotations.total, rotations);
    for op in [Op::Provision, Op::Connect, Op::Rotate, Op::Publish] {
        let mut combined = reports[0].operation(op).unwrap().histogram().unwrap();
        for shard in &reports[1..] {
            combined
                .add(shard.operation(op).unwrap().histogram().unwrap())
                .unwrap();
        }
        let merged_op = merged.operation(op).unwrap();
        assert_eq!(merged_op.count, combined.len(), "{op:?}");
        assert_eq!(merged_op.histogram().unwrap(), combined, "{op:?}");
        let p99_ms = combined.value_at_quantile(0.99) as f64 / 1000.0;
        let reported = merged_op.p99_ms.unwrap();
        assert!(
            (reported - p99_ms).abs() < 0.01,
            "{op:?}: {reported} vs {p99_ms}"
        );
    }
}

async fn list_things(control: &ControlPlane) -> Vec<String> {
    let mut names = Vec::new();
    let mut pages = control.client().list_things().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.expect("ListThings answers");
        names.extend(
            page.things()
                .iter()
                .filter_map(|t| t.thing_name().map(str::to_owned)),
        );
    }
    names.sort();
    names
}

async fn count_certificates(control: &ControlPlane) -> u64 {
    let mut count = 0;
    let mut pages = control.client().list_certificates().into_paginator().send();
    while let Some(page) = pages.next().await {
        count += page.expect("ListCertificates answers").certificates().len() as u64;
    }
    count
}
