//! A whole run through the public interface: a small fleet provisions,
//! sends telemetry and rotates at least twice per device against the
//! in-process emulator, and everything the run claims is checked again from
//! the outside: the report, the emulator's registry and the files on disk.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::store::CredentialStore;
use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

fn scenario(dir: &Path) -> Scenario {
    // 30 simulated days last 6 real seconds; rotation starts 2 s before
    // expiry, so a device issued at t rotates near t+4, t+8, t+12.
    let month = support::MONTH_IN_SIX_SECONDS;
    let yaml = format!(
        r#"
name: e2e
fleet:
  size: 50
  serial_pattern: "e2e-{{seq:03}}"
arrival:
  rate: 25/s
{month}  jitter: 6h
telemetry:
  interval: 1s
  qos: 1
  payload_bytes: 200
run:
  duration: 17s
  step_timeout: 5s
credentials:
  storage: disk
  dir: "{}"
slo:
  max_failure_ratio: 0
  min_rotations_per_device: 2
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new("e2e.yaml")).expect("the test scenario is valid")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_provisions_and_rotates_twice_without_losing_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path());
    let options = RunOptions::default();
    let summary = execute(&scenario, &options, CancellationToken::new())
        .await
        .expect("the run starts");
    let report = &summary.report;
    println!("{}", report.render_table());

    assert!(report.passed(), "every SLO and the invariant hold");
    assert_eq!(report.devices, 50);
    assert_eq!(report.provisioned, 50);
    assert_eq!(report.devices_failed, 0);
    assert_eq!(report.bricked, 0);
    assert!(
        report.failures.is_empty(),
        "no step failed: {:?}",
        report.failures
    );
    assert!(report.rotations.per_device_min >= Some(2));
    assert_eq!(report.retired_still_accepted, 0);
    let rotations: u64 = summary.outcomes.iter().map(|o| o.rotations).sum();
    assert_eq!(report.rotations.total, rotations);
    assert_eq!(report.retired_certificates, rotations);

    let registry = summary.emulator.as_ref().unwrap().registry();
    let store = CredentialStore::disk(summary.credentials_dir.as_ref().unwrap()).unwrap();
    for outcome in &summary.outcomes {
        let thing = outcome
            .thing_name
            .as_ref()
            .expect("every device registered");
        assert!(
            outcome.rotations >= 2,
            "{} rotated {} times",
            outcome.serial,
            outcome.rotations
        );
        for old in &outcome.retired {
            let record = registry.certificate(&old.info().unwrap().id).unwrap();
            assert_eq!(record.status, CertificateStatus::Revoked);
            assert!(
                !record.things.contains(thing),
                "retired certificates are detached"
            );
        }
        let current = outcome.current.as_ref().unwrap();
        let record = registry.certificate(&current.info().unwrap().id).unwrap();
        assert_eq!(record.status, CertificateStatus::Active);
        assert!(record.things.contains(thing));

        let stored = store
            .load(&outcome.serial)
            .await
            .unwrap()
            .expect("credentials on disk");
        assert_eq!(
            &stored.current, current,
            "the file holds the identity in use"
        );
        assert!(stored.current.key_matches_certificate().unwrap());
        let device_dir = store.device_dir(&outcome.serial).unwrap().unwrap();
        assert_eq!(mode(&device_dir), 0o700);
        assert_eq!(mode(&device_dir.join("current.pem")), 0o600);
    }
    let things = registry.things();
    assert_eq!(
        things.len(),
        50,
        "one thing per device, reused by rotations"
    );
}
