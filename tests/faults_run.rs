//! Fault injection through whole runs against the in-process emulator: each
//! fault of the scenario's `faults:` section is injected into a small fleet
//! that rotates quickly, and the run must still end with every device on a
//! working identity, no retired certificate accepted, and the report's
//! faults section counting what was injected and what the fleet did. A
//! fault that makes success impossible ends devices `failed` with a named
//! reason.

mod support;

use std::path::Path;

use fleetsim::identity::store::CredentialStore;
use fleetsim::observe::Report;
use fleetsim::observe::faults::{FaultKind, FaultResponse, FaultSection};
use fleetsim::run::{RunOptions, RunSummary, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// A fleet of `size` whose 30-day certificates last 6 real seconds and are
/// renewed 4 seconds after issue, with `faults` appended.
fn scenario(dir: &Path, name: &str, size: u32, duration: &str, faults: &str) -> Scenario {
    let month = support::MONTH_IN_SIX_SECONDS;
    let yaml = format!(
        r#"
name: {name}
fleet:
  size: {size}
  serial_pattern: "{name}-{{seq:03}}"
arrival:
  rate: 40/s
{month}  jitter: 6h
telemetry:
  interval: 500ms
  qos: 1
run:
  duration: {duration}
  step_timeout: 5s
  backoff_base: 50ms
  backoff_max: 500ms
  max_attempts: 12
credentials:
  storage: disk
  dir: "{}"
{faults}
"#,
        dir.display()
    );
    Scenario::parse(&yaml, Path::new(&format!("{name}.yaml"))).expect("the test scenario is valid")
}

async fn run(scenario: &Scenario) -> RunSummary {
    let summary = execute(scenario, &RunOptions::default(), CancellationToken::new())
        .await
        .expect("the run starts");
    println!("{}", summary.report.render_table());
    summary
}

fn section(report: &Report) -> &FaultSection {
    report
        .faults
        .as_ref()
        .expect("a run with faults reports them")
}

fn failures(report: &Report, reason: &str) -> u64 {
    report
        .failures
        .iter()
        .filter(|f| f.reason == reason)
        .map(|f| f.count)
        .sum()
}

/// Zero bricked, no retired certificate accepted, every device on a
/// working identity whose files on disk match.
async fn assert_fleet_intact(summary: &RunSummary, size: u64) {
    let report = &summary.report;
    assert_eq!(report.bricked, 0, "no device lost its identity");
    assert_eq!(report.retired_still_accepted, 0);
    assert_eq!(
        report.provisioned, size,
        "every device ends on a working identity"
    );
    assert_eq!(report.devices_failed, 0);
    let store = CredentialStore::disk(summary.credentials_dir.as_ref().unwrap()).unwrap();
    for outcome in &summary.outcomes {
        let stored = store
            .load(&outcome.serial)
            .await
            .unwrap()
            .expect("files on disk");
        assert_eq!(
            Some(&stored.current),
            outcome.current.as_ref(),
            "{}",
            outcome.serial
        );
        assert!(stored.current.key_matches_certificate().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_at_every_named_step_and_at_random_leave_no_device_bricked() {
    let dir = tempfile::tempdir().unwrap();
    let faults = "faults:\n  drops:\n    rate: 0.02\n    at: [after_certificate, after_store, after_reconnect]\n";
    let scenario = scenario(dir.path(), "drops", 20, "14s", faults);
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 20).await;
    let report = &summary.report;
    let faults = section(report);
    // Provisioning passes after_certificate and after_store once per device;
    // a rotation passes all three.
    assert!(faults.injected(FaultKind::DropAfterCertificate) >= 20 + 20);
    assert!(faults.injected(FaultKind::DropAfterStore) >= 20 + 20);
    assert_eq!(faults.injected(FaultKind::DropAfterReconnect), 20);
    assert!(faults.injected(FaultKind::RandomDrop) > 0);
    assert!(
        faults.responses(FaultResponse::Reconnected) >= 20,
        "every device reconnected after the drop after its reconnect"
    );
    assert!(report.rotations.per_device_min >= Some(1));
    assert_eq!(report.retired_certificates, report.rotations.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_devices_restart_from_their_store_and_keep_their_identity() {
    let dir = tempfile::tempdir().unwrap();
    let faults = "faults:\n  crash:\n    rate: 30/min\n    max_per_device: 4\n";
    let scenario = scenario(dir.path(), "crash", 20, "16s", faults);
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 20).await;
    let faults = section(&summary.report);
    let crashes = faults.injected(FaultKind::Crash);
    assert!(crashes >= 20, "about two crashes per device: {crashes}");
    let recovered: u64 = [
        FaultResponse::ResumedOnline,
        FaultResponse::RotationFinished,
        FaultResponse::RotationRolledBack,
        FaultResponse::Reprovisioned,
    ]
    .into_iter()
    .map(|r| faults.responses(r))
    .sum();
    assert!(
        recovered > 0 && recovered <= crashes,
        "{recovered} of {crashes}"
    );
    assert!(faults.responses(FaultResponse::ResumedOnline) > 0);
    assert_eq!(
        summary.report.retired_certificates,
        summary.report.rotations.total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_throttles_and_latency_are_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let faults =
        "faults:\n  provisioning:\n    deny_rate: 0.2\n    throttle_rate: 0.2\n    latency: 30ms\n";
    let scenario = scenario(dir.path(), "emu", 20, "12s", faults);
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 20).await;
    let report = &summary.report;
    let faults = section(report);
    let (denied, throttled) = (
        faults.injected(FaultKind::HookDenial),
        faults.injected(FaultKind::Throttle),
    );
    assert!(
        denied > 0 && throttled > 0,
        "{denied} denials, {throttled} throttles"
    );
    // Every answer the device received is counted; at most one per device
    // can be in flight when the run stops.
    let seen_denied = failures(report, "provisioning_rejected");
    // Throttles are reported apart from failures.
    let seen_throttled = report.throttled;
    assert!(seen_denied <= denied && seen_denied + 20 >= denied);
    assert!(seen_throttled <= throttled && seen_throttled + 20 >= throttled);
    let requests: u64 = ["create_certificate", "register_thing"]
        .iter()
        .map(|op| {
            report
                .operations
                .iter()
                .find(|o| o.op == *op)
                .unwrap()
                .count
        })
        .sum();
    assert!(faults.injected(FaultKind::Latency) >= requests + seen_denied + seen_throttled);
    let create = report
        .operations
        .iter()
        .find(|o| o.op == "create_certificate")
        .unwrap();
    assert!(
        create.p50_ms >= Some(30.0),
        "every answer waits the added latency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_denies_everything_fails_every_device_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let faults = "faults:\n  provisioning:\n    deny_rate: 1\n";
    let mut scenario = scenario(dir.path(), "denied", 5, "8s", faults);
    scenario.run.max_attempts = 3;
    scenario.slo.max_failure_ratio = Some(0.0);
    let summary = run(&scenario).await;
    let report = &summary.report;
    assert_eq!(report.devices_failed, 5);
    assert_eq!(report.provisioned, 0);
    assert_eq!(report.bricked, 0, "no device ever held an identity to lose");
    assert!(!report.passed(), "the failure objective fails");
    let faults = section(report);
    assert_eq!(
        faults.injected(FaultKind::HookDenial),
        15,
        "three attempts each"
    );
    assert_eq!(faults.devices_failed.len(), 1);
    let failed = &faults.devices_failed[0];
    assert_eq!(
        (failed.op.as_str(), failed.reason.as_str(), failed.devices),
        ("register_thing", "provisioning_rejected", 5)
    );
    for outcome in &summary.outcomes {
        assert!(outcome.failure.is_some(), "{} ends failed", outcome.serial);
        assert!(outcome.current.is_none());
    }
    assert!(
        report
            .render_table()
            .contains("failed at register_thing: provisioning_rejected")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_ahead_rotate_early_and_every_skewed_device_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Five simulated days ahead: each certificate looks due 5 days early,
    // 20 days into its 30, so rotations come every 3.3 s instead of 4 s.
    let faults = "faults:\n  clock_skew:\n    share: 1\n    ahead: 5d\n";
    let scenario = scenario(dir.path(), "skew", 10, "12s", faults);
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 10).await;
    let faults = section(&summary.report);
    assert_eq!(faults.injected(FaultKind::ClockSkew), 10);
    assert!(summary.report.rotations.per_device_min >= Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_certificate_revoked_and_replaced_mid_run_still_provisions_the_fleet() {
    use fleetsim::emulator::registry::CertificateStatus;
    let dir = tempfile::tempdir().unwrap();
    let faults = "faults:\n  claim_compromise:\n    at: 2s\n";
    let mut scenario = scenario(dir.path(), "claim", 24, "9s", faults);
    // Arrivals span the drill: 3 per second for 8 seconds.
    scenario.arrival.rate.per_second = 3.0;
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 24).await;
    assert_eq!(
        section(&summary.report).injected(FaultKind::ClaimCompromise),
        1
    );
    let registry = summary.emulator.as_ref().unwrap().registry();
    let mut claims: Vec<&str> = registry
        .certificates()
        .into_iter()
        .filter(|c| {
            let policies = registry.attached_policies(&c.id).unwrap_or_default();
            policies.iter().any(|p| p.name == "fleetsim-claim")
        })
        .map(|c| c.status.as_str())
        .collect();
    claims.sort();
    let mut expected = [CertificateStatus::Active, CertificateStatus::Revoked].map(|s| s.as_str());
    expected.sort();
    assert_eq!(
        claims, expected,
        "the old claim certificate is revoked, the new one active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_emulator_restarted_mid_run_keeps_every_identity() {
    let dir = tempfile::tempdir().unwrap();
    let faults = "faults:\n  emulator_restart:\n    at: 5s\n    down_for: 1s\n";
    let mut scenario = scenario(dir.path(), "restart", 20, "13s", faults);
    // Some devices arrive while the emulator is down.
    scenario.arrival.rate.per_second = 3.0;
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 20).await;
    let faults = section(&summary.report);
    assert_eq!(faults.injected(FaultKind::EmulatorRestart), 1);
    assert!(
        faults.responses(FaultResponse::Reconnected) >= 10,
        "the devices online at the restart came back"
    );
    assert!(summary.report.rotations.total > 20, "rotations went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_far_behind_let_certificates_expire_and_the_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Sixty simulated days behind: no certificate ever looks due, so every
    // one expires 6 s into the run. Devices dropped after that are refused
    // at the handshake and end failed with that reason; the others are
    // found bricked by the end-of-run check.
    let faults = "faults:\n  drops:\n    rate: 0.3\n  clock_skew:\n    share: 1\n    behind: 60d\n";
    let mut scenario = scenario(dir.path(), "late", 10, "11s", faults);
    scenario.run.max_attempts = 3;
    let summary = run(&scenario).await;
    let report = &summary.report;
    assert_eq!(
        report.rotations.total, 0,
        "no clock ever said a certificate was due"
    );
    let with_identity = summary
        .outcomes
        .iter()
        .filter(|o| o.thing_name.is_some())
        .count();
    assert!(
        with_identity >= 5,
        "most devices provisioned: {with_identity}"
    );
    assert_eq!(
        report.bricked as usize, with_identity,
        "every certificate expired in use"
    );
    assert!(!report.passed(), "the invariant fails the run");
    let faults = section(report);
    assert_eq!(faults.injected(FaultKind::ClockSkew), 10);
    assert!(
        report.devices_failed > 0,
        "dropped devices could not reconnect"
    );
    for failed in &faults.devices_failed {
        let named = match failed.op.as_str() {
            "connect" => failed.reason == "tls_refused",
            // Drops during provisioning, three times over.
            _ => failed.reason == "connection",
        };
        assert!(
            named,
            "devices end failed with the step and reason: {failed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_a_little_behind_rotate_after_expiry_over_the_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Twelve simulated days behind a 10-day renewal window: each device
    // finds its certificate due two days (0.4 s) after it expired, and
    // rotates over the connection it already has.
    let faults = "faults:\n  clock_skew:\n    share: 1\n    behind: 12d\n";
    let scenario = scenario(dir.path(), "behind", 10, "12s", faults);
    let summary = run(&scenario).await;
    assert_fleet_intact(&summary, 10).await;
    assert!(summary.report.rotations.per_device_min >= Some(1));
}
