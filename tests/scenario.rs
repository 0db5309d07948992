//! Scenario files through the public API: a full file maps onto the expected
//! structs, omitted fields take their defaults, and every kind of mistake is
//! refused with the file, line, column, field and reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetsim::scenario::*;
use proptest::prelude::*;

const FULL: &str = r#"name: quickstart
target: aws
fleet:
  size: 200
  serial_pattern: "qs-{seq:05}"
arrival:
  rate: 50/s
  phases:
    - { rate: 200/s, duration: 2s }
    - rate: 30/min
      duration: 1.5s
provisioning:
  method: csr
  template: fleetsim-fleet
clock:
  speedup: 86400
certificates:
  validity: 30d
rotation:
  enabled: true
  check_every: 6h
  renew_before: 10d
  jitter: 1h
telemetry:
  enabled: true
  interval: 5s
  qos: 0
  payload_bytes: 256
  topic: telemetry/env
run:
  duration: 60s
  step_timeout: 3s
  backoff_base: 250ms
  backoff_max: 4s
  max_attempts: 7
credentials:
  storage: disk
  dir: out/certs
slo:
  connect_p99: 500ms
  provisioning_p99: 2s
  max_failure_ratio: 0.01
  min_rotations_per_device: 2
tls:
  key_exchange: secp256r1
"#;

const MINIMAL: &str =
    "name: small\nfleet:\n  size: 10\narrival:\n  rate: 5/s\nrun:\n  duration: 10s\n";

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, Path::new("quick.yaml"))
}

/// The minimal scenario with `extra` appended, parsed.
fn minimal_with(extra: &str) -> Result<Scenario, ScenarioError> {
    parse(&format!("{MINIMAL}{extra}"))
}

/// The refusal of `text`, as (line, column, field, reason).
fn refusal(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(ScenarioError::Invalid {
            line,
            column,
            field,
            reason,
            ..
        }) => (line, column, field, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_full_scenario_parses_to_the_expected_structs() {
    let expected = Scenario {
        name: "quickstart".into(),
        target: Target::Aws,
        fleet: Fleet {
            size: 200,
            serial_pattern: SerialPattern {
                prefix: "qs-".into(),
                width: 5,
                suffix: String::new(),
            },
        },
        arrival: Arrival {
            rate: Rate { per_second: 50.0 },
            phases: vec![
                Phase {
                    rate: Rate { per_second: 200.0 },
                    duration: secs(2),
                },
                Phase {
                    rate: Rate { per_second: 0.5 },
                    duration: Duration::from_millis(1500),
                },
            ],
        },
        provisioning: Provisioning {
            method: ProvisioningMethod::CsrEcP256,
            template: "fleetsim-fleet".into(),
        },
        tls: Tls {
            key_exchange: KeyExchange::Secp256r1,
        },
        clock: Clock { speedup: 86400.0 },
        certificates: Certificates {
            validity: secs(30 * 86_400),
        },
        rotation: Rotation {
            enabled: true,
            check_every: secs(6 * 3_600),
            renew_before: secs(10 * 86_400),
            jitter: secs(3_600),
        },
        telemetry: Telemetry {
            enabled: true,
            interval: secs(5),
            qos: Qos::AtMostOnce,
            payload_bytes: 256,
            topic: "telemetry/env".into(),
        },
        run: RunLimits {
            duration: secs(60),
            step_timeout: secs(3),
            backoff_base: Duration::from_millis(250),
            backoff_max: secs(4),
            max_attempts: 7,
        },
        credentials: CredentialStorage::Disk {
            dir: PathBuf::from("out/certs"),
        },
        slo: Slo {
            connect_p99: Some(Duration::from_millis(500)),
            provisioning_p99: Some(secs(2)),
            max_failure_ratio: Some(0.01),
            min_rotations_per_device: Some(2),
        },
        faults: Faults::default(),
        pacing: None,
    };
    assert_eq!(parse(FULL).expect("the full example is valid"), expected);
}

#[test]
fn omitted_fields_take_their_defaults() {
    let scenario = parse(MINIMAL).expect("the minimal scenario is valid");
    assert_eq!(scenario.target, Target::Local);
    assert_eq!(scenario.fleet.serial_pattern.serial(7), "sim-000007");
    assert!(scenario.arrival.phases.is_empty());
    assert_eq!(scenario.provisioning.method, ProvisioningMethod::CsrEcP256);
    assert_eq!(scenario.provisioning.template, "fleetsim-fleet");
    assert_eq!(scenario.tls.key_exchange, KeyExchange::X25519);
    assert_eq!(scenario.clock, Clock { speedup: 1.0 });
    assert_eq!(scenario.certificates.validity, secs(365 * 86_400));
    let year_third = secs(365 * 86_400) / 3;
    let rotation = Rotation {
        enabled: true,
        check_every: secs(86_400),
        renew_before: year_third,
        jitter: Duration::ZERO,
    };
    assert_eq!(scenario.rotation, rotation);
    let telemetry = Telemetry {
        enabled: true,
        interval: secs(10),
        qos: Qos::AtLeastOnce,
        payload_bytes: 128,
        topic: "telemetry".into(),
    };
    assert_eq!(scenario.telemetry, telemetry);
    let run = RunLimits {
        duration: secs(10),
        step_timeout: secs(10),
        backoff_base: Duration::from_millis(100),
        backoff_max: secs(5),
        max_attempts: 5,
    };
    assert_eq!(scenario.run, run);
    let certs = CredentialStorage::Disk {
        dir: "certs".into(),
    };
    assert_eq!(scenario.credentials, certs);
    assert_eq!(scenario.slo, Slo::default());
}

#[test]
fn renew_before_defaults_to_a_third_of_the_written_validity() {
    let scenario = minimal_with("certificates:\n  validity: 30d\n").expect("valid");
    assert_eq!(scenario.rotation.renew_before, secs(10 * 86_400));
}

#[test]
fn memory_storage_has_no_directory() {
    let scenario = minimal_with("credentials:\n  storage: memory\n").expect("valid");
    assert_eq!(scenario.credentials, CredentialStorage::Memory);
}

#[test]
fn simulated_durations_are_scaled_to_real_time_by_the_speedup() {
    let scenario = parse(FULL).expect("valid");
    let real = scenario.to_real(scenario.certificates.validity);
    assert_eq!(real, secs(30));
}

#[test]
fn the_display_reads_path_line_column_field_reason() {
    let text = FULL.replace("renew_before: 10d", "renew_before: 40d");
    let error = parse(&text).expect_err("renewal after expiry is refused");
    assert_eq!(
        error.to_string(),
        "quick.yaml:22:17: rotation.renew_before: 40d is not shorter than \
         certificates.validity (30d)"
    );
}

#[test]
fn a_misspelled_field_is_named_with_the_accepted_ones() {
    let (line, column, field, reason) = refusal("name: a\nfleet:\n  sise: 10\n");
    assert_eq!((line, column, field.as_str()), (3, 3, "fleet.sise"));
    assert_eq!(
        reason,
        "unknown field; did you mean `size`? accepted fields: size, serial_pattern"
    );
}

#[test]
fn an_unknown_top_level_section_is_refused() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}logging: {{}}\n"));
    assert_eq!((line, column, field.as_str()), (8, 1, "logging"));
    assert!(
        reason.contains("accepted fields: name, target, fleet"),
        "{reason}"
    );
}

#[test]
fn a_bad_duration_is_refused_at_its_value() {
    let text = MINIMAL.replace("duration: 10s", "duration: 10 seconds");
    let (line, column, field, reason) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (7, 13, "run.duration"));
    assert_eq!(
        reason,
        "`10 seconds` is not a duration like 250ms, 1.5s, 10m, 6h or 30d"
    );
}

#[test]
fn a_bare_number_duration_is_told_to_add_a_unit() {
    let text = MINIMAL.replace("duration: 10s", "duration: 10");
    let (line, column, field, reason) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (7, 13, "run.duration"));
    assert_eq!(
        reason,
        "`10` has no unit; add one, e.g. 10s (units: ms, s, m or min, h, d)"
    );
}

#[test]
fn renew_before_at_or_above_validity_is_refused() {
    let extra = "certificates:\n  validity: 30d\nrotation:\n  renew_before: 30d\n";
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}{extra}"));
    assert_eq!(
        (line, column, field.as_str()),
        (11, 17, "rotation.renew_before")
    );
    assert_eq!(
        reason,
        "30d is not shorter than certificates.validity (30d)"
    );
}

#[test]
fn a_zero_rate_is_refused() {
    let text = MINIMAL.replace("rate: 5/s", "rate: 0/s");
    let (line, column, field, reason) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (5, 9, "arrival.rate"));
    assert_eq!(reason, "`0/s` is zero; a rate must be above zero");
}

#[test]
fn a_zero_rate_inside_a_phase_names_the_phase() {
    let extra =
        "  phases:\n    - { rate: 10/s, duration: 1s }\n    - { rate: 0/min, duration: 1s }\n";
    let text = MINIMAL.replace("  rate: 5/s\n", &format!("  rate: 5/s\n{extra}"));
    let (line, column, field, _) = refusal(&text);
    assert_eq!(
        (line, column, field.as_str()),
        (8, 15, "arrival.phases[1].rate")
    );
}

#[test]
fn qos_2_is_refused_because_aws_does_not_support_it() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}telemetry:\n  qos: 2\n"));
    assert_eq!((line, column, field.as_str()), (9, 8, "telemetry.qos"));
    assert_eq!(reason, "AWS IoT Core does not support QoS 2; use 0 or 1");
}

#[test]
fn a_serial_pattern_without_a_placeholder_is_refused() {
    let extra = "  serial_pattern: dev-{n}\n";
    let text = MINIMAL.replace("  size: 10\n", &format!("  size: 10\n{extra}"));
    let (line, column, field, reason) = refusal(&text);
    assert_eq!(
        (line, column, field.as_str()),
        (4, 19, "fleet.serial_pattern")
    );
    assert_eq!(reason, "`dev-{n}`: placeholder must be {seq} or {seq:N}");
}

#[test]
fn a_serial_pattern_with_unsafe_literal_text_is_refused() {
    let extra = "  serial_pattern: \"dev/{seq}\"\n";
    let text = MINIMAL.replace("  size: 10\n", &format!("  size: 10\n{extra}"));
    let (line, _, field, reason) = refusal(&text);
    assert_eq!((line, field.as_str()), (4, "fleet.serial_pattern"));
    assert!(reason.contains("contains `/`"), "{reason}");
}

#[test]
fn a_topic_with_a_wildcard_is_refused() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}telemetry:\n  topic: a/#\n"));
    assert_eq!((line, column, field.as_str()), (9, 10, "telemetry.topic"));
    assert_eq!(reason, "`a/#` contains a wildcard; a publish topic cannot");
}

#[test]
fn a_topic_too_deep_for_aws_is_refused() {
    let (_, _, field, reason) = refusal(&format!("{MINIMAL}telemetry:\n  topic: a/b/c/d/e/f/g\n"));
    assert_eq!(field, "telemetry.topic");
    assert!(reason.contains("6 slashes; at most 5"), "{reason}");
}

#[test]
fn an_unknown_target_lists_the_known_ones() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}target: gcp\n"));
    assert_eq!((line, column, field.as_str()), (8, 9, "target"));
    assert_eq!(reason, "`gcp` is not one of: local, aws");
}

#[test]
fn a_missing_required_field_points_at_its_section() {
    let text = MINIMAL.replace("  size: 10\n", "  serial_pattern: \"a{seq}\"\n");
    let (line, column, field, reason) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (2, 1, "fleet.size"));
    assert_eq!(reason, "required field is missing");
}

#[test]
fn a_validity_too_short_in_real_time_quotes_the_real_value() {
    let extra = "clock:\n  speedup: 86400\ncertificates:\n  validity: 1d\n";
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}{extra}"));
    assert_eq!(
        (line, column, field.as_str()),
        (11, 13, "certificates.validity")
    );
    assert_eq!(
        reason,
        "1d lasts 1s of real time at clock.speedup 86400; X.509 times have one-second \
         resolution, so rotation needs at least 2s real"
    );
}

#[test]
fn a_short_real_validity_is_accepted_when_rotation_is_off() {
    let extra =
        "clock:\n  speedup: 86400\ncertificates:\n  validity: 1d\nrotation:\n  enabled: false\n";
    assert!(minimal_with(extra).is_ok());
}

#[test]
fn a_speedup_that_makes_the_default_validity_too_short_is_blamed() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}clock:\n  speedup: 1e9\n"));
    assert_eq!((line, column, field.as_str()), (9, 12, "clock.speedup"));
    assert!(
        reason.starts_with("1000000000 makes certificates.validity (365d) last"),
        "{reason}"
    );
}

#[test]
fn a_check_interval_below_10ms_of_real_time_is_refused() {
    let extra = "clock:\n  speedup: 1000\nrotation:\n  check_every: 5s\n";
    let (_, _, field, reason) = refusal(&format!("{MINIMAL}{extra}"));
    assert_eq!(field, "rotation.check_every");
    assert!(
        reason
            .contains("5s lasts 5ms of real time at clock.speedup 1000; it must be at least 10ms"),
        "{reason}"
    );
}

#[test]
fn jitter_longer_than_the_check_interval_is_refused() {
    let extra = "rotation:\n  check_every: 1h\n  jitter: 2h\n";
    let (line, _, field, reason) = refusal(&format!("{MINIMAL}{extra}"));
    assert_eq!((line, field.as_str()), (10, "rotation.jitter"));
    assert_eq!(reason, "2h is longer than rotation.check_every (1h)");
}

#[test]
fn values_out_of_range_are_refused() {
    let cases = [
        ("size: 200", "size: 0", "fleet.size"),
        (
            "payload_bytes: 256",
            "payload_bytes: 131073",
            "telemetry.payload_bytes",
        ),
        ("speedup: 86400", "speedup: -2", "clock.speedup"),
        ("speedup: 86400", "speedup: 0.0005", "clock.speedup"),
        ("validity: 30d", "validity: 36501d", "certificates.validity"),
        (
            "max_failure_ratio: 0.01",
            "max_failure_ratio: 1.5",
            "slo.max_failure_ratio",
        ),
        ("max_attempts: 7", "max_attempts: 0", "run.max_attempts"),
        ("interval: 5s", "interval: 5ms", "telemetry.interval"),
        ("step_timeout: 3s", "step_timeout: 0s", "run.step_timeout"),
        (
            "duration: 2s }",
            "duration: 0s }",
            "arrival.phases[0].duration",
        ),
        ("name: quickstart", "name: quick/start", "name"),
        (
            "template: fleetsim-fleet",
            "template: fleet.template",
            "provisioning.template",
        ),
        ("method: csr", "method: create-keys", "provisioning.method"),
        ("storage: disk", "storage: s3", "credentials.storage"),
        (
            "enabled: true\n  interval",
            "enabled: yes please\n  interval",
            "telemetry.enabled",
        ),
    ];
    for (from, to, expected_field) in cases {
        assert!(FULL.contains(from), "{from:?} is not in the example");
        let (_, _, field, reason) = refusal(&FULL.replacen(from, to, 1));
        assert_eq!(field, expected_field, "for {to:?}: {reason}");
    }
}

#[test]
fn a_wrong_type_names_what_was_found() {
    let (_, _, field, reason) = refusal(&MINIMAL.replace("size: 10", "size: ten"));
    assert_eq!(field, "fleet.size");
    assert_eq!(reason, "expected a whole number, found the text `ten`");
}

#[test]
fn a_directory_with_memory_storage_is_refused() {
    let extra = "credentials:\n  storage: memory\n  dir: certs\n";
    let (line, _, field, reason) = refusal(&format!("{MINIMAL}{extra}"));
    assert_eq!((line, field.as_str()), (10, "credentials.dir"));
    assert_eq!(reason, "only applies to storage: disk");
}

#[test]
fn backoff_max_below_backoff_base_is_refused() {
    let text = MINIMAL.replace("duration: 10s\n", "duration: 10s\n  backoff_base: 10s\n");
    let (_, _, field, reason) = refusal(&text);
    assert_eq!(field, "run.backoff_base");
    assert_eq!(reason, "10s is longer than run.backoff_max (5s)");
}

#[test]
fn invalid_yaml_syntax_is_located_and_named() {
    let text = MINIMAL.replace("rate: 5/s", "rate: [5/s");
    let (line, column, field, reason) = refusal(&text);
    // The unclosed list swallows the next line; the parser fails at `run:`'s colon.
    assert_eq!((line, column, field.as_str()), (6, 4, "arrival.rate[0]"));
    assert_eq!(reason, "invalid YAML: illegal placement of ':' indicator");
}

#[test]
fn a_duplicate_field_is_refused() {
    let text = MINIMAL.replace("  size: 10\n", "  size: 10\n  size: 11\n");
    let (line, column, field, _) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (4, 3, "fleet.size"));
}

#[test]
fn an_empty_file_says_what_is_needed() {
    let (line, column, field, reason) = refusal("");
    assert_eq!((line, column, field.as_str()), (1, 1, "(top level)"));
    assert!(reason.contains("name, fleet.size, arrival.rate and run.duration"));
}

#[test]
fn load_reports_an_unreadable_file_with_its_path() {
    let missing = Path::new("/nonexistent/fleetsim/quick.yaml");
    let error = Scenario::load(missing).expect_err("the file does not exist");
    assert!(matches!(error, ScenarioError::Read { .. }));
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/fleetsim/quick.yaml: cannot read")
    );
}

#[test]
fn load_reads_and_validates_a_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "name: a b\n").expect("write scenario");
    let error = Scenario::load(&path).expect_err("the name has a space");
    let expected = format!("{}:1:7: name: `a b` contains ` `;", path.display());
    assert!(error.to_string().starts_with(&expected), "{error}");
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..=36_500).prop_map(|n| Duration::from_secs(n * 86_400)),
        (0u64..10_000_000).prop_map(Duration::from_millis),
        (0u64..3_153_600_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

proptest! {
    #[test]
    fn formatted_durations_parse_back(duration in any_duration()) {
        prop_assume!(!duration.is_zero());
        let text = format!("{MINIMAL}slo:\n  connect_p99: {}\n", format_duration(duration));
        let scenario = parse(&text).expect("a formatted duration parses");
        prop_assert_eq!(scenario.slo.connect_p99, Some(duration));
    }
}

#[test]
fn an_alias_reuses_an_anchored_value() {
    let text = MINIMAL.replace("duration: 10s\n", "duration: &d 10s\n  step_timeout: *d\n");
    let scenario = parse(&text).expect("aliases are plain YAML");
    assert_eq!(scenario.run.step_timeout, secs(10));
}

#[test]
fn a_missing_section_points_at_the_top_of_the_file() {
    let text = MINIMAL.replace("arrival:\n  rate: 5/s\n", "");
    let (line, column, field, reason) = refusal(&text);
    assert_eq!((line, column, field.as_str()), (1, 1, "arrival.rate"));
    assert_eq!(reason, "required field is missing");
}

#[test]
fn a_section_written_as_a_scalar_is_refused() {
    let (line, column, field, reason) = refusal(&format!("{MINIMAL}slo: strict\n"));
    assert_eq!((line, column, field.as_str()), (8, 6, "slo"));
    assert_eq!(
        reason,
        "expected a mapping of fields, found the text `strict`"
    );
}

#[test]
fn the_documented_example_is_a_valid_scenario() {
    let readme = include_str!("../README.md");
    let doc = &readme[readme
        .find("## Scenario reference")
        .expect("README has the reference")..];
    let start = doc
        .find("```yaml\n")
        .expect("the reference has a yaml example")
        + 8;
    let length = doc[start..].find("```").expect("the example is closed");
    let scenario = parse(&doc[start..start + length]).expect("the documented example is valid");
    assert_eq!(scenario.to_real(scenario.certificates.validity), secs(30));
}

#[test]
fn of_two_mistakes_the_earlier_section_is_reported() {
    let text = FULL
        .replace("name: quickstart", "name: quick start")
        .replace("speedup: 86400", "speedup: 0");
    let (line, _, field, _) = refusal(&text);
    assert_eq!((line, field.as_str()), (1, "name"));
}

#[test]
fn create_keys_is_a_provisioning_method_and_unknown_methods_name_the_choices() {
    let scenario = minimal_with("provisioning:\n  method: create_keys\n").unwrap();
    assert_eq!(
        scenario.provisioning.method,
        ProvisioningMethod::CreateKeysRsa
    );

    let text = format!("{MINIMAL}provisioning:\n  method: keys\n");
    let (_, column, field, reason) = refusal(&text);
    assert_eq!(field, "provisioning.method");
    assert_eq!(column, 11);
    assert!(reason.contains("csr, create_keys"), "{reason}");
}

#[test]
fn every_key_exchange_is_a_tls_setting_and_an_unknown_one_names_the_choices() {
    for key_exchange in KeyExchange::ALL {
        let extra = format!("tls:\n  key_exchange: {}\n", key_exchange.label());
        let scenario = minimal_with(&extra).expect("valid");
        assert_eq!(scenario.tls.key_exchange, key_exchange);
    }

    let (line, column, field, reason) = refusal(&format!("{MINIMAL}tls:\n  key_exchange: p521\n"));
    assert_eq!((line, column, field.as_str()), (9, 17, "tls.key_exchange"));
    assert_eq!(
        reason,
        "`p521` is not one of: x25519, secp256r1, x25519mlkem768"
    );
}
