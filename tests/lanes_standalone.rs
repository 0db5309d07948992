//! A standalone `fleetsim emulator --lanes` holds more connections than its
//! open-file limit lets one descriptor table hold: with the hard limit of
//! this test process (and so of the emulator it starts) lowered to 320,
//! 350 devices are online against it at once, and the run's own side
//! spreads over lanes by itself.

mod support;

use std::path::Path;

use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use support::standalone::StandaloneProcess;
use tokio_util::sync::CancellationToken;

/// Soft and hard: the emulator child inherits it and cannot raise it.
const LIMIT: u64 = 320;
const DEVICES: u64 = 350;

fn scenario() -> Scenario {
    let yaml = format!(
        r#"
name: lanestandalone
fleet:
  size: {DEVICES}
  serial_pattern: "ls-{{seq:03}}"
arrival:
  rate: 50/s
rotation:
  enabled: false
run:
  duration: 25s
  step_timeout: 20s
slo:
  max_failure_ratio: 0
"#
    );
    Scenario::parse(&yaml, Path::new("lanestandalone.yaml")).expect("the test scenario is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_emulator_on_lanes_holds_more_connections_than_its_limit() {
    rlimit::Resource::NOFILE.set(LIMIT, LIMIT).unwrap();
    let state = tempfile::tempdir().unwrap();
    let emulator = StandaloneProcess::start_with(state.path(), "365d", (0, 0), &["--lanes", "3"]);
    let (tap, tapped) = tokio::sync::mpsc::unbounded_channel();
    let options = RunOptions {
        emulator: Some(state.path().to_owned()),
        recorder_tap: Some(tap),
        ..RunOptions::default()
    };
    let (sampling, watcher) = support::watch_peak_connected(tapped);
    let summary = execute(&scenario(), &options, CancellationToken::new())
        .await
        .expect("the run starts");
    sampling.cancel();
    let peak = watcher.await.unwrap();
    let report = &summary.report;
    println!("{}", report.render_table());

    assert!(summary.lanes > 0, "the run's side spread over lanes too");
    assert_eq!(
        peak, DEVICES,
        "every device online at once: more connections than the emulator's limit"
    );
    assert_eq!(report.provisioned, DEVICES);
    assert_eq!(report.devices_failed, 0);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(emulator.stop().success());
}
