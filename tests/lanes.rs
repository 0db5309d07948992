//! Descriptor lanes through the public interface: with this test process's
//! open-file limit lowered below what its fleet needs, a run spreads its
//! sockets over lanes by itself and provisions, rotates and checks every
//! device; and each lane really holds a table of its own, as full as the
//! limit allows, while the process's own table stops at the limit.

mod support;

use std::net::TcpListener;
use std::path::Path;

use fleetsim::identity::store::CredentialStore;
use fleetsim::lanes::Lanes;
use fleetsim::observe::faults::FaultKind;
use fleetsim::run::{RunOptions, connections_needed, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// Lower than the sockets the fleet below holds at once: 200 devices online
/// are 400 sockets with the emulator in this process.
const LIMIT: u64 = 320;

fn lower_open_file_limit() {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(LIMIT, hard).unwrap();
}

fn scenario(dir: &Path) -> Scenario {
    // One simulated day lasts 0.2 real seconds: certificates of 60 days
    // last 12 s and are renewed from 20 days before expiry, so every device
    // rotates about 8 s after it was provisioned.
    let yaml = format!(
        r#"
name: lanes
fleet:
  size: 200
  serial_pattern: "lane-{{seq:03}}"
arrival:
  rate: 50/s
clock:
  speedup: 432000
certificates:
  validity: 60d
rotation:
  check_every: 12h
  renew_before: 20d
  jitter: 6h
run:
  duration: 30s
  step_timeout: 20s
credentials:
  storage: disk
  dir: "{}"
slo:
  max_failure_ratio: 0
  min_rotations_per_device: 1
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("lanes.yaml")).expect("the test scenario is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_larger_than_the_open_file_limit_runs_over_lanes_by_itself() {
    lower_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path());
    let (tap, tapped) = tokio::sync::mpsc::unbounded_channel();
    let options = RunOptions {
        recorder_tap: Some(tap),
        ..RunOptions::default()
    };
    assert!(
        connections_needed(&scenario, &options) > LIMIT,
        "the fleet must not fit one table"
    );
    let (sampling, watcher) = support::watch_peak_connected(tapped);
    let summary = execute(&scenario, &options, CancellationToken::new())
        .await
        .expect("the run starts");
    sampling.cancel();
    let peak = watcher.await.unwrap();
    let report = &summary.report;
    println!("{}", report.render_table());

    assert_eq!(
        summary.lanes, 3,
        "450 connections in tables of 240 each, two thirds full"
    );
    assert!(
        peak * 2 > LIMIT,
        "{peak} devices online at once hold more sockets than one table allows"
    );
    assert_eq!(report.provisioned, 200);
    assert_eq!(report.devices_failed, 0);
    assert_eq!(report.bricked, 0);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.rotations.per_device_min >= Some(1));
    assert_eq!(report.retired_still_accepted, 0);
    assert!(report.passed());
    // Every device wrote its files from its lane; they hold the identity
    // the device ended with.
    let store = CredentialStore::disk(summary.credentials_dir.as_ref().unwrap()).unwrap();
    for outcome in &summary.outcomes {
        let stored = store
            .load(&outcome.serial)
            .await
            .unwrap()
            .expect("credentials on disk");
        assert_eq!(Some(&stored.current), outcome.current.as_ref());
    }
}

/// Listeners one table takes before the limit refuses another.
fn fill(listeners: &mut Vec<TcpListener>) -> std::io::Error {
    loop {
        match TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => listeners.push(listener),
            Err(error) => return error,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lane_fills_a_table_of_its_own_up_to_the_limit() {
    lower_open_file_limit();
    let lanes = Lanes::start(3).expect("lanes start");
    let mut filled = Vec::new();
    for lane in lanes.handles() {
        // Held on the lane until the end of the test: a descriptor opened
        // on a lane must be closed there too.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let counted = lane.spawn(async move {
            let mut listeners = Vec::new();
            let refused = fill(&mut listeners);
            let count = listeners.len() as u64;
            tokio::spawn(async move {
                let _ = held_rx.await;
                drop(listeners);
            });
            (count, refused.raw_os_error())
        });
        filled.push((counted.await.unwrap(), held_tx));
    }
    let mut here = Vec::new();
    let refused_here = fill(&mut here);
    let here_count = here.len() as u64;
    drop(here);

    const EMFILE: i32 = 24;
    assert_eq!(refused_here.raw_os_error(), Some(EMFILE));
    assert!(
        here_count < LIMIT,
        "this runtime's table stops at the limit"
    );
    let in_lanes: u64 = filled.iter().map(|((count, _), _)| count).sum();
    for ((count, refused), _) in &filled {
        assert_eq!(*refused, Some(EMFILE));
        assert!(*count > LIMIT / 2, "a lane held only {count}");
    }
    assert!(
        in_lanes + here_count > 3 * LIMIT,
        "{in_lanes} in the lanes and {here_count} here: more than three limits' worth at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_drops_and_an_emulator_restart_keep_every_identity_across_lanes() {
    lower_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    // 30-day certificates last 6 real seconds and are renewed 4 s after
    // issue; devices crash, lose connections at the named steps, and the
    // emulator (accepting on every lane) goes down for a second.
    let month = support::MONTH_IN_SIX_SECONDS;
    let yaml = format!(
        r#"
name: lanefaults
fleet:
  size: 30
  serial_pattern: "lf-{{seq:03}}"
arrival:
  rate: 6/s
{month}  jitter: 6h
telemetry:
  interval: 500ms
  qos: 1
run:
  duration: 16s
  step_timeout: 5s
  backoff_base: 50ms
  backoff_max: 500ms
  max_attempts: 12
credentials:
  storage: disk
  dir: "{}"
faults:
  crash:
    rate: 20/min
    max_per_device: 3
  drops:
    rate: 0.02
    at: [after_certificate, after_store, after_reconnect]
  emulator_restart:
    at: 5s
    down_for: 1s
"#,
        dir.path().display()
    );
    let scenario = Scenario::parse(&yaml, Path::new("lanefaults.yaml")).unwrap();
    let options = RunOptions {
        lanes: Some(3),
        ..RunOptions::default()
    };
    let summary = execute(&scenario, &options, CancellationToken::new())
        .await
        .expect("the run starts");
    let report = &summary.report;
    println!("{}", report.render_table());

    assert_eq!(summary.lanes, 3);
    assert_eq!(
        report.provisioned, 30,
        "every device ends on a working identity"
    );
    assert_eq!(report.devices_failed, 0);
    assert_eq!(report.bricked, 0);
    assert_eq!(report.retired_still_accepted, 0);
    assert!(
        report.rotations.total > 30,
        "rotations went on after the restart"
    );
    let faults = report.faults.as_ref().expect("a faults section");
    assert_eq!(faults.injected(FaultKind::EmulatorRestart), 1);
    assert!(faults.injected(FaultKind::Crash) > 0);
    assert!(faults.injected(FaultKind::DropAfterReconnect) > 0);
}
