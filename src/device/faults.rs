//! The faults a device injects into its own life: connections dropped at
//! random, at named steps or together with the whole fleet, crashes that
//! abort the task and restart it from the credential store, and a skewed
//! clock. The decisions (whether to drop here, when to crash next) live
//! here; the task performs them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::time::Instant;

use crate::observe::faults::{FaultKind, FaultLog};
use crate::scenario::DropPoint;

/// What the scenario asks devices to do wrong, shared by the fleet.
#[derive(Clone)]
pub struct DeviceFaults {
    /// Chance of a drop right after each telemetry message or provisioning reply.
    pub drop_rate: f64,
    /// Steps at which each device drops its connection once per kind of flow.
    pub drop_at: Vec<DropPoint>,
    /// When every connected device drops its connection at once.
    pub storms: Vec<Instant>,
    /// Crashes per device per second, and at most how many.
    pub crash: Option<(f64, u32)>,
    /// Share of devices with a skewed clock, and by how much (real seconds,
    /// negative behind).
    pub skew: Option<(f64, f64)>,
    pub log: Arc<FaultLog>,
}

impl DeviceFaults {
    /// No faults at all.
    pub fn none(log: Arc<FaultLog>) -> DeviceFaults {
        DeviceFaults {
            drop_rate: 0.0,
            drop_at: Vec::new(),
            storms: Vec::new(),
            crash: None,
            skew: None,
            log,
        }
    }
}

/// Which flow a step belongs to: a drop point fires once in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Provision,
    Rotation,
}

/// One device's fault state.
#[derive(Debug, Default)]
pub(super) struct FaultState {
    /// Drop points already passed, one bit per (flow, point).
    passed: u8,
    /// Real seconds this device's clock is off.
    skew_seconds: f64,
    crashes: u32,
}

impl FaultState {
    pub(super) fn new(faults: &DeviceFaults, rng: &mut impl Rng) -> FaultState {
        let skew_seconds = match faults.skew {
            Some((share, offset)) if rng.random_bool(share.clamp(0.0, 1.0)) => {
                faults.log.injected(FaultKind::ClockSkew);
                offset
            }
            _ => 0.0,
        };
        FaultState {
            skew_seconds,
            ..FaultState::default()
        }
    }

    /// Whether to drop at `point` of `flow` now: only the first time.
    pub(super) fn drop_here(
        &mut self,
        faults: &DeviceFaults,
        flow: Flow,
        point: DropPoint,
    ) -> bool {
        if !faults.drop_at.contains(&point) {
            return false;
        }
        let bit = 1u8 << (point as u8 + 3 * (flow as u8));
        let first = self.passed & bit == 0;
        self.passed |= bit;
        if first {
            faults.log.injected(kind_of(point));
        }
        first
    }

    /// When this device crashes next, if it still may.
    pub(super) fn next_crash(&self, faults: &DeviceFaults, rng: &mut impl Rng) -> Option<Duration> {
        let (rate, max) = faults.crash?;
        (self.crashes < max && rate > 0.0).then(|| {
            let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
            Duration::from_secs_f64((-uniform.ln() / rate).min(1e9))
        })
    }

    pub(super) fn crashed(&mut self, faults: &DeviceFaults) {
        self.crashes += 1;
        faults.log.injected(FaultKind::Crash);
    }

    pub(super) fn crashes(&self) -> u32 {
        self.crashes
    }

    /// The time on this device's own clock.
    pub(super) fn clock(&self, now: SystemTime) -> SystemTime {
        let offset = Duration::from_secs_f64(self.skew_seconds.abs());
        if self.skew_seconds >= 0.0 {
            now + offset
        } else {
            now.checked_sub(offset).unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// Whether a random drop happens now.
pub(super) fn random_drop(faults: &DeviceFaults, rng: &mut impl Rng) -> bool {
    let dropped = faults.drop_rate > 0.0 && rng.random_bool(faults.drop_rate.min(1.0));
    if dropped {
        faults.log.injected(FaultKind::RandomDrop);
    }
    dropped
}

/// The next fleet-wide drop after `now`.
pub(super) fn next_storm(faults: &DeviceFaults, now: Instant) -> Option<Instant> {
    faults.storms.iter().copied().find(|at| *at > now)
}

fn kind_of(point: DropPoint) -> FaultKind {
    match point {
        DropPoint::AfterCertificate => FaultKind::DropAfterCertificate,
        DropPoint::AfterStore => FaultKind::DropAfterStore,
        DropPoint::AfterReconnect => FaultKind::DropAfterReconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn faults() -> DeviceFaults {
        DeviceFaults {
            drop_at: vec![DropPoint::AfterCertificate],
            crash: Some((2.0, 2)),
            ..DeviceFaults::none(Arc::new(FaultLog::new("t")))
        }
    }

    #[test]
    fn a_drop_point_fires_once_per_flow() {
        let faults = faults();
        let mut state = FaultState::default();
        let point = DropPoint::AfterCertificate;
        assert!(state.drop_here(&faults, Flow::Provision, point));
        assert!(!state.drop_here(&faults, Flow::Provision, point));
        assert!(state.drop_here(&faults, Flow::Rotation, point));
        assert!(!state.drop_here(&faults, Flow::Rotation, point));
        assert!(!state.drop_here(&faults, Flow::Rotation, DropPoint::AfterStore));
        assert_eq!(
            faults.log.injected_count(FaultKind::DropAfterCertificate),
            2
        );
    }

    #[test]
    fn crashes_stop_at_their_maximum() {
        let faults = faults();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut state = FaultState::default();
        assert!(state.next_crash(&faults, &mut rng).is_some());
        state.crashed(&faults);
        state.crashed(&faults);
        assert_eq!(state.next_crash(&faults, &mut rng), None);
    }

    #[test]
    fn a_skewed_clock_runs_ahead_or_behind() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ahead = FaultState {
            skew_seconds: 10.0,
            ..FaultState::default()
        };
        let behind = FaultState {
            skew_seconds: -10.0,
            ..FaultState::default()
        };
        assert_eq!(ahead.clock(now), now + Duration::from_secs(10));
        assert_eq!(behind.clock(now), now - Duration::from_secs(10));
    }
}
