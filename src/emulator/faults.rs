//! Faults the emulator injects on purpose, for fault-injection runs: Fleet
//! Provisioning answers delayed, throttled (429, as AWS's request limits
//! answer) or denied by the pre-provisioning hook (403, as a hook answering
//! `allowProvisioning: false`). Each injection is counted, so the run's
//! report can say what was done to the fleet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::provisioning::ErrorResponse;

/// How often, and how much, the emulator misbehaves.
#[derive(Debug, Default)]
pub struct EmulatorFaults {
    /// Share of RegisterThing requests the hook denies.
    pub deny_rate: f64,
    /// Share of Fleet Provisioning requests answered with a throttle.
    pub throttle_rate: f64,
    /// Added before every Fleet Provisioning answer.
    pub latency: Duration,
    denied: AtomicU64,
    throttled: AtomicU64,
    delayed: AtomicU64,
}

/// What the emulator injected so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InjectedCounts {
    pub denied: u64,
    pub throttled: u64,
    pub delayed: u64,
}

impl EmulatorFaults {
    pub fn new(deny_rate: f64, throttle_rate: f64, latency: Duration) -> EmulatorFaults {
        EmulatorFaults {
            deny_rate,
            throttle_rate,
            latency,
            ..EmulatorFaults::default()
        }
    }

    /// Waits the added latency, then decides whether this request is
    /// throttled instead of answered.
    pub(crate) async fn before_answer(&self) -> Result<(), ErrorResponse> {
        if !self.latency.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.latency).await;
        }
        if roll(self.throttle_rate) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(ErrorResponse::new(
                429,
                "ThrottlingException",
                "rate exceeded (injected fault)",
            ));
        }
        Ok(())
    }

    /// Whether the pre-provisioning hook denies this RegisterThing.
    pub(crate) fn hook_denies(&self) -> Result<(), ErrorResponse> {
        if !roll(self.deny_rate) {
            return Ok(());
        }
        self.denied.fetch_add(1, Ordering::Relaxed);
        Err(ErrorResponse::new(
            403,
            "AccessDeniedException",
            "pre-provisioning hook: allowProvisioning is false (injected fault)",
        ))
    }

    pub fn injected(&self) -> InjectedCounts {
        InjectedCounts {
            denied: self.denied.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
        }
    }
}

/// Stops `emulator` at `at` and starts it again after `down_for` with the
/// same `config`, which must name a state directory and the ports it is
/// bound to, so that clients find the same endpoint and registry. A run
/// that stops first gets its emulator back untouched.
pub async fn restart_at(
    emulator: super::Emulator,
    config: super::EmulatorConfig,
    at: tokio::time::Instant,
    down_for: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(super::Emulator, bool), super::EmulatorError> {
    tokio::select! {
        _ = stop.cancelled() => return Ok((emulator, false)),
        _ = tokio::time::sleep_until(at) => {}
    }
    tracing::info!("stopping the emulator (injected fault)");
    emulator.shutdown().await;
    tokio::time::sleep(down_for).await;
    let emulator = super::Emulator::start(config).await?;
    tracing::info!(mqtt = %emulator.mqtt_addr(), "emulator started again");
    Ok((emulator, true))
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random_bool(rate.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_certain_throttle_always_answers_429_after_the_latency() {
        let faults = EmulatorFaults::new(0.0, 1.0, Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let error = faults.before_answer().await.unwrap_err();
        assert_eq!(error.status_code, 429);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            faults.injected(),
            InjectedCounts {
                denied: 0,
                throttled: 1,
                delayed: 1
            }
        );
    }

    #[test]
    fn no_rate_never_denies() {
        let faults = EmulatorFaults::default();
        assert!((0..1000).all(|_| faults.hook_denies().is_ok()));
        assert_eq!(faults.injected().denied, 0);
    }
}
