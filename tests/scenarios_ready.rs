//! The ready scenarios in `scenarios/`: every file loads, opens with a
//! comment header that says what question it answers and what a healthy
//! result looks like, and runs, shrunk to a small fleet and a short run,
//! with every device provisioned, none bricked and every retired
//! certificate refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::{CredentialStorage, Faults, Scenario};
use tokio_util::sync::CancellationToken;

const SHRUNK_DEVICES: u64 = 12;
const SHRUNK_DURATION: Duration = Duration::from_secs(8);

fn ready_scenarios() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("scenarios")
        .expect("the scenarios folder exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_ready_scenario_loads_and_says_what_it_is_for() {
    let files = ready_scenarios();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap())
        .collect();
    for expected in [
        "boot-storm",
        "rotation-wave",
        "reconnect-storm",
        "claim-compromise",
        "soak",
    ] {
        assert!(
            names.contains(&expected),
            "scenarios/{expected}.yaml is shipped"
        );
    }
    for path in &files {
        let scenario = Scenario::load(path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(path).unwrap();
        let header: String = text
            .lines()
            .take_while(|line| line.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        assert!(
            header.lines().count() >= 5,
            "{}: a comment header",
            path.display()
        );
        assert!(
            header.contains("healthy result"),
            "{}: says what healthy looks like",
            path.display()
        );
        assert_eq!(
            path.file_stem().unwrap().to_str().unwrap(),
            scenario.name,
            "{}: the file is named after its run",
            path.display()
        );
    }
}

/// The scenario at a small size and length, with its timed faults moved
/// inside the shorter run at the same share of it.
fn shrunk(path: &Path, credentials: &Path) -> Scenario {
    let mut scenario = Scenario::load(path).unwrap();
    let share = SHRUNK_DURATION.as_secs_f64() / scenario.run.duration.as_secs_f64();
    scenario.fleet.size = scenario.fleet.size.min(SHRUNK_DEVICES);
    scenario.arrival.rate.per_second = scenario.arrival.rate.per_second.max(6.0);
    if share < 1.0 {
        scenario.run.duration = SHRUNK_DURATION;
        let faults = &mut scenario.faults;
        faults
            .drops
            .all_at
            .iter_mut()
            .for_each(|at| *at = at.mul_f64(share));
        if let Some(at) = &mut faults.claim_compromise {
            *at = at.mul_f64(share);
        }
    }
    scenario.run.backoff_max = scenario.run.backoff_max.min(Duration::from_secs(1));
    scenario.run.backoff_base = scenario.run.backoff_base.min(scenario.run.backoff_max);
    if let CredentialStorage::Disk { dir } = &mut scenario.credentials {
        *dir = credentials.to_owned();
    }
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ready_scenario_runs_shrunk_without_losing_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    for path in ready_scenarios() {
        let scenario = shrunk(&path, dir.path());
        let summary = execute(&scenario, &RunOptions::default(), CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let report = &summary.report;
        println!("{}\n{}", path.display(), report.render_table());
        let devices = scenario.fleet.size;
        assert_eq!(report.provisioned, devices, "{}", path.display());
        assert_eq!(report.devices_failed, 0, "{}", path.display());
        assert_eq!(report.bricked, 0, "{}", path.display());
        assert_eq!(report.retired_still_accepted, 0, "{}", path.display());
        let injects = scenario.faults != Faults::default();
        assert_eq!(report.faults.is_some(), injects, "{}", path.display());
        if let Some(emulator) = summary.emulator {
            emulator.shutdown().await;
        }
    }
}
