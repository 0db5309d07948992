//! A small run whose devices provision and rotate with
//! CreateKeysAndCertificate: server-generated RSA keys sign every handshake.
//! RSA key generation is slow in debug builds, hence the longer run: every
//! device must still rotate once after provisioning.

mod support;

use std::path::Path;

use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

fn scenario_text() -> String {
    format!(
        r#"
name: e2e-rsa
fleet:
  size: 8
  serial_pattern: "rsa-{{seq:02}}"
arrival:
  rate: 20/s
provisioning:
  method: create_keys
{month}telemetry:
  interval: 1s
run:
  duration: 12s
  step_timeout: 8s
credentials:
  storage: memory
slo:
  max_failure_ratio: 0
  min_rotations_per_device: 1
"#,
        month = support::MONTH_IN_SIX_SECONDS
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_provision_and_rotate_with_server_generated_rsa_keys() {
    let scenario =
        Scenario::parse(&scenario_text(), Path::new("rsa.yaml")).expect("valid scenario");
    let summary = execute(&scenario, &RunOptions::default(), CancellationToken::new())
        .await
        .expect("the run starts");
    let report = &summary.report;
    println!("{}", report.render_table());

    assert!(report.passed(), "{:?}", report.failures);
    assert_eq!(report.provisioned, 8);
    assert_eq!(report.key_type.as_deref(), Some("rsa_2048"));
    assert!(
        report
            .to_json_pretty()
            .unwrap()
            .contains(r#""key_type": "rsa_2048""#)
    );
    let registry = summary.emulator.as_ref().unwrap().registry();
    for outcome in &summary.outcomes {
        let current = outcome.current.as_ref().expect("an identity");
        assert!(
            current
                .private_key_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        let id = current.info().unwrap().id;
        assert_eq!(
            registry.certificate_status(&id),
            Some(CertificateStatus::Active)
        );
        assert!(outcome.rotations >= 1, "{} rotated", outcome.serial);
    }
}
