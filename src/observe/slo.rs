//! Service-level verdicts: each objective a scenario sets, compared with what
//! the run measured, plus the invariant every run must hold whatever the
//! scenario says (no device bricked, no retired certificate accepted).
//!
//! An objective with nothing measured fails: a run that never connected has
//! not shown that its connections are fast.

use serde::{Deserialize, Serialize};

use crate::scenario::Slo;

/// The name of the always-checked invariant in reports.
pub const INVARIANT: &str = "no bricked or unverified device and no retired certificate accepted";

/// Which side of the threshold passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtMost,
    AtLeast,
}

/// One objective's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloVerdict {
    pub name: String,
    /// `None` when the run produced nothing to measure.
    pub measured: Option<f64>,
    pub threshold: f64,
    pub bound: Bound,
    pub unit: String,
    pub passed: bool,
}

/// What the run measured, in the units the objectives are written in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    pub connect_p99_ms: Option<f64>,
    pub provisioning_p99_ms: Option<f64>,
    pub failure_ratio: f64,
    pub min_rotations_per_device: Option<u64>,
    pub bricked: u64,
    pub unverified: u64,
    pub retired_still_accepted: u64,
}

/// Verdicts for every objective `slo` sets, then the invariant.
pub fn verdicts(slo: &Slo, measured: &Measured) -> Vec<SloVerdict> {
    let mut verdicts = Vec::new();
    if let Some(limit) = slo.connect_p99 {
        verdicts.push(at_most(
            "connect_p99",
            measured.connect_p99_ms,
            millis(limit),
            "ms",
        ));
    }
    if let Some(limit) = slo.provisioning_p99 {
        let p99 = measured.provisioning_p99_ms;
        verdicts.push(at_most("provisioning_p99", p99, millis(limit), "ms"));
    }
    if let Some(limit) = slo.max_failure_ratio {
        let ratio = Some(measured.failure_ratio);
        verdicts.push(at_most("max_failure_ratio", ratio, limit, "ratio"));
    }
    if let Some(minimum) = slo.min_rotations_per_device {
        let least = measured.min_rotations_per_device.map(|n| n as f64);
        verdicts.push(at_least(
            "min_rotations_per_device",
            least,
            minimum as f64,
            "rotations",
        ));
    }
    verdicts.push(invariant(measured));
    verdicts
}

fn invariant(measured: &Measured) -> SloVerdict {
    let violations = measured.bricked + measured.unverified + measured.retired_still_accepted;
    at_most(INVARIANT, Some(violations as f64), 0.0, "devices")
}

fn at_most(name: &str, measured: Option<f64>, threshold: f64, unit: &str) -> SloVerdict {
    verdict(name, measured, threshold, Bound::AtMost, unit)
}

fn at_least(name: &str, measured: Option<f64>, threshold: f64, unit: &str) -> SloVerdict {
    verdict(name, measured, threshold, Bound::AtLeast, unit)
}

fn verdict(
    name: &str,
    measured: Option<f64>,
    threshold: f64,
    bound: Bound,
    unit: &str,
) -> SloVerdict {
    let passed = measured.is_some_and(|value| match bound {
        Bound::AtMost => value <= threshold,
        Bound::AtLeast => value >= threshold,
    });
    SloVerdict {
        name: name.to_owned(),
        measured,
        threshold,
        bound,
        unit: unit.to_owned(),
        passed,
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn objective_with_nothing_measured_fails() {
        let slo = Slo {
            connect_p99: Some(Duration::from_millis(50)),
            ..Slo::default()
        };
        let verdicts = verdicts(&slo, &Measured::default());
        assert_eq!(verdicts[0].name, "connect_p99");
        assert!(!verdicts[0].passed);
    }

    #[test]
    fn invariant_is_checked_without_any_objective() {
        let clean = verdicts(&Slo::default(), &Measured::default());
        assert_eq!(clean.len(), 1);
        assert!(clean[0].passed);
        let leaky = Measured {
            retired_still_accepted: 1,
            ..Measured::default()
        };
        assert!(!verdicts(&Slo::default(), &leaky)[0].passed);
    }
}
