//! The `faults:` section of a scenario through the public API: every field
//! maps onto the typed faults, an absent section injects nothing, and each
//! kind of mistake is refused with file, line, column, field and reason.

use std::path::Path;
use std::time::Duration;

use fleetsim::scenario::*;

const BASE: &str = "name: f\nfleet:\n  size: 10\narrival:\n  rate: 5/s\nrun:\n  duration: 30s\n";

fn parse(faults: &str) -> Result<Scenario, String> {
    let text = format!("{BASE}{faults}");
    Scenario::parse(&text, Path::new("f.yaml")).map_err(|e| e.to_string())
}

#[test]
fn an_absent_faults_section_injects_nothing() {
    let scenario = parse("").unwrap();
    assert_eq!(scenario.faults, Faults::default());
    assert!(!scenario.faults.provisioning.any());
}

#[test]
fn every_fault_maps_onto_the_typed_section() {
    let scenario = parse(
        r#"faults:
  drops:
    rate: 0.05
    at: [after_certificate, after_store, after_reconnect]
    all_at: [20s, 10s]
  crash:
    rate: 6/min
    max_per_device: 2
  provisioning:
    deny_rate: 0.1
    throttle_rate: 0.25
    latency: 20ms
  clock_skew:
    share: 0.3
    behind: 2d
  claim_compromise:
    at: 15s
"#,
    )
    .unwrap();
    let faults = scenario.faults;
    assert_eq!(faults.drops.rate, 0.05);
    assert_eq!(faults.drops.at, DropPoint::ALL.to_vec());
    assert_eq!(
        faults.drops.all_at,
        [Duration::from_secs(10), Duration::from_secs(20)],
        "storm times are sorted"
    );
    let crash = faults.crash.unwrap();
    assert_eq!(crash.per_device_per_second, 0.1);
    assert_eq!(crash.max_per_device, 2);
    assert_eq!(faults.provisioning.deny_rate, 0.1);
    assert_eq!(faults.provisioning.throttle_rate, 0.25);
    assert_eq!(faults.provisioning.latency, Duration::from_millis(20));
    let skew = faults.clock_skew.unwrap();
    assert_eq!(skew.share, 0.3);
    assert_eq!(skew.offset_seconds, -2.0 * 86_400.0);
    assert_eq!(faults.claim_compromise, Some(Duration::from_secs(15)));
}

#[test]
fn a_crash_without_max_gets_three_per_device() {
    let scenario = parse("faults:\n  crash:\n    rate: 1/s\n").unwrap();
    assert_eq!(scenario.faults.crash.unwrap().max_per_device, 3);
}

#[test]
fn mistakes_in_faults_name_the_place_the_field_and_the_reason() {
    let cases = [
        (
            "faults:\n  drop:\n    rate: 0.1\n",
            "f.yaml:9:3: faults.drop: unknown field; did you mean `drops`? accepted fields: drops, crash, provisioning, clock_skew, claim_compromise, emulator_restart",
        ),
        (
            "faults:\n  drops:\n    rate: 1.5\n",
            "f.yaml:10:11: faults.drops.rate: 1.5 is not a ratio between 0 and 1",
        ),
        (
            "faults:\n  drops:\n    at: [after_certificate, before_lunch]\n",
            "f.yaml:10:29: faults.drops.at[1]: `before_lunch` is not one of: after_certificate, after_store, after_reconnect",
        ),
        (
            "faults:\n  drops:\n    at: [after_store, after_store]\n",
            "f.yaml:10:23: faults.drops.at[1]: `after_store` is listed twice",
        ),
        (
            "faults:\n  drops:\n    at: after_store\n",
            "f.yaml:10:9: faults.drops.at: expected a list of step names, found the text `after_store`",
        ),
        (
            "faults:\n  drops:\n    all_at: [5s, 30s]\n",
            "f.yaml:10:18: faults.drops.all_at[1]: 30s is not before the end of the run (run.duration 30s)",
        ),
        (
            "faults:\n  claim_compromise:\n    at: 1m\n",
            "f.yaml:10:9: faults.claim_compromise.at: 1m is not before the end of the run (run.duration 30s)",
        ),
        (
            "faults:\n  crash:\n    max_per_device: 2\n",
            "f.yaml:9:3: faults.crash.rate: required field is missing",
        ),
        (
            "faults:\n  crash:\n    rate: 3\n",
            "f.yaml:10:11: faults.crash.rate: `3` has no unit; add one, e.g. 3/s (units: /s, /min, /h)",
        ),
        (
            "faults:\n  provisioning:\n    latency: fast\n",
            "f.yaml:10:14: faults.provisioning.latency: `fast` is not a duration like 250ms, 1.5s, 10m, 6h or 30d",
        ),
        (
            "faults:\n  clock_skew:\n    share: 0.5\n",
            "f.yaml:9:3: faults.clock_skew.ahead: say how far the clocks are off: `ahead: <duration>` or `behind: <duration>`",
        ),
        (
            "faults:\n  clock_skew:\n    share: 0.5\n    ahead: 1d\n    behind: 1d\n",
            "f.yaml:12:13: faults.clock_skew.behind: a skewed clock is either ahead or behind, not both",
        ),
    ];
    for (faults, expected) in cases {
        assert_eq!(parse(faults).unwrap_err(), expected, "for:\n{faults}");
    }
}

#[test]
fn emulator_faults_are_refused_on_the_aws_target() {
    let text = format!("{BASE}target: aws\nfaults:\n  provisioning:\n    throttle_rate: 0.5\n");
    let error = Scenario::parse(&text, Path::new("f.yaml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "f.yaml:10:3: faults.provisioning: only the emulator can deny, throttle or delay provisioning; use target local"
    );
}

#[test]
fn an_emulator_restart_names_when_and_for_how_long() {
    let scenario = parse("faults:\n  emulator_restart:\n    at: 10s\n").unwrap();
    let restart = scenario.faults.emulator_restart.unwrap();
    assert_eq!(
        (restart.at, restart.down_for),
        (Duration::from_secs(10), Duration::from_secs(1))
    );
    assert_eq!(
        parse("faults:\n  emulator_restart:\n    at: 29s\n").unwrap_err(),
        "f.yaml:10:9: faults.emulator_restart.at: 29s plus down_for 1s is not before the end of the run (run.duration 30s)"
    );
}
