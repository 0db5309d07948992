//! The small text formats of a scenario: durations (`1.5s`, `30d`), rates
//! (`50/s`), serial patterns (`qs-{seq:05}`), topics and names. Each parser
//! takes the text alone and returns the reason it was refused, so the caller
//! can attach the field path and position.

use std::time::Duration;

use super::{Rate, SerialPattern};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Units accepted in durations, with their length in nanoseconds, longest suffix first
/// so that `ms` is not read as `m`.
// `min` as rates spell minutes (`30/min`).
const DURATION_UNITS: [(&str, u128); 6] = [
    ("min", 60 * NANOS_PER_SECOND),
    ("ms", 1_000_000),
    ("s", NANOS_PER_SECOND),
    ("m", 60 * NANOS_PER_SECOND),
    ("h", 3_600 * NANOS_PER_SECOND),
    ("d", 86_400 * NANOS_PER_SECOND),
];

/// Durations are capped so that scaling them by any accepted speedup stays representable.
const MAX_DURATION_NANOS: u128 = 36_500 * 86_400 * NANOS_PER_SECOND;

/// Rate units and the seconds they stand for.
const RATE_UNITS: [(&str, f64); 3] = [("s", 1.0), ("min", 60.0), ("h", 3_600.0)];

/// Longest serial accepted; it becomes the thing name and MQTT client id.
pub(crate) const MAX_SERIAL_CHARS: usize = 100;

/// AWS allows 7 slashes; `fleetsim/<thing>/` already uses 2.
const MAX_TOPIC_SLASHES: usize = 5;

/// AWS topics are at most 256 bytes; the prefix `fleetsim/<serial>/` takes up to 110.
const MAX_TOPIC_CHARS: usize = 256 - "fleetsim/".len() - MAX_SERIAL_CHARS - 1;

/// Parses `250ms`, `1.5s`, `10m`, `6h` or `30d` exactly (no floating point rounding).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let Some((number, unit_nanos)) = split_duration_unit(text) else {
        return Err(duration_unit_reason(text));
    };
    let nanos = decimal_times(number, unit_nanos)
        .ok_or_else(|| format!("`{text}` is not a duration like 250ms, 1.5s, 10m, 6h or 30d"))?;
    if nanos > MAX_DURATION_NANOS {
        return Err(format!("`{text}` is longer than 100 years"));
    }
    let seconds = (nanos / NANOS_PER_SECOND) as u64;
    let subsec = (nanos % NANOS_PER_SECOND) as u32;
    Ok(Duration::new(seconds, subsec))
}

fn split_duration_unit(text: &str) -> Option<(&str, u128)> {
    DURATION_UNITS
        .iter()
        .find_map(|(unit, nanos)| text.strip_suffix(unit).map(|number| (number, *nanos)))
}

fn duration_unit_reason(text: &str) -> String {
    if parse_decimal(text).is_some() {
        format!("`{text}` has no unit; add one, e.g. {text}s (units: ms, s, m or min, h, d)")
    } else {
        format!("`{text}` is not a duration like 250ms, 1.5s, 10m, 6h or 30d")
    }
}

/// `number * unit`, where `number` is a non-negative decimal such as `1.25`;
/// fractions finer than the unit's nanoseconds are dropped.
fn decimal_times(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = parse_decimal(number)?;
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let whole_part = whole.parse::<u128>().ok()?.checked_mul(unit)?;
    whole_part.checked_add(fraction_value.checked_mul(unit)? / scale)
}

/// Splits `12.5` into `("12", "5")`; digits only, at least one before the point.
fn parse_decimal(text: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let fraction_ok = !text.contains('.') || !fraction.is_empty();
    (!whole.is_empty() && digits(whole) && digits(fraction) && fraction_ok && fraction.len() <= 18)
        .then_some((whole, fraction))
}

/// Writes a duration in the scenario syntax: the largest unit that divides it
/// exactly, otherwise seconds with a decimal fraction. `parse_duration` reads it back.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    let exact_unit = DURATION_UNITS
        .iter()
        .rev()
        .find(|(_, unit)| nanos != 0 && nanos.is_multiple_of(*unit));
    match exact_unit {
        Some((name, unit)) => format!("{}{name}", nanos / unit),
        None if nanos == 0 => "0s".into(),
        None => format_seconds_fraction(duration),
    }
}

fn format_seconds_fraction(duration: Duration) -> String {
    let fraction = format!("{:09}", duration.subsec_nanos());
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

/// Parses `50/s`, `0.5/min` or `1200/h`; the rate must be above zero.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, String> {
    let Some((number, unit)) = text.split_once('/') else {
        return Err(rate_unit_reason(text));
    };
    let seconds = RATE_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, seconds)| *seconds)
        .ok_or_else(|| format!("`{text}` has an unknown unit `/{unit}`; use /s, /min or /h"))?;
    let count = parse_decimal(number)
        .and_then(|_| number.parse::<f64>().ok())
        .ok_or_else(|| format!("`{text}` is not a rate like 50/s, 30/min or 100/h"))?;
    if !count.is_finite() {
        return Err(format!("`{text}` is too large a rate"));
    }
    if count <= 0.0 {
        return Err(format!("`{text}` is zero; a rate must be above zero"));
    }
    Ok(Rate {
        per_second: count / seconds,
    })
}

fn rate_unit_reason(text: &str) -> String {
    if parse_decimal(text).is_some() {
        format!("`{text}` has no unit; add one, e.g. {text}/s (units: /s, /min, /h)")
    } else {
        format!("`{text}` is not a rate like 50/s, 30/min or 100/h")
    }
}

/// Parses `qs-{seq:05}`: literal `[A-Za-z0-9_-]` text around exactly one
/// `{seq}` or `{seq:N}` placeholder.
pub(crate) fn parse_serial_pattern(text: &str) -> Result<SerialPattern, String> {
    let Some(open) = text.find('{') else {
        return Err(format!("`{text}` has no {{seq}} placeholder"));
    };
    let close = text[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| format!("`{text}` has an unclosed `{{`"))?;
    let (prefix, suffix) = (&text[..open], &text[close + 1..]);
    let width = placeholder_width(&text[open + 1..close])
        .ok_or_else(|| format!("`{text}`: placeholder must be {{seq}} or {{seq:N}}"))?;
    // Checked here, before any serial is formatted: `format!` panics on a width over u16.
    if width > MAX_SERIAL_CHARS {
        return Err(format!(
            "`{text}`: a width of {width} exceeds the {MAX_SERIAL_CHARS}-character serial limit"
        ));
    }
    check_serial_literal(text, prefix)?;
    check_serial_literal(text, suffix)?;
    Ok(SerialPattern {
        prefix: prefix.into(),
        width,
        suffix: suffix.into(),
    })
}

/// `seq` gives width 0 (no padding); `seq:05` or `seq:5` gives 5.
fn placeholder_width(inner: &str) -> Option<usize> {
    match inner.strip_prefix("seq")? {
        "" => Some(0),
        rest => {
            let digits = rest.strip_prefix(':')?;
            let valid = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            valid.then(|| digits.parse().ok()).flatten()
        }
    }
}

fn check_serial_literal(pattern: &str, literal: &str) -> Result<(), String> {
    if literal.contains(['{', '}']) {
        return Err(format!(
            "`{pattern}` must contain exactly one {{seq}} placeholder"
        ));
    }
    match literal.chars().find(|c| !is_name_char(*c)) {
        // Escaped, so that a NUL or a control character is visible in the message.
        Some(c) => Err(format!(
            "`{}` contains `{}`; literal text may only use A-Z, a-z, 0-9, _ and -",
            pattern.escape_debug(),
            c.escape_debug()
        )),
        None => Ok(()),
    }
}

/// Checks that the longest serial of a fleet of `size` stays within the limit.
pub(crate) fn check_serial_length(pattern: &SerialPattern, size: u64) -> Result<(), String> {
    let longest = pattern.serial(size.saturating_sub(1)).chars().count();
    if longest > MAX_SERIAL_CHARS {
        return Err(format!(
            "serials reach {longest} characters for a fleet of {size}; \
             the limit is {MAX_SERIAL_CHARS} (they become thing names and client ids)"
        ));
    }
    Ok(())
}

/// A topic suffix: levels of `[A-Za-z0-9_-]` joined by `/`, within AWS's depth and length.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.starts_with('$') {
        return Err(format!(
            "`{topic}` starts with `$`, which AWS reserves for its own topics"
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` contains a wildcard; a publish topic cannot"
        ));
    }
    if topic.split('/').any(str::is_empty) {
        return Err(format!("`{topic}` has an empty level"));
    }
    if let Some(c) = topic.chars().find(|c| *c != '/' && !is_name_char(*c)) {
        return Err(format!(
            "`{topic}` contains `{c}`; levels may only use A-Z, a-z, 0-9, _ and -"
        ));
    }
    check_topic_size(topic)
}

fn check_topic_size(topic: &str) -> Result<(), String> {
    let slashes = topic.matches('/').count();
    if slashes > MAX_TOPIC_SLASHES {
        return Err(format!(
            "`{topic}` has {slashes} slashes; at most {MAX_TOPIC_SLASHES}, because the full \
             topic fleetsim/<thing>/<topic> must stay within AWS's 7"
        ));
    }
    if topic.len() > MAX_TOPIC_CHARS {
        return Err(format!(
            "topic is {} characters; at most {MAX_TOPIC_CHARS}, so that the full topic stays \
             within AWS's 256 bytes",
            topic.len()
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9_-]{1,max}`, the shape of run names and template names.
pub(crate) fn check_name(text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() || text.chars().count() > max {
        return Err(format!("`{text}` must be 1 to {max} characters long"));
    }
    match text.chars().find(|c| !is_name_char(*c)) {
        Some(c) => Err(format!(
            "`{}` contains `{}`; only A-Z, a-z, 0-9, _ and - are allowed",
            text.escape_debug(),
            c.escape_debug()
        )),
        None => Ok(()),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_formatted_duration_parses_back(secs in 0u64..3_153_600_000, nanos in 0u32..1_000_000_000) {
            let duration = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn any_written_decimal_duration_is_read_exactly(whole in 0u64..1_000_000, millis in 0u32..1000) {
            let text = format!("{whole}.{millis:03}s");
            let expected = Duration::new(whole, millis * 1_000_000);
            prop_assert_eq!(parse_duration(&text), Ok(expected));
        }
    }

    #[test]
    fn durations_read_every_unit_and_decimals_exactly() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10min"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("0.0015ms"), Ok(Duration::from_nanos(1500)));
    }

    #[test]
    fn a_bare_number_is_told_to_add_a_unit() {
        let reason = parse_duration("30").unwrap_err();
        assert!(reason.contains("has no unit"), "{reason}");
    }

    #[test]
    fn malformed_durations_are_refused() {
        for text in [
            "", "s", "-5s", "1.s", ".5s", "5 s", "5sec", "1e3s", "5S", "1.2.3s",
        ] {
            assert!(parse_duration(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn durations_longer_than_a_century_are_refused() {
        assert!(parse_duration("36500d").is_ok());
        let reason = parse_duration("36501d").unwrap_err();
        assert!(reason.contains("longer than 100 years"), "{reason}");
        let reason = parse_duration("999999999999999999999999999999999999999999d").unwrap_err();
        assert!(reason.contains("not a duration"), "{reason}");
    }

    #[test]
    fn formatter_picks_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(2_592_000)), "30d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            format_duration(Duration::from_nanos(1_000_000_001)),
            "1.000000001s"
        );
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn rates_convert_to_devices_per_second() {
        assert_eq!(parse_rate("50/s").map(|r| r.per_second), Ok(50.0));
        assert_eq!(parse_rate("30/min").map(|r| r.per_second), Ok(0.5));
        assert_eq!(parse_rate("7200/h").map(|r| r.per_second), Ok(2.0));
        assert_eq!(parse_rate("0.5/s").map(|r| r.per_second), Ok(0.5));
    }

    #[test]
    fn zero_unitless_and_unknown_unit_rates_are_refused() {
        assert!(parse_rate("0/s").unwrap_err().contains("above zero"));
        assert!(parse_rate("0.0/min").unwrap_err().contains("above zero"));
        assert!(parse_rate("50").unwrap_err().contains("no unit"));
        assert!(parse_rate("50/m").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("-5/s").is_err());
        assert!(parse_rate("fast/s").is_err());
    }

    #[test]
    fn serial_patterns_split_around_the_placeholder() {
        let pattern = parse_serial_pattern("qs-{seq:05}-x").expect("valid pattern");
        assert_eq!(pattern.serial(42), "qs-00042-x");
        assert_eq!(
            parse_serial_pattern("{seq}").map(|p| p.serial(7)),
            Ok("7".into())
        );
        assert_eq!(parse_serial_pattern("d{seq:3}").map(|p| p.width), Ok(3));
    }

    #[test]
    fn serial_patterns_without_exactly_one_valid_placeholder_are_refused() {
        for text in [
            "sim",
            "sim-{seq",
            "{seq}{seq}",
            "{id}",
            "{seq:}",
            "{seq:x}",
            "a b{seq}",
        ] {
            assert!(parse_serial_pattern(text).is_err(), "{text} was accepted");
        }
        assert!(
            parse_serial_pattern("sim.{seq}")
                .unwrap_err()
                .contains("`.`")
        );
    }

    #[test]
    fn serials_longer_than_the_limit_are_refused() {
        assert!(
            parse_serial_pattern("{seq:101}").is_err(),
            "width over the limit"
        );
        let pattern = parse_serial_pattern("a{seq:100}").expect("valid pattern");
        assert!(check_serial_length(&pattern, 10).is_err());
        let pattern = parse_serial_pattern("{seq:100}").expect("valid pattern");
        assert!(check_serial_length(&pattern, 10).is_ok());
    }

    #[test]
    fn topics_follow_aws_rules() {
        assert!(check_topic("telemetry").is_ok());
        assert!(check_topic("a/b/c/d/e/f").is_ok());
        assert!(
            check_topic("a/b/c/d/e/f/g")
                .unwrap_err()
                .contains("6 slashes")
        );
        assert!(check_topic("$aws/x").unwrap_err().contains("reserves"));
        assert!(check_topic("a/+/b").unwrap_err().contains("wildcard"));
        assert!(check_topic("a//b").unwrap_err().contains("empty level"));
        assert!(check_topic("/a").unwrap_err().contains("empty level"));
        assert!(check_topic("a.b").unwrap_err().contains("`.`"));
        assert!(
            check_topic(&"x".repeat(147))
                .unwrap_err()
                .contains("256 bytes")
        );
    }

    #[test]
    fn names_allow_only_safe_characters() {
        assert!(check_name("quick_start-1", 64).is_ok());
        assert!(check_name("", 64).is_err());
        assert!(check_name(&"a".repeat(65), 64).is_err());
        assert!(check_name("a b", 64).is_err());
    }
}
