//! Broken scenario files, written to real files and read through `Scenario::load`: every
//! kind of mistake (wrong types, unknown keys, missing sections, bad durations and rates,
//! duplicate keys, tabs, bytes that are not UTF-8, empty and huge files, YAML bombs),
//! serial patterns and names that would make unsafe paths, and files that cannot be read.
//! Each is refused with the whole `file:line:column: field: reason` message.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleetsim::scenario::{MAX_SCENARIO_BYTES, Scenario, ScenarioError};

const MINIMAL: &str =
    "name: small\nfleet:\n  size: 10\narrival:\n  rate: 5/s\nrun:\n  duration: 10s\n";

/// The message for `bytes` written to a real file, with the file's path shown as `F`.
fn refusal(bytes: impl AsRef<[u8]>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, bytes).expect("write scenario");
    match Scenario::load(&path) {
        Ok(scenario) => panic!("accepted: {scenario:?}"),
        Err(error) => error.to_string().replace(&path.display().to_string(), "F"),
    }
}

fn loads(bytes: impl AsRef<[u8]>) -> Scenario {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, bytes).expect("write scenario");
    Scenario::load(&path).expect("a valid scenario loads")
}

fn with(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from}");
    MINIMAL.replace(from, to)
}

fn appended(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn check(cases: &[(String, &str)]) {
    for (text, expected) in cases {
        assert_eq!(refusal(text), *expected, "for:\n{text}");
    }
}

#[test]
fn values_of_the_wrong_type_name_what_was_found() {
    check(&[
        (
            with("size: 10", "size: ten"),
            "F:3:9: fleet.size: expected a whole number, found the text `ten`",
        ),
        (
            with("size: 10", "size: 1.5"),
            "F:3:9: fleet.size: expected a whole number, found the number 1.5",
        ),
        (
            with("arrival:\n  rate: 5/s", "arrival: 5/s"),
            "F:4:10: arrival: expected a mapping of fields, found the text `5/s`",
        ),
        (
            with("duration: 10s", "duration: [1, 2]"),
            "F:7:13: run.duration: expected a duration such as 30s, found a list",
        ),
        (
            with("duration: 10s", "duration: {a: 1}"),
            "F:7:13: run.duration: expected a duration such as 30s, found a mapping",
        ),
        (
            appended("telemetry:\n  qos: \"1\"\n"),
            "F:9:8: telemetry.qos: expected a whole number, found the text `1`",
        ),
    ]);
}

#[test]
fn unknown_keys_are_named_with_a_suggestion_and_the_accepted_ones() {
    check(&[
        (
            appended("fleets:\n  size: 1\n"),
            "F:8:1: fleets: unknown field; did you mean `fleet`? accepted fields: name, target, fleet, arrival, provisioning, tls, clock, certificates, rotation, telemetry, run, credentials, slo, faults, pacing",
        ),
        (
            with("duration: 10s", "duraton: 10s"),
            "F:7:3: run.duraton: unknown field; did you mean `duration`? accepted fields: duration, step_timeout, backoff_base, backoff_max, max_attempts",
        ),
    ]);
}

#[test]
fn missing_sections_and_fields_point_at_where_they_belong() {
    check(&[
        (
            with("fleet:\n  size: 10\n", ""),
            "F:1:1: fleet.size: required field is missing",
        ),
        (
            with("run:\n  duration: 10s\n", ""),
            "F:1:1: run.duration: required field is missing",
        ),
        (
            with("name: small\n", ""),
            "F:1:1: name: required field is missing",
        ),
        (
            with("  size: 10\n", "  serial_pattern: d-{seq}\n"),
            "F:2:1: fleet.size: required field is missing",
        ),
    ]);
}

#[test]
fn bad_durations_and_rates_are_refused_at_their_values() {
    let like = "is not a duration like 250ms, 1.5s, 10m, 6h or 30d";
    let rate_like = "is not a rate like 50/s, 30/min or 100/h";
    check(&[
        (
            with("duration: 10s", "duration: 10"),
            "F:7:13: run.duration: `10` has no unit; add one, e.g. 10s (units: ms, s, m or min, h, d)",
        ),
        (
            with("duration: 10s", "duration: -5s"),
            &format!("F:7:13: run.duration: `-5s` {like}"),
        ),
        (
            with("duration: 10s", "duration: 1e400s"),
            &format!("F:7:13: run.duration: `1e400s` {like}"),
        ),
        (
            with("duration: 10s", "duration: 10 fortnights"),
            &format!("F:7:13: run.duration: `10 fortnights` {like}"),
        ),
        (
            with("duration: 10s", "duration: 99999999999999999999d"),
            "F:7:13: run.duration: `99999999999999999999d` is longer than 100 years",
        ),
        (
            with("duration: 10s", "duration: .nan"),
            "F:7:13: run.duration: invalid YAML: value `.nan` is not a finite number",
        ),
        (
            with("rate: 5/s", "rate: 0/s"),
            "F:5:9: arrival.rate: `0/s` is zero; a rate must be above zero",
        ),
        (
            with("rate: 5/s", "rate: 5/fortnight"),
            "F:5:9: arrival.rate: `5/fortnight` has an unknown unit `/fortnight`; use /s, /min or /h",
        ),
        (
            with("rate: 5/s", "rate: NaN/s"),
            &format!("F:5:9: arrival.rate: `NaN/s` {rate_like}"),
        ),
        (
            with("rate: 5/s", "rate: inf/s"),
            &format!("F:5:9: arrival.rate: `inf/s` {rate_like}"),
        ),
        (
            with("rate: 5/s", "rate: -5/s"),
            &format!("F:5:9: arrival.rate: `-5/s` {rate_like}"),
        ),
        (
            with("rate: 5/s", "rate: 1e300/s"),
            &format!("F:5:9: arrival.rate: `1e300/s` {rate_like}"),
        ),
        (
            appended("clock:\n  speedup: .inf\n"),
            "F:9:12: clock.speedup: invalid YAML: value `.inf` is not a finite number",
        ),
        (
            appended("clock:\n  speedup: 0\n"),
            "F:9:12: clock.speedup: 0 is below 0.001, a thousandth of real speed",
        ),
        (
            appended("slo:\n  max_failure_ratio: .nan\n"),
            "F:9:22: slo.max_failure_ratio: invalid YAML: value `.nan` is not a finite number",
        ),
        (
            appended("telemetry:\n  payload_bytes: 99999999999\n"),
            "F:9:18: telemetry.payload_bytes: 99999999999 is out of range; must be 1 to 131072",
        ),
    ]);
}

#[test]
fn duplicate_keys_tabs_and_nul_bytes_are_yaml_errors_with_their_position() {
    check(&[
        (
            with("  size: 10\n", "  size: 10\n  size: 11\n"),
            "F:4:3: fleet.size: invalid YAML: duplicate mapping key `size` is not allowed here",
        ),
        (
            with("  size: 10", "\tsize: 10"),
            "F:3:2: fleet: invalid YAML: tabs disallowed within this context (block indentation)",
        ),
        (
            with("small", "sm\0ll"),
            "F:1:9: name: invalid YAML: unexpected character: `\\u{0}'",
        ),
        (
            format!("{MINIMAL}---\n{MINIMAL}"),
            "F:9:1: (top level): invalid YAML: only single YAML document expected but multiple found",
        ),
    ]);
}

#[test]
fn bytes_that_are_not_utf8_are_located_in_their_field() {
    let mut bytes = with("small", "sm@ll").into_bytes();
    let at = bytes.iter().position(|&b| b == b'@').expect("marker");
    bytes[at] = 0xFF;
    assert_eq!(
        refusal(&bytes),
        "F:1:9: name: byte 0xff is not UTF-8; a scenario must be UTF-8 text"
    );

    let mut bytes = with("10s", "1@s").into_bytes();
    let at = bytes.iter().position(|&b| b == b'@').expect("marker");
    bytes[at] = 0xC3;
    assert_eq!(
        refusal(&bytes),
        "F:7:14: run.duration: byte 0xc3 is not UTF-8; a scenario must be UTF-8 text"
    );
}

#[test]
fn empty_blank_and_comment_only_files_say_what_a_scenario_needs() {
    let needs = "(top level): the file is empty; a scenario needs at least name, fleet.size, arrival.rate and run.duration";
    assert_eq!(refusal(""), format!("F:1:1: {needs}"));
    assert_eq!(refusal("   \n\n"), format!("F:3:1: {needs}"));
    assert_eq!(refusal("# nothing\n"), format!("F:2:1: {needs}"));
}

#[test]
fn a_huge_file_is_refused_without_being_read_whole() {
    let mut huge = MINIMAL.to_owned();
    while huge.len() as u64 <= MAX_SCENARIO_BYTES {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let reason = format!("the file is larger than {MAX_SCENARIO_BYTES} bytes; is it a scenario?");
    assert_eq!(refusal(&huge), format!("F:1:1: (top level): {reason}"));

    let endless = Scenario::load(Path::new("/dev/zero")).expect_err("an endless file");
    assert_eq!(
        endless.to_string(),
        format!("/dev/zero:1:1: (top level): {reason}")
    );
}

#[test]
fn nesting_and_alias_bombs_are_refused_by_the_parser_budget() {
    let deep = appended(&format!("x: {}\n", "[".repeat(10_000)));
    assert_eq!(
        refusal(deep),
        "F:8:259: x[0]: invalid YAML: recursion limit exceeded"
    );
    let mut bomb = String::from("name: small\na: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        let aliases = vec![format!("*{previous}"); 10].join(",");
        bomb.push_str(&format!("{name}: &{name} [{aliases}]\n"));
    }
    let refused = refusal(bomb);
    assert!(
        refused.contains("invalid YAML: YAML document too large or too complex"),
        "{refused}"
    );
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_are_read_as_text() {
    assert_eq!(loads(format!("\u{feff}{MINIMAL}")).name, "small");
    assert_eq!(loads(MINIMAL.replace('\n', "\r\n")).fleet.size, 10);
    let crlf = with("size: 10", "size: ten").replace('\n', "\r\n");
    assert_eq!(
        refusal(crlf),
        "F:3:9: fleet.size: expected a whole number, found the text `ten`"
    );
}

fn serial(pattern: &str) -> String {
    with(
        "  size: 10\n",
        &format!("  size: 10\n  serial_pattern: {pattern}\n"),
    )
}

#[test]
fn serial_patterns_that_would_make_unsafe_paths_are_refused_at_load() {
    let only = "literal text may only use A-Z, a-z, 0-9, _ and -";
    check(&[
        (
            serial("\"../{seq}\""),
            &format!("F:4:19: fleet.serial_pattern: `../{{seq}}` contains `.`; {only}"),
        ),
        (
            serial("\"/etc/{seq}\""),
            &format!("F:4:19: fleet.serial_pattern: `/etc/{{seq}}` contains `/`; {only}"),
        ),
        (
            serial("\"a\\0{seq}\""),
            &format!("F:4:19: fleet.serial_pattern: `a\\0{{seq}}` contains `\\0`; {only}"),
        ),
        (
            serial("'a\\{seq}'"),
            &format!("F:4:19: fleet.serial_pattern: `a\\\\{{seq}}` contains `\\\\`; {only}"),
        ),
        (
            serial("\"..{seq}\""),
            &format!("F:4:19: fleet.serial_pattern: `..{{seq}}` contains `.`; {only}"),
        ),
        (
            serial("\"d\u{e9}v{seq}\""),
            &format!("F:4:19: fleet.serial_pattern: `d\u{e9}v{{seq}}` contains `\u{e9}`; {only}"),
        ),
        (
            serial("\"d{seq}\\n\""),
            &format!("F:4:19: fleet.serial_pattern: `d{{seq}}\\n` contains `\\n`; {only}"),
        ),
        (
            serial("\"d{seq:999999999}\""),
            "F:4:19: fleet.serial_pattern: `d{seq:999999999}`: a width of 999999999 exceeds the 100-character serial limit",
        ),
        (
            serial("\"d{seq:99999999999999999999}\""),
            "F:4:19: fleet.serial_pattern: `d{seq:99999999999999999999}`: placeholder must be {seq} or {seq:N}",
        ),
        (
            with("name: small", "name: ../x"),
            "F:1:7: name: `../x` contains `.`; only A-Z, a-z, 0-9, _ and - are allowed",
        ),
        (
            with("name: small", "name: \"..\""),
            "F:1:7: name: `..` contains `.`; only A-Z, a-z, 0-9, _ and - are allowed",
        ),
        (
            appended("provisioning:\n  template: a/b\n"),
            "F:9:13: provisioning.template: `a/b` contains `/`; only A-Z, a-z, 0-9, _ and - are allowed",
        ),
    ]);
}

#[test]
fn a_key_exchange_devices_cannot_offer_is_refused_naming_the_allowed_ones() {
    let allowed = "x25519, secp256r1, x25519mlkem768";
    check(&[
        (
            appended("tls:\n  key_exchange: p521\n"),
            &format!("F:9:17: tls.key_exchange: `p521` is not one of: {allowed}"),
        ),
        (
            appended("tls:\n  key_exchange: X25519\n"),
            &format!("F:9:17: tls.key_exchange: `X25519` is not one of: {allowed}"),
        ),
        (
            appended("tls:\n  key_exchange: \"\"\n"),
            &format!("F:9:17: tls.key_exchange: `` is not one of: {allowed}"),
        ),
        (
            appended("tls:\n  key_exchange: [x25519, secp256r1]\n"),
            "F:9:17: tls.key_exchange: expected text, found a list",
        ),
        (
            appended("tls:\n  key_exchange: 25519\n"),
            "F:9:17: tls.key_exchange: expected text, found the number 25519",
        ),
        (
            appended("tls: secp256r1\n"),
            "F:8:6: tls: expected a mapping of fields, found the text `secp256r1`",
        ),
        (
            appended("tls:\n  groups: secp256r1\n"),
            "F:9:3: tls.groups: unknown field; accepted fields: key_exchange",
        ),
    ]);
    assert_eq!(loads(appended("tls:\n")).tls, Default::default());
}

#[test]
fn a_file_that_cannot_be_read_is_named_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    let error = Scenario::load(&missing).expect_err("missing");
    assert!(matches!(error, ScenarioError::Read { .. }));
    assert_eq!(
        error.to_string(),
        format!(
            "{}: cannot read scenario: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let error = Scenario::load(dir.path()).expect_err("a directory");
    assert_eq!(
        error.to_string(),
        format!(
            "{}: cannot read scenario: Is a directory (os error 21)",
            dir.path().display()
        )
    );

    let locked = dir.path().join("locked.yaml");
    std::fs::write(&locked, MINIMAL).expect("write");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    // Root reads any file whatever its mode; the refusal is only observable as a user.
    if std::fs::read(&locked).is_err() {
        let error = Scenario::load(&locked).expect_err("mode 0000");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: cannot read scenario: Permission denied (os error 13)",
                locked.display()
            )
        );
    }
}
