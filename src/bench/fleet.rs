//! Fleet benchmarks: a real `fleetsim run` of a generated scenario, watched
//! through its recorder while it goes on. One run provisions N devices by
//! claim, holds them online and idle (resident memory), then either rotates
//! every certificate once (the rotation wave) or publishes QoS 1 telemetry,
//! and ends with the run's own end-of-run identity check.
//!
//! Certificates expire in the order they were issued, so the rotation wave
//! arrives as fast as the fleet was provisioned: the validity is chosen so
//! that no renewal window opens before the last device is expected online.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use super::crypto::CryptoCeiling;
use super::host::{self, HostInfo};
use crate::observe::{DeviceState, Op, Recorder, Report};
use crate::run::{self, RunOptions, RunSummary};
use crate::scenario::Scenario;

/// Connections one source address can open to one broker address and port:
/// Linux's default ephemeral range (32768-60999) with some left over.
const CONNECTIONS_PER_SOURCE: u64 = 25_000;

/// How often the fleet's counts are sampled.
const POLL: Duration = Duration::from_millis(20);

/// A benchmark gives up when its fleet makes no progress for this long.
const STALL: Duration = Duration::from_secs(120);

/// What the fleet does once every device is online.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Then {
    /// Every certificate rotates once.
    Rotate,
    /// Every device publishes QoS 1 telemetry at `interval` for `for_seconds`.
    Publish { interval: Duration, seconds: f64 },
    /// Nothing: the fleet stays idle.
    Idle,
}

/// One fleet benchmark.
#[derive(Debug, Clone)]
pub struct FleetBench {
    pub devices: u64,
    /// Arrivals per second.
    pub rate: f64,
    pub then: Then,
    /// A running standalone emulator (state directory) instead of the
    /// in-process one; its process id, to read its memory.
    pub standalone: Option<(PathBuf, u32)>,
    /// Descriptor lanes for the run (`RunOptions::lanes`): `None` lets the
    /// run decide from the open-file limit.
    pub lanes: Option<usize>,
}

/// The results of one fleet benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct FleetResults {
    pub devices: u64,
    pub arrival_rate: f64,
    pub emulator: &'static str,
    pub source_addresses: Vec<IpAddr>,
    /// Descriptor lanes the run spread its sockets over (0: one table).
    pub lanes: usize,
    pub host_before: HostInfo,
    pub host_after: HostInfo,
    /// From the start of the run (emulator start and set-up included).
    pub first_online_seconds: Option<f64>,
    pub all_online_seconds: Option<f64>,
    /// Devices per second between 10% and 90% of the fleet provisioned.
    pub provisioning_per_second: Option<f64>,
    pub provisioning_vs_ceiling: Option<f64>,
    pub rotations_per_second: Option<f64>,
    pub rotation_vs_ceiling: Option<f64>,
    pub telemetry_messages_per_second: Option<f64>,
    /// Publish-to-PUBACK latency inside the telemetry window only, with
    /// every device online and nothing else going on.
    pub telemetry_window: Option<Window>,
    pub memory: Memory,
    pub ceiling: Option<CryptoCeiling>,
    /// The ceiling measured again after the fleet; the ratios are taken
    /// against the higher of the two, so a load that eased in between
    /// cannot flatter them.
    pub ceiling_after: Option<CryptoCeiling>,
    /// p50/p99 of every step, from the run's report.
    pub steps: Vec<Step>,
    pub failures: u64,
    /// The run report's failures by operation and reason, so that a run
    /// that went wrong says how.
    pub failure_reasons: Vec<crate::observe::report::FailureCount>,
    pub bricked: u64,
    /// Devices the end-of-run check could prove neither way, by reason.
    pub unverified: u64,
    pub unverified_reasons: std::collections::BTreeMap<String, u64>,
    pub devices_failed: u64,
}

/// Resident memory before the fleet arrived and with it online and idle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    pub process_kib_before: Option<u64>,
    pub process_kib_online: Option<u64>,
    pub process_kib_per_device: Option<f64>,
    pub emulator_kib_before: Option<u64>,
    pub emulator_kib_online: Option<u64>,
    pub emulator_kib_per_device: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub op: String,
    pub count: u64,
    pub failures: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Source addresses enough for a fleet of `devices` to one broker: none
/// while one address's share suffices, otherwise 127.0.0.2, 127.0.0.3, ...
/// Each device is counted twice: its claim connection, closed first by the
/// device, holds its port in TIME_WAIT for a minute after.
pub fn loopback_sources(devices: u64) -> Vec<IpAddr> {
    let ports = 2 * devices;
    if ports <= CONNECTIONS_PER_SOURCE {
        return Vec::new();
    }
    let count = ports.div_ceil(CONNECTIONS_PER_SOURCE).min(250);
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

impl FleetBench {
    /// The scenario the run executes: memory storage, no SLOs, a step
    /// deadline long enough for a storm, and the validity explained above.
    pub fn scenario(&self) -> Result<Scenario, BenchError> {
        let validity = self.validity_seconds();
        let (rotation, telemetry) = match self.then {
            Then::Rotate => (
                format!(
                    "{{ enabled: true, check_every: 1s, renew_before: {}s }}",
                    validity / 2.0
                ),
                "{ enabled: false }".to_owned(),
            ),
            Then::Publish { interval, .. } => (
                "{ enabled: false }".to_owned(),
                format!(
                    "{{ enabled: true, qos: 1, interval: {}ms }}",
                    interval.as_millis()
                ),
            ),
            Then::Idle => ("{ enabled: false }".into(), "{ enabled: false }".into()),
        };
        let text = format!(
            "name: bench-{devices}\n\
             fleet: {{ size: {devices}, serial_pattern: \"bench-{{seq:07}}\" }}\n\
             arrival: {{ rate: {rate}/s }}\n\
             certificates: {{ validity: {validity}s }}\n\
             rotation: {rotation}\n\
             telemetry: {telemetry}\n\
             run: {{ duration: 3600s, step_timeout: 60s, max_attempts: 10, backoff_max: 10s }}\n\
             credentials: {{ storage: memory }}\n",
            devices = self.devices,
            rate = self.rate,
        );
        Scenario::parse(&text, Path::new("<bench scenario>"))
            .map_err(|e| BenchError::Setup(e.to_string()))
    }

    /// Certificate lifetime: four times the fleet's expected provisioning
    /// time, renewed from half-way, so the first renewal window opens well
    /// after the last device is expected online.
    fn validity_seconds(&self) -> f64 {
        let expected = self.devices as f64 / self.rate;
        (4.0 * expected + 20.0).ceil()
    }

    /// Runs the fleet and gathers its results; `ceiling` goes into the ratios.
    pub async fn run(&self, ceiling: Option<CryptoCeiling>) -> Result<FleetResults, BenchError> {
        let scenario = self.scenario()?;
        let sources = loopback_sources(self.devices);
        let (tap, mut tapped) = tokio::sync::mpsc::unbounded_channel();
        let options = RunOptions {
            emulator: self.standalone.as_ref().map(|(dir, _)| dir.clone()),
            source_addresses: sources.clone(),
            recorder_tap: Some(tap),
            lanes: self.lanes,
            ..RunOptions::default()
        };
        let host_before = HostInfo::now();
        let interrupt = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn({
            let interrupt = interrupt.clone();
            async move { run::execute(&scenario, &options, interrupt).await }
        });
        let Some(recorder) = tapped.recv().await else {
            let error = running.await.map_err(|e| BenchError::Run(e.to_string()))?;
            return Err(BenchError::Run(match error {
                Err(error) => error.to_string(),
                Ok(_) => "the run ended before its fleet started".into(),
            }));
        };
        let watch = self.watch(&recorder, started).await;
        interrupt.cancel();
        let summary = running
            .await
            .map_err(|e| BenchError::Run(e.to_string()))?
            .map_err(|e| BenchError::Run(e.to_string()))?;
        Ok(self.results(watch, &summary, sources, host_before, ceiling))
    }

    /// Follows the fleet through provisioning, idling and what comes after.
    async fn watch(&self, recorder: &Recorder, started: Instant) -> Watch {
        let mut watch = Watch {
            memory: self.memory_now(),
            ..Watch::default()
        };
        let n = self.devices;
        watch.provisioned = follow(
            recorder,
            started,
            n,
            |s| s.provisioned(),
            &mut watch.first_online,
        )
        .await;
        if watch.provisioned.finished.is_none() {
            return watch;
        }
        // Let the last connections settle before reading memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        watch.online = self.memory_now();
        match self.then {
            Then::Rotate => {
                // Nothing is due before the first certificate's renewal
                // window opens; waiting for it is not a stall.
                let first = watch.first_online.unwrap_or(0.0);
                let opens = first + self.validity_seconds() / 2.0;
                tokio::time::sleep_until(started + Duration::from_secs_f64(opens)).await;
                watch.rotated = follow(recorder, started, n, |s| s.rotations(), &mut None).await;
            }
            Then::Publish { seconds, .. } => {
                watch.telemetry = Some(publish_window(recorder, seconds).await);
            }
            Then::Idle => {}
        }
        watch
    }

    fn memory_now(&self) -> (Option<u64>, Option<u64>) {
        let emulator = self
            .standalone
            .as_ref()
            .and_then(|(_, pid)| host::rss_kib(*pid));
        (host::own_rss_kib(), emulator)
    }

    fn results(
        &self,
        watch: Watch,
        summary: &RunSummary,
        source_addresses: Vec<IpAddr>,
        host_before: HostInfo,
        ceiling: Option<CryptoCeiling>,
    ) -> FleetResults {
        let report = &summary.report;
        let provisioning = watch.provisioned.steady_rate();
        let rotations = watch.rotated.steady_rate();
        let ratio =
            |rate: Option<f64>, of: fn(&CryptoCeiling) -> f64| Some(rate? / of(ceiling.as_ref()?));
        FleetResults {
            devices: self.devices,
            arrival_rate: self.rate,
            emulator: if self.standalone.is_some() {
                "standalone"
            } else {
                "in_process"
            },
            source_addresses,
            lanes: summary.lanes,
            host_before,
            host_after: HostInfo::now(),
            first_online_seconds: watch.first_online,
            all_online_seconds: watch.provisioned.finished,
            provisioning_per_second: provisioning,
            provisioning_vs_ceiling: ratio(provisioning, |c| c.provisionings_per_second),
            rotations_per_second: rotations,
            rotation_vs_ceiling: ratio(rotations, |c| c.rotations_per_second),
            telemetry_messages_per_second: watch.telemetry.as_ref().map(|w| w.per_second),
            telemetry_window: watch.telemetry,
            memory: Memory::between(watch.memory, watch.online, self.devices),
            ceiling,
            ceiling_after: None,
            steps: steps(report),
            failures: report.failures.iter().map(|f| f.count).sum(),
            failure_reasons: report.failures.clone(),
            bricked: report.bricked,
            unverified: report.unverified,
            unverified_reasons: report.unverified_reasons.clone(),
            devices_failed: report.devices_failed,
        }
    }
}

impl FleetResults {
    /// Adds the ceiling measured after the fleet and takes the ratios
    /// against the higher of the two measurements.
    pub fn with_ceiling_after(mut self, after: CryptoCeiling) -> FleetResults {
        let higher = |of: fn(&CryptoCeiling) -> f64| {
            let before = self.ceiling.as_ref().map_or(0.0, of);
            before.max(of(&after))
        };
        let provisioning = higher(|c| c.provisionings_per_second);
        let rotation = higher(|c| c.rotations_per_second);
        self.provisioning_vs_ceiling = self.provisioning_per_second.map(|r| r / provisioning);
        self.rotation_vs_ceiling = self.rotations_per_second.map(|r| r / rotation);
        self.ceiling_after = Some(after);
        self
    }
}

impl Memory {
    fn between(
        before: (Option<u64>, Option<u64>),
        online: (Option<u64>, Option<u64>),
        n: u64,
    ) -> Memory {
        let per_device = |before: Option<u64>, after: Option<u64>| {
            Some(after?.saturating_sub(before?) as f64 / n as f64)
        };
        Memory {
            process_kib_before: before.0,
            process_kib_online: online.0,
            process_kib_per_device: per_device(before.0, online.0),
            emulator_kib_before: before.1,
            emulator_kib_online: online.1,
            emulator_kib_per_device: per_device(before.1, online.1),
        }
    }
}

fn steps(report: &Report) -> Vec<Step> {
    report
        .operations
        .iter()
        .filter(|op| op.count > 0 || op.failures > 0)
        .map(|op| Step {
            op: op.op.clone(),
            count: op.count,
            failures: op.failures,
            p50_ms: op.p50_ms,
            p99_ms: op.p99_ms,
        })
        .collect()
}

#[derive(Debug, Default)]
struct Watch {
    memory: (Option<u64>, Option<u64>),
    online: (Option<u64>, Option<u64>),
    first_online: Option<f64>,
    provisioned: Progress,
    rotated: Progress,
    telemetry: Option<Window>,
}

/// The publishes acknowledged within one window of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub messages: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Lets the fleet publish for `seconds` and reads what was acknowledged in
/// that time: the difference of the publish histogram across the window.
async fn publish_window(recorder: &Recorder, seconds: f64) -> Window {
    let before = recorder.histogram(Op::Publish);
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let mut inside = recorder.histogram(Op::Publish);
    let elapsed = from.elapsed().as_secs_f64();
    // `before` is a prefix of the same counts, so the subtraction cannot fail.
    let _ = inside.subtract(&before);
    let ms = |q: f64| inside.value_at_quantile(q) as f64 / 1000.0;
    Window {
        seconds: elapsed,
        messages: inside.len(),
        per_second: inside.len() as f64 / elapsed,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

/// When a count passed 10%, 90% and 100% of its goal, in seconds from the
/// start of the run.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    goal: u64,
    at_10: Option<f64>,
    at_90: Option<f64>,
    finished: Option<f64>,
}

impl Progress {
    /// Completions per second between 10% and 90% of the goal: the steady
    /// state, without the ramp-up and the stragglers.
    fn steady_rate(&self) -> Option<f64> {
        let span = self.at_90? - self.at_10?;
        let counted = (self.goal * 9 / 10 - self.goal / 10) as f64;
        (span > 0.0).then(|| counted / span)
    }
}

/// Samples `count` until it reaches `goal` or stalls; also notes when the
/// first device came online.
async fn follow(
    recorder: &Recorder,
    started: Instant,
    goal: u64,
    count: fn(&crate::observe::Snapshot) -> u64,
    first_online: &mut Option<f64>,
) -> Progress {
    let mut progress = Progress {
        goal,
        ..Progress::default()
    };
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let snapshot = recorder.snapshot();
        let now = started.elapsed().as_secs_f64();
        if first_online.is_none() && snapshot.devices(DeviceState::Online) > 0 {
            *first_online = Some(now);
        }
        let done = count(&snapshot);
        if progress.at_10.is_none() && done >= (goal / 10).max(1) {
            progress.at_10 = Some(now);
        }
        if progress.at_90.is_none() && done >= goal * 9 / 10 {
            progress.at_90 = Some(now);
        }
        if done >= goal {
            progress.finished = Some(now);
            return progress;
        }
        if done != last {
            (last, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > STALL
            || snapshot.devices(DeviceState::Failed) + done >= goal
        {
            return progress;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_address_serves_a_small_fleet_and_a_large_one_gets_several() {
        assert!(loopback_sources(10_000).is_empty());
        let sources = loopback_sources(100_000);
        assert_eq!(sources.len(), 8);
        assert_eq!(sources[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    }

    #[test]
    fn the_steady_rate_leaves_out_the_first_and_last_tenth() {
        let progress = Progress {
            goal: 1000,
            at_10: Some(1.0),
            at_90: Some(9.0),
            finished: Some(12.0),
        };
        assert_eq!(progress.steady_rate(), Some(100.0));
    }
}
