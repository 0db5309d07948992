//! A standalone `fleetsim emulator --lanes` holds more connections than its
//! open-file limit lets one descriptor table hold: with the hard limit of
//! this test process (and so of the emulator it starts) lowered to 320,
//! 350 devices are online against it at once, and the run's own side
//! spreads over lanes by itself.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetsim::observe::{DeviceState, Recorder};
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

/// The most devices the recorder saw online at once, sampled until `stop`.
async fn peak_online(recorder: Arc<Recorder>, stop: CancellationToken) -> u64 {
    let mut peak = 0;
    loop {
        peak = peak.max(recorder.snapshot().devices(DeviceState::Online));
        tokio::select! {
            _ = stop.cancelled() => return peak,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_emulator_on_lanes_holds_more_connections_than_its_limit() {
    rlimit::Resource::NOFILE.set(LIMIT, LIMIT).unwrap();
    let state = tempfile::tempdir().unwrap();
    let emulator = StandaloneProcess::start_with(state.path(), "365d", (0, 0), &["--lanes", "3"]);
    let (tap, mut tapped) = tokio::sync::mpsc::unbounded_channel();
    let options = RunOptions {
        emulator: Some(state.path().to_owned()),
        recorder_tap: Some(tap),
        ..RunOptions::default()
    };
    let sampling = CancellationToken::new();
    let watcher = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let recorder = tapped.recv().await.expect("the run taps its recorder");
            peak_online(recorder, sampling).await
        }
    });
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
