//! The emulator restarted in the middle of a run: a `fleetsim emulator`
//! process is killed with SIGKILL while a fleet provisions and rotates
//! against it, and started again on the same state directory and ports.
//! The run goes on: devices reconnect with backoff, every certificate the
//! emulator issued before the kill is still known after it, and the
//! end-of-run check finds no bricked device and no retired certificate
//! that still works.

mod support;

use std::path::Path;
use std::time::Duration;

use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use support::standalone::StandaloneProcess;
use tokio_util::sync::CancellationToken;

fn scenario(dir: &Path) -> Scenario {
    // 30 simulated days are 6 real seconds, as the emulator issues them.
    let month = support::MONTH_IN_SIX_SECONDS;
    let yaml = format!(
        r#"
name: restart
fleet:
  size: 20
  serial_pattern: "rs-{{seq:03}}"
arrival:
  rate: 4/s
{month}  jitter: 6h
telemetry:
  interval: 500ms
run:
  duration: 18s
  step_timeout: 5s
  backoff_base: 100ms
  backoff_max: 1s
  max_attempts: 30
credentials:
  storage: disk
  dir: "{}"
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("restart.yaml")).unwrap()
}

fn control_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_emulator_killed_and_restarted_mid_run() {
    let state = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let first = StandaloneProcess::start(state.path(), "6s");
    let (mqtt, control) = (first.info.mqtt_port, control_port(&first.info.control_url));
    let options = RunOptions {
        emulator: Some(state.path().to_owned()),
        ..RunOptions::default()
    };
    let scenario = scenario(certs.path());
    let state_dir = state.path().to_owned();
    // Kill the emulator while devices are still arriving and the first
    // ones rotate, then bring it back on the same ports after a pause.
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(6));
        first.crash();
        std::thread::sleep(Duration::from_secs(1));
        StandaloneProcess::start_on(&state_dir, "6s", mqtt, control)
    });
    let summary = execute(&scenario, &options, CancellationToken::new())
        .await
        .expect("the run starts");
    let second = restarter.await.unwrap();
    let report = &summary.report;
    println!("{}", report.render_table());

    assert_eq!(second.info.mqtt_port, mqtt, "the endpoint did not move");
    assert_eq!(
        report.provisioned, 20,
        "every device ends on a working identity"
    );
    assert_eq!(report.devices_failed, 0);
    assert_eq!(report.bricked, 0);
    assert_eq!(report.retired_still_accepted, 0);
    assert!(
        report.rotations.total > 20,
        "rotations went on after the restart"
    );
    let lost: u64 = report
        .failures
        .iter()
        .filter(|f| {
            f.reason == "connection" || f.reason == "timeout" || f.reason == "control_plane"
        })
        .map(|f| f.count)
        .sum();
    assert!(lost > 0, "the kill was felt: {:?}", report.failures);
    second.stop();
}
