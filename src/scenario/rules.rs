//! Rules that tie several scenario fields together: renewal shorter than
//! validity, jitter within the check interval, backoff bounds, and simulated
//! times that must stay expressible once scaled to real time. Each rule
//! blames the field the user most likely got wrong.

use std::time::Duration;

use super::fields::{Problem, Site};
use super::values::format_duration;

/// X.509 validity times have one-second resolution; a certificate shorter than
/// this could not be told apart from an expired one when it is renewed.
const MIN_REAL_VALIDITY: Duration = Duration::from_secs(2);

/// Below this, timers fire faster than tokio can schedule a fleet of them.
pub(crate) const MIN_REAL_TICK: Duration = Duration::from_millis(10);

/// A value together with the place to blame for it.
pub(crate) struct Sited<T> {
    pub value: T,
    pub site: Site,
}

pub(crate) fn check_renewal(
    renew_before: &Sited<Duration>,
    validity: &Sited<Duration>,
) -> Result<(), Problem> {
    if renew_before.value < validity.value {
        return Ok(());
    }
    let blame = if renew_before.site.written {
        &renew_before.site
    } else {
        &validity.site
    };
    Err(blame.problem(format!(
        "{} is not shorter than certificates.validity ({})",
        format_duration(renew_before.value),
        format_duration(validity.value)
    )))
}

pub(crate) fn check_jitter(
    jitter: &Sited<Duration>,
    check_every: &Sited<Duration>,
) -> Result<(), Problem> {
    if jitter.value <= check_every.value {
        return Ok(());
    }
    Err(jitter.site.problem(format!(
        "{} is longer than rotation.check_every ({})",
        format_duration(jitter.value),
        format_duration(check_every.value)
    )))
}

pub(crate) fn check_real_validity(
    validity: &Sited<Duration>,
    speedup: &Sited<f64>,
) -> Result<(), Problem> {
    let real = validity.value.div_f64(speedup.value);
    if real >= MIN_REAL_VALIDITY {
        return Ok(());
    }
    let why = format!(
        "X.509 times have one-second resolution, so rotation needs at least {} real",
        format_duration(MIN_REAL_VALIDITY)
    );
    Err(scaled_too_short(
        validity,
        speedup,
        "certificates.validity",
        real,
        &why,
    ))
}

pub(crate) fn check_real_tick(
    check_every: &Sited<Duration>,
    speedup: &Sited<f64>,
) -> Result<(), Problem> {
    let real = check_every.value.div_f64(speedup.value);
    if real >= MIN_REAL_TICK {
        return Ok(());
    }
    let why = format!(
        "it must be at least {} real",
        format_duration(MIN_REAL_TICK)
    );
    Err(scaled_too_short(
        check_every,
        speedup,
        "rotation.check_every",
        real,
        &why,
    ))
}

/// Blames a simulated duration that is too short once scaled: the duration
/// itself if the user wrote it, otherwise the speedup that shrank its default.
fn scaled_too_short(
    simulated: &Sited<Duration>,
    speedup: &Sited<f64>,
    name: &str,
    real: Duration,
    why: &str,
) -> Problem {
    let (value, real) = (format_duration(simulated.value), real_text(real));
    if simulated.site.written || !speedup.site.written {
        let factor = speedup.value;
        simulated.site.problem(format!(
            "{value} lasts {real} of real time at clock.speedup {factor}; {why}"
        ))
    } else {
        speedup.site.problem(format!(
            "{} makes {name} ({value}) last {real} of real time; {why}",
            speedup.value
        ))
    }
}

/// A scaled duration for messages, rounded to the millisecond when that keeps it non-zero.
fn real_text(real: Duration) -> String {
    let millis = Duration::from_millis(real.as_millis() as u64);
    format_duration(if millis.is_zero() { real } else { millis })
}

pub(crate) fn check_backoff(base: &Sited<Duration>, max: &Sited<Duration>) -> Result<(), Problem> {
    if max.value >= base.value {
        return Ok(());
    }
    let (blame, other, relation) = if max.site.written {
        (max, base, "shorter than run.backoff_base")
    } else {
        (base, max, "longer than run.backoff_max")
    };
    Err(blame.site.problem(format!(
        "{} is {relation} ({})",
        format_duration(blame.value),
        format_duration(other.value)
    )))
}
