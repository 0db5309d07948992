//! Quotas on both sides: the emulator throttles like AWS when given quotas
//! (429 rejections on Fleet Provisioning, ThrottlingException on the control
//! plane), a run rides that out with backoff and reports the throttled
//! answers apart from failures, and a scenario's `pacing` keeps the fleet
//! under its limits.

use std::path::Path;
use std::process::Command;

use fleetsim::control::ControlPlane;
use fleetsim::emulator::{self, Emulator, EmulatorConfig};
use fleetsim::observe::Op;
use fleetsim::pacing::Quotas;
use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

const FLEET: u64 = 8;

fn scenario(pacing: &str) -> Scenario {
    let yaml = format!(
        r#"
name: throttled
fleet:
  size: {FLEET}
arrival:
  rate: 50/s
rotation:
  enabled: false
telemetry:
  interval: 1s
run:
  duration: 15s
  backoff_base: 100ms
  backoff_max: 1s
  max_attempts: 4
credentials:
  storage: memory
slo:
  max_failure_ratio: 0
{pacing}
"#
    );
    Scenario::parse(&yaml, Path::new("throttled.yaml")).expect("the test scenario is valid")
}

fn low_quotas() -> Quotas {
    Quotas {
        create_certificate: Some(2.0),
        register_thing: Some(2.0),
        ..Quotas::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_low_quotas_finishes_reports_throttles_and_fails_no_device() {
    let options = RunOptions {
        emulator_quotas: low_quotas(),
        ..RunOptions::default()
    };

    let summary = execute(&scenario(""), &options, CancellationToken::new())
        .await
        .expect("the run starts");

    let report = &summary.report;
    assert_eq!(report.provisioned, FLEET);
    assert_eq!(report.devices_failed, 0);
    assert!(report.passed(), "{}", report.render_table());
    assert!(report.throttled > 0, "{}", report.render_table());
    let register = report.operation(Op::RegisterThing).unwrap();
    let certificate = report.operation(Op::CreateCertificate).unwrap();
    assert!(register.throttled + certificate.throttled > 0);
    assert!(
        report.failures.iter().all(|f| f.reason != "throttled"),
        "throttles are not failures: {:?}",
        report.failures
    );
    assert!(report.render_table().contains("throttled:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_run_holds_itself_to_its_rate_against_an_unlimited_emulator() {
    let pacing = "pacing:\n  create_certificate: 2/s\n  register_thing: 2/s\n";

    let summary = execute(
        &scenario(pacing),
        &RunOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("the run starts");

    let report = &summary.report;
    assert_eq!(report.provisioned, FLEET);
    assert_eq!(report.devices_failed, 0);
    assert_eq!(report.throttled, 0);
    // 8 devices arrive within 0.2 s; at 2 registrations a second after a
    // burst of 2, the last one waits about 3 s. Only the fleet's own pacing
    // can make it wait (the emulator has no quota); a slow machine only
    // makes the wait longer.
    let provision = report.operation(Op::Provision).unwrap();
    assert!(provision.max_ms.unwrap() >= 2500.0, "{provision:?}");
}

#[tokio::test]
async fn the_control_plane_answers_throttling_exception_over_its_quota_and_the_sdk_retries() {
    let config = EmulatorConfig {
        quotas: Quotas {
            control_plane: Some(1.0),
            ..Quotas::default()
        },
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config).await.unwrap();
    let control = ControlPlane::for_endpoint(&emulator.control_url(), emulator::REGION);

    for _ in 0..3 {
        control
            .client()
            .describe_endpoint()
            .endpoint_type("iot:Data-ATS")
            .send()
            .await
            .expect("the SDK retries throttled calls until they pass");
    }

    assert!(control.throttled() >= 1, "{}", control.throttled());
}

#[test]
fn a_scenario_pacing_section_names_the_field_of_a_bad_rate_or_an_unknown_quota() {
    let zero = Scenario::parse(
        "name: p\nfleet:\n  size: 1\narrival:\n  rate: 1/s\nrun:\n  duration: 1s\npacing:\n  register_thing: 0/s\n",
        Path::new("p.yaml"),
    )
    .unwrap_err()
    .to_string();
    let unknown = Scenario::parse(
        "name: p\nfleet:\n  size: 1\narrival:\n  rate: 1/s\nrun:\n  duration: 1s\npacing:\n  publish: 5/s\n",
        Path::new("p.yaml"),
    )
    .unwrap_err()
    .to_string();

    assert!(zero.starts_with("p.yaml:9:"), "{zero}");
    assert!(zero.contains("pacing.register_thing"), "{zero}");
    assert!(
        unknown.contains("p.yaml:9:") && unknown.contains("publish"),
        "{unknown}"
    );
}

#[test]
fn pacing_defaults_to_aws_quotas_on_the_aws_target_and_to_none_locally() {
    let base = "name: p\nfleet:\n  size: 1\narrival:\n  rate: 1/s\nrun:\n  duration: 1s\n";
    let local = Scenario::parse(base, Path::new("p.yaml")).unwrap();
    let aws = Scenario::parse(&format!("{base}target: aws\n"), Path::new("p.yaml")).unwrap();
    let partial = Scenario::parse(
        &format!("{base}pacing:\n  connect: 100/s\n"),
        Path::new("p.yaml"),
    )
    .unwrap();

    assert_eq!(local.quotas(), Quotas::default());
    assert_eq!(aws.quotas(), Quotas::aws_defaults());
    assert_eq!(partial.quotas().connect, Some(100.0));
    assert_eq!(partial.quotas().register_thing, Some(10.0));
}

#[test]
fn the_emulator_refuses_an_unknown_quota_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .args(["emulator", "--mqtt-port", "0", "--control-port", "0"])
        .args(["--quota", "publish=5", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--quota \"publish\" is not a quota"),
        "{stderr}"
    );
}
