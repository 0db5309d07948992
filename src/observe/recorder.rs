//! The run's measuring point, shared by every device task: latencies into HDR
//! histograms and Prometheus, failures and rotations into counters, device
//! states into gauges and atomics the progress display reads.
//!
//! Thousands of tasks record at once, so histograms are split into shards
//! picked per thread and counters are plain atomics; nothing waits on a
//! shared lock for long.

use std::array;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use ::metrics::{Counter, Gauge, Histogram as PromHistogram};
use hdrhistogram::Histogram;

use super::metrics::{
    ARRIVALS, BRICKED_DEVICES, DEVICES, OPERATION_FAILURES, ROTATION_LAG, ROTATIONS, RUN_INFO,
    SLO_CONNECT_P99, SLO_MAX_FAILURE_RATIO, SLO_MIN_ROTATIONS, SLO_PROVISIONING_P99,
    duration_metric,
};
use super::{DeviceState, FailureReason, Op};
use crate::scenario::Slo;

const OPS: usize = Op::ALL.len();
const REASONS: usize = FailureReason::ALL.len();
const STATES: usize = DeviceState::ALL.len();

/// Enough shards that a tokio worker pool rarely has two threads on one.
const SHARDS: usize = 8;

/// One microsecond to one hour, three significant digits.
const HDR_LOWEST_MICROS: u64 = 1;
const HDR_HIGHEST_MICROS: u64 = 3_600_000_000;
const HDR_SIGFIG: u8 = 3;

/// Live measurements of one run; share it as `Arc<Recorder>`.
pub struct Recorder {
    run: String,
    latencies: [ShardedHistogram; OPS],
    completed: [AtomicU64; OPS],
    failures: [[AtomicU64; REASONS]; OPS],
    states: [AtomicI64; STATES],
    rotations: AtomicU64,
    prometheus: PromHandles,
}

/// The Prometheus handles of one run, bound once so recording is a lookup-free
/// atomic update. Failure counters are bound on first use: most
/// (operation, reason) pairs never happen and should not appear as series.
struct PromHandles {
    durations: [PromHistogram; OPS],
    failures: [[OnceLock<Counter>; REASONS]; OPS],
    states: [Gauge; STATES],
    arrivals: Counter,
    rotations: Counter,
    rotation_lag: PromHistogram,
    bricked: Gauge,
    run_info: Gauge,
}

/// Counts at one instant, for the progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    states: [u64; STATES],
    completed: [u64; OPS],
    failures: [[u64; REASONS]; OPS],
    rotations: u64,
}

impl Recorder {
    pub fn new(run: &str) -> Recorder {
        Recorder {
            run: run.to_owned(),
            latencies: array::from_fn(|_| ShardedHistogram::new()),
            completed: array::from_fn(|_| AtomicU64::new(0)),
            failures: array::from_fn(|_| array::from_fn(|_| AtomicU64::new(0))),
            states: array::from_fn(|_| AtomicI64::new(0)),
            rotations: AtomicU64::new(0),
            prometheus: PromHandles::register(run),
        }
    }

    /// The run label every metric of this recorder carries.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// A step that succeeded, `latency` after it was due.
    pub fn record(&self, op: Op, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies[index(op)].record(micros);
        self.completed[index(op)].fetch_add(1, Relaxed);
        self.prometheus.durations[index(op)].record(latency.as_secs_f64());
    }

    /// A step that failed for `reason`.
    pub fn failure(&self, op: Op, reason: FailureReason) {
        self.failures[index(op)][reason as usize].fetch_add(1, Relaxed);
        self.prometheus.failure(&self.run, op, reason).increment(1);
    }

    /// A rotation that finished with the old certificate proven refused.
    pub fn rotation_completed(&self) {
        self.rotations.fetch_add(1, Relaxed);
        self.prometheus.rotations.increment(1);
    }

    /// How late a completed rotation finished: the share of its renewal
    /// window (`renew_before`, real time) used up at `finished`, compared with
    /// the old certificate's `not_after`. Prometheus only; the report has
    /// rotations per device instead.
    pub fn rotation_lag(
        &self,
        not_after: SystemTime,
        renew_before: Duration,
        finished: SystemTime,
    ) {
        let lag = rotation_lag_ratio(not_after, renew_before, finished);
        self.prometheus.rotation_lag.record(lag);
    }

    /// Publishes the scenario's objectives, so dashboards can draw them as
    /// lines beside what is measured. Objectives left out get no series.
    pub fn publish_objectives(&self, slo: &Slo) {
        let run = self.run.clone();
        if let Some(limit) = slo.connect_p99 {
            ::metrics::gauge!(SLO_CONNECT_P99, "run" => run.clone()).set(limit.as_secs_f64());
        }
        if let Some(limit) = slo.provisioning_p99 {
            ::metrics::gauge!(SLO_PROVISIONING_P99, "run" => run.clone()).set(limit.as_secs_f64());
        }
        if let Some(ratio) = slo.max_failure_ratio {
            ::metrics::gauge!(SLO_MAX_FAILURE_RATIO, "run" => run.clone()).set(ratio);
        }
        if let Some(rotations) = slo.min_rotations_per_device {
            ::metrics::gauge!(SLO_MIN_ROTATIONS, "run" => run).set(rotations as f64);
        }
    }

    /// A device moved from `from` (`None` when it is new) to `to`. Entering
    /// `provisioning` is a device's arrival.
    pub fn device_state(&self, from: Option<DeviceState>, to: DeviceState) {
        if to == DeviceState::Provisioning {
            self.prometheus.arrivals.increment(1);
        }
        if let Some(from) = from {
            self.states[from as usize].fetch_sub(1, Relaxed);
            self.prometheus.states[from as usize].decrement(1.0);
        }
        self.states[to as usize].fetch_add(1, Relaxed);
        self.prometheus.states[to as usize].increment(1.0);
    }

    /// Publishes the final count of devices left without a working identity.
    pub fn bricked_devices(&self, count: u64) {
        self.prometheus.bricked.set(count as f64);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            // A device counted out of a state before into it can briefly
            // push a count below zero; show zero rather than wrap.
            states: array::from_fn(|i| self.states[i].load(Relaxed).max(0) as u64),
            completed: array::from_fn(|i| self.completed[i].load(Relaxed)),
            failures: array::from_fn(|op| array::from_fn(|r| self.failures[op][r].load(Relaxed))),
            rotations: self.rotations.load(Relaxed),
        }
    }

    /// Every latency of `op` recorded so far, in microseconds.
    pub fn histogram(&self, op: Op) -> Histogram<u64> {
        self.latencies[index(op)].merged()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("run", &self.run)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Snapshot {
    /// Devices currently in `state`.
    pub fn devices(&self, state: DeviceState) -> u64 {
        self.states[state as usize]
    }

    /// Successful steps of `op`.
    pub fn completed(&self, op: Op) -> u64 {
        self.completed[index(op)]
    }

    /// Devices that finished provisioning (successful [`Op::Provision`] steps).
    pub fn provisioned(&self) -> u64 {
        self.completed(Op::Provision)
    }

    /// Failed steps of `op`, for every reason.
    pub fn failures_of(&self, op: Op) -> u64 {
        self.failures[index(op)].iter().sum()
    }

    /// Failed steps of `op` for `reason`.
    pub fn failures_for(&self, op: Op, reason: FailureReason) -> u64 {
        self.failures[index(op)][reason as usize]
    }

    /// Failed steps of every operation.
    pub fn failures(&self) -> u64 {
        self.failures.iter().flatten().sum()
    }

    pub fn rotations(&self) -> u64 {
        self.rotations
    }
}

/// 0 when a rotation finished the moment its window opened (`renew_before`
/// ahead of `not_after`), 1 at `not_after`, above 1 once the old certificate
/// had expired. A zero-length window cannot be late or early: it reads 1.
fn rotation_lag_ratio(not_after: SystemTime, renew_before: Duration, finished: SystemTime) -> f64 {
    if renew_before.is_zero() {
        return 1.0;
    }
    let window = renew_before.as_secs_f64();
    match not_after.duration_since(finished) {
        Ok(left) => 1.0 - left.as_secs_f64() / window,
        Err(expired) => 1.0 + expired.duration().as_secs_f64() / window,
    }
}

/// `Op::ALL` is in declaration order, so the discriminant is the position.
fn index(op: Op) -> usize {
    op as usize
}

impl PromHandles {
    fn register(run: &str) -> PromHandles {
        let handles = PromHandles {
            durations: Op::ALL.map(|op| {
                let name = duration_metric(op);
                ::metrics::histogram!(name, "op" => op.as_str(), "run" => run.to_owned())
            }),
            failures: array::from_fn(|_| array::from_fn(|_| OnceLock::new())),
            states: DeviceState::ALL.map(|state| {
                ::metrics::gauge!(DEVICES, "state" => state.as_str(), "run" => run.to_owned())
            }),
            arrivals: ::metrics::counter!(ARRIVALS, "run" => run.to_owned()),
            rotations: ::metrics::counter!(ROTATIONS, "run" => run.to_owned()),
            rotation_lag: ::metrics::histogram!(ROTATION_LAG, "run" => run.to_owned()),
            bricked: ::metrics::gauge!(BRICKED_DEVICES, "run" => run.to_owned()),
            run_info: ::metrics::gauge!(RUN_INFO, "run" => run.to_owned()),
        };
        handles.show_zeroes();
        handles
    }

    /// Makes every gauge and counter a series from the start, so a dashboard
    /// reads zero instead of "no data" and `rate()` sees the first increment.
    fn show_zeroes(&self) {
        self.states.iter().for_each(|gauge| gauge.set(0.0));
        self.arrivals.absolute(0);
        self.rotations.absolute(0);
        self.bricked.set(0.0);
        self.run_info.set(1.0);
    }

    fn failure(&self, run: &str, op: Op, reason: FailureReason) -> &Counter {
        self.failures[index(op)][reason as usize].get_or_init(|| {
            ::metrics::counter!(
                OPERATION_FAILURES,
                "op" => op.as_str(),
                "reason" => reason.as_str(),
                "run" => run.to_owned()
            )
        })
    }
}

/// An HDR histogram split into shards, each behind its own lock, picked by
/// the recording thread.
struct ShardedHistogram {
    shards: [Mutex<Histogram<u64>>; SHARDS],
}

impl ShardedHistogram {
    fn new() -> ShardedHistogram {
        ShardedHistogram {
            shards: array::from_fn(|_| Mutex::new(empty_histogram())),
        }
    }

    fn record(&self, micros: u64) {
        lock(&self.shards[thread_shard()]).saturating_record(micros);
    }

    fn merged(&self) -> Histogram<u64> {
        let mut merged = empty_histogram();
        for shard in &self.shards {
            merged
                .add(&*lock(shard))
                .expect("invariant: shards share bounds, so adding cannot overflow them");
        }
        merged
    }
}

pub(super) fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HDR_LOWEST_MICROS, HDR_HIGHEST_MICROS, HDR_SIGFIG)
        .expect("invariant: constant HDR bounds are valid")
}

/// A panic while holding a shard cannot leave a histogram half-written in a
/// way that matters for a report, so a poisoned lock is still used.
fn lock(shard: &Mutex<Histogram<u64>>) -> MutexGuard<'_, Histogram<u64>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_index_is_its_position_in_all() {
        for (position, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(index(op), position);
        }
        for (position, reason) in FailureReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, position);
        }
        for (position, state) in DeviceState::ALL.into_iter().enumerate() {
            assert_eq!(state as usize, position);
        }
    }

    #[test]
    fn rotation_lag_is_the_share_of_the_renewal_window_used_up() {
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let window = Duration::from_secs(100);
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rotation_lag_ratio(not_after, window, at(900)), 0.0);
        assert_eq!(rotation_lag_ratio(not_after, window, at(925)), 0.25);
        assert_eq!(rotation_lag_ratio(not_after, window, at(1_000)), 1.0);
        assert_eq!(rotation_lag_ratio(not_after, window, at(1_050)), 1.5);
        assert_eq!(rotation_lag_ratio(not_after, Duration::ZERO, at(0)), 1.0);
    }

    #[test]
    fn histogram_merges_samples_from_every_thread() {
        let recorder = std::sync::Arc::new(Recorder::new("merge"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    (0..100).for_each(|_| recorder.record(Op::Publish, Duration::from_millis(2)))
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(recorder.histogram(Op::Publish).len(), 400);
        assert_eq!(recorder.snapshot().completed(Op::Publish), 400);
    }
}
