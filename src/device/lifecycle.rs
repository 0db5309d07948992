//! The decisions of a device's life, kept apart from its I/O: how long to
//! back off after a failure, when to give up, and when its certificate is
//! due for rotation. The device task asks these questions and performs the
//! I/O; these types answer them from time values alone, so they are tested
//! with paused tokio time and no sockets.

use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::time::Instant;

use crate::observe::FailureReason;

/// Capped exponential backoff with full jitter, and a bounded number of
/// attempts per step: a device never hot-loops against a failing service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

/// The floor under a jittered delay, so that even an unlucky draw of zero
/// leaves the service a moment.
pub const MIN_BACKOFF: Duration = Duration::from_millis(5);

/// How many more attempts a throttled step gets than a failing one: the
/// service asked to slow down, it did not refuse.
pub const THROTTLE_PATIENCE: u32 = 10;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    After(Duration),
    GiveUp(FailureReason),
}

impl RetryPolicy {
    /// The ceiling of the delay before attempt `attempt + 1` (`attempt`
    /// counts failures so far, starting at 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.base.saturating_mul(doubling).min(self.max)
    }

    /// Decides after the `attempt`-th consecutive failure of one step.
    pub fn after_failure(&self, attempt: u32, reason: FailureReason, rng: &mut impl Rng) -> Retry {
        let patience = match reason {
            FailureReason::Throttled => THROTTLE_PATIENCE,
            _ => 1,
        };
        if attempt >= self.max_attempts.saturating_mul(patience) {
            return Retry::GiveUp(reason);
        }
        let ceiling = self.ceiling(attempt);
        let jittered = ceiling.mul_f64(rng.random_range(0.0..=1.0));
        Retry::After(jittered.max(MIN_BACKOFF.min(ceiling)))
    }
}

/// When a device checks its certificate and when it decides to rotate, in
/// real time (the scenario's simulated durations already scaled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationSchedule {
    pub check_every: Duration,
    pub renew_before: Duration,
    pub jitter: Duration,
}

impl RotationSchedule {
    /// The next expiry check after `now`: one interval plus random jitter,
    /// so that a cohort issued together does not check in lockstep.
    pub fn next_check(&self, now: Instant, rng: &mut impl Rng) -> Instant {
        let jitter = self.jitter.mul_f64(rng.random_range(0.0..=1.0));
        now + self.check_every + jitter
    }

    /// Whether a certificate expiring at `not_after` must be renewed at
    /// `now` (wall clock, as the certificate's own dates are).
    pub fn is_due(&self, not_after: SystemTime, now: SystemTime) -> bool {
        match not_after.duration_since(now) {
            Ok(left) => left <= self.renew_before,
            Err(_) => true,
        }
    }
}

/// Runs `step` under the step deadline; an expired deadline is a failure
/// like any other, with its own reason.
pub async fn with_deadline<T, E>(
    deadline: Duration,
    step: impl std::future::Future<Output = Result<T, E>>,
    on_timeout: impl FnOnce() -> E,
) -> Result<T, E> {
    match tokio::time::timeout(deadline, step).await {
        Ok(result) => result,
        Err(_) => Err(on_timeout()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_attempts: 5,
        }
    }

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        let p = policy();
        let ceilings: Vec<_> = (1..=8).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn a_device_gives_up_after_its_last_attempt() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = policy();
        assert!(matches!(
            p.after_failure(4, FailureReason::Timeout, &mut rng),
            Retry::After(_)
        ));
        assert_eq!(
            p.after_failure(5, FailureReason::Timeout, &mut rng),
            Retry::GiveUp(FailureReason::Timeout)
        );
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_between_floor_and_ceiling(attempt in 1u32..4, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let p = policy();
            match p.after_failure(attempt, FailureReason::Connection, &mut rng) {
                Retry::After(d) => {
                    prop_assert!(d >= MIN_BACKOFF);
                    prop_assert!(d <= p.ceiling(attempt));
                }
                Retry::GiveUp(_) => prop_assert!(false, "gave up too early"),
            }
        }
    }

    #[test]
    fn rotation_is_due_inside_the_renewal_window_and_after_expiry() {
        let s = RotationSchedule {
            check_every: Duration::from_secs(1),
            renew_before: Duration::from_secs(10),
            jitter: Duration::ZERO,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!s.is_due(now + Duration::from_secs(11), now));
        assert!(s.is_due(now + Duration::from_secs(10), now));
        assert!(s.is_due(now - Duration::from_secs(1), now));
    }

    #[tokio::test(start_paused = true)]
    async fn checks_are_spread_by_jitter_but_never_early() {
        let s = RotationSchedule {
            check_every: Duration::from_secs(6),
            renew_before: Duration::from_secs(10),
            jitter: Duration::from_secs(2),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let now = Instant::now();
        let checks: Vec<_> = (0..50).map(|_| s.next_check(now, &mut rng) - now).collect();
        assert!(
            checks
                .iter()
                .all(|d| *d >= Duration::from_secs(6) && *d <= Duration::from_secs(8))
        );
        assert!(
            checks.iter().any(|d| *d != checks[0]),
            "jitter spreads the cohort"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_hangs_fails_at_its_deadline() {
        let started = Instant::now();
        let result: Result<(), &str> = with_deadline(
            Duration::from_secs(10),
            std::future::pending(),
            || "timeout",
        )
        .await;
        assert_eq!(result, Err("timeout"));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
