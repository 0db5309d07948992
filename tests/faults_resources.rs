//! Nothing leaks from a run: after a run with dropped connections and
//! crashes, the emulator holds no connection, and once it is shut down the
//! process is back to the tokio tasks and file descriptors it had before
//! the run started.

mod support;

use std::path::Path;
use std::time::Duration;

use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

fn scenario(dir: &Path, name: &str) -> Scenario {
    let month = support::MONTH_IN_SIX_SECONDS;
    let yaml = format!(
        r#"
name: {name}
fleet:
  size: 20
arrival:
  rate: 40/s
{month}telemetry:
  interval: 300ms
run:
  duration: 7s
  backoff_base: 50ms
  backoff_max: 500ms
  max_attempts: 12
credentials:
  storage: disk
  dir: "{}"
faults:
  drops:
    rate: 0.05
    at: [after_certificate, after_store, after_reconnect]
  crash:
    rate: 20/min
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("leak.yaml")).unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    Handle::current().metrics().num_alive_tasks()
}

/// Runs once and shuts the emulator down after checking it holds no
/// connection.
async fn run_and_shut_down(dir: &Path, name: &str) {
    let summary = execute(
        &scenario(dir, name),
        &RunOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("the run starts");
    assert_eq!(summary.report.bricked, 0);
    let emulator = summary.emulator.expect("the local target runs an emulator");
    settle("the emulator's connections", 0, || {
        emulator.connection_count()
    })
    .await;
    emulator.shutdown().await;
}

/// Waits (event by event, up to a generous deadline) for `count` to come
/// down to `limit`, then asserts it. At most, not exactly: something the
/// warm-up run left winding down when the limit was read may end later.
async fn settle(what: &str, limit: usize, count: impl Fn() -> usize) {
    for _ in 0..300 {
        if count() <= limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = count();
    assert!(
        left <= limit,
        "{what} did not return to their starting count: {left} > {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_run_leaves_no_connection_task_or_file_descriptor_behind() {
    let dir = tempfile::tempdir().unwrap();
    // The first run warms up what lives for the whole process (the SDK's
    // HTTP connector, the blocking pool's threads); the second is measured.
    run_and_shut_down(dir.path(), "warm").await;
    let (fds, tasks) = (open_fds(), alive_tasks());
    run_and_shut_down(dir.path(), "leak").await;
    settle("tasks", tasks, alive_tasks).await;
    settle("file descriptors", fds, open_fds).await;
}
