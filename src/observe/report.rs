//! The end-of-run report: per-operation latency percentiles and throughput,
//! failure reasons, rotations, the final safety check and the SLO verdicts,
//! as a terminal table and as JSON.
//!
//! The JSON carries every HDR histogram losslessly (V2 deflate, base64) so
//! that the reports of several shards can be merged exactly later.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use super::faults::FaultSection;
use super::merge::ShardInfo;
use super::slo::{self, Bound, Measured, SloVerdict};
use super::{DeviceState, FailureReason, ObserveError, Op, Recorder, Snapshot};
use crate::scenario::Slo;

/// What the run found when it checked the fleet at the end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinalCheck {
    /// Devices the run was asked to simulate.
    pub devices: u64,
    /// Devices that ended with a thing and an active certificate.
    pub provisioned: u64,
    /// Devices whose current certificate was refused, or that had none.
    pub bricked: u64,
    /// Devices with a proof that could not be had either way (the check's
    /// own connection timed out, say), by the reason of the last attempt.
    pub unverified: BTreeMap<FailureReason, u64>,
    /// Devices counted provisioned whose current certificate expired after
    /// the fleet stopped, before the check reached it: proved ACTIVE by
    /// the control plane instead of a handshake.
    pub expired_after_stop: u64,
    /// Certificates revoked by rotations.
    pub retired_certificates: u64,
    /// Retired certificates the server still let connect.
    pub retired_still_accepted: u64,
    /// Rotations each provisioned device completed, one entry per device.
    pub rotations_per_device: Vec<u64>,
}

impl FinalCheck {
    /// Devices with at least one proof that could not be had.
    pub fn unverified_devices(&self) -> u64 {
        self.unverified.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    pub elapsed_seconds: f64,
    pub devices: u64,
    pub provisioned: u64,
    /// Devices that ended in the failed state.
    pub devices_failed: u64,
    pub operations: Vec<OperationReport>,
    /// Non-zero failure counts, by operation then reason.
    pub failures: Vec<FailureCount>,
    pub rotations: Rotations,
    pub bricked: u64,
    /// Devices the end-of-run check could prove neither working nor
    /// bricked; they fail the invariant too, since nothing was proved.
    #[serde(default)]
    pub unverified: u64,
    /// The unverified devices by why their last proof attempt failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unverified_reasons: BTreeMap<String, u64>,
    /// Provisioned devices whose current certificate expired after the
    /// fleet stopped and before the check reached it, proved ACTIVE by the
    /// control plane instead of a handshake.
    #[serde(default)]
    pub expired_after_stop: u64,
    pub retired_certificates: u64,
    pub retired_still_accepted: u64,
    /// Every configured objective, then the invariant.
    pub slo: Vec<SloVerdict>,
    /// Whether every verdict passed, for readers of the JSON alone.
    pub passed: bool,
    /// The slice of the fleet this report covers; absent for a whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
    /// The devices' key type (`ec_p256` or `rsa_2048`), which every
    /// handshake signs with; set by the run, absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// The one key exchange every device connection offered, and so
    /// negotiated (`x25519`, `secp256r1` or `x25519mlkem768`); set by the
    /// run, absent in older reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_exchange: Option<String>,
    /// What a fault-injection run injected and how the fleet answered;
    /// set by the run when the scenario has faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultSection>,
    /// Throttled answers the devices got (429 rejections, refused
    /// connects), retried with backoff and not counted as failures.
    #[serde(default)]
    pub throttled: u64,
    /// ThrottlingException answers of the control plane, SDK retries included.
    #[serde(default)]
    pub control_plane_throttled: u64,
}

/// Latencies in milliseconds, from the moment the step was due; `None` when
/// the operation never succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationReport {
    pub op: String,
    pub count: u64,
    /// Failed attempts, throttled ones not included.
    pub failures: u64,
    /// Throttled attempts, retried with backoff.
    #[serde(default)]
    pub throttled: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Successful steps per wall-clock second over the whole run.
    pub throughput_per_second: f64,
    /// The HDR histogram in microseconds: V2 deflate serialization, base64.
    pub hdr_histogram: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    pub op: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotations {
    pub total: u64,
    /// Over provisioned devices; `None` when none was provisioned.
    pub per_device_min: Option<u64>,
    pub per_device_mean: Option<f64>,
    /// How many devices the per-device figures cover, and their rotations
    /// summed: what merging the reports of several shards needs.
    #[serde(default)]
    pub devices: u64,
    #[serde(default)]
    pub per_device_sum: u64,
}

impl Report {
    /// Builds the report and publishes the final bricked count as a metric.
    pub fn build(
        recorder: &Recorder,
        slo: &Slo,
        check: &FinalCheck,
        elapsed: Duration,
    ) -> Result<Report, ObserveError> {
        recorder.bricked_devices(check.bricked);
        let snapshot = recorder.snapshot();
        let operations = Op::ALL
            .into_iter()
            .map(|op| OperationReport::build(op, recorder.histogram(op), &snapshot, elapsed))
            .collect::<Result<Vec<_>, _>>()?;
        let devices_failed = snapshot.devices(DeviceState::Failed);
        let measured = measure(&operations, check, devices_failed);
        let slo = slo::verdicts(slo, &measured);
        Ok(Report {
            run: recorder.run().to_owned(),
            elapsed_seconds: round3(elapsed.as_secs_f64()),
            devices: check.devices,
            provisioned: check.provisioned,
            devices_failed,
            operations,
            failures: failure_counts(&snapshot),
            rotations: Rotations::build(snapshot.rotations(), &check.rotations_per_device),
            bricked: check.bricked,
            unverified: check.unverified_devices(),
            unverified_reasons: check
                .unverified
                .iter()
                .map(|(reason, count)| (reason.as_str().to_owned(), *count))
                .collect(),
            expired_after_stop: check.expired_after_stop,
            retired_certificates: check.retired_certificates,
            retired_still_accepted: check.retired_still_accepted,
            passed: slo.iter().all(|verdict| verdict.passed),
            slo,
            shard: None,
            key_type: None,
            key_exchange: None,
            faults: None,
            throttled: Op::ALL
                .iter()
                .map(|op| snapshot.failures_for(*op, FailureReason::Throttled))
                .sum(),
            control_plane_throttled: 0,
        })
    }

    /// Whether every objective and the invariant passed.
    pub fn passed(&self) -> bool {
        self.slo.iter().all(|verdict| verdict.passed)
    }

    pub fn operation(&self, op: Op) -> Option<&OperationReport> {
        self.operations
            .iter()
            .find(|report| report.op == op.as_str())
    }

    pub fn to_json_pretty(&self) -> Result<String, ObserveError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Report, ObserveError> {
        Ok(serde_json::from_str(text)?)
    }

    /// A fixed-width table for the terminal.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        self.write_header(&mut out);
        self.write_operations(&mut out);
        self.write_failures(&mut out);
        self.write_throttled(&mut out);
        self.write_fleet(&mut out);
        self.write_faults(&mut out);
        self.write_verdicts(&mut out);
        out
    }

    fn write_header(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "run {}: {:.1} s, {} devices, {} provisioned, {} failed{}{}\n",
            self.run,
            self.elapsed_seconds,
            self.devices,
            self.provisioned,
            self.devices_failed,
            self.key_type
                .as_deref()
                .map(|key| format!(", {key} device keys"))
                .unwrap_or_default(),
            self.key_exchange
                .as_deref()
                .map(|group| format!(", {group} key exchange"))
                .unwrap_or_default()
        );
    }

    fn write_operations(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<20}{:>9}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "operation",
            "count",
            "failed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "per s"
        );
        for op in &self.operations {
            let _ = writeln!(
                out,
                "{:<20}{:>9}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10.2}",
                op.op,
                op.count,
                op.failures,
                cell(op.p50_ms),
                cell(op.p90_ms),
                cell(op.p99_ms),
                cell(op.p999_ms),
                cell(op.max_ms),
                op.throughput_per_second
            );
        }
    }

    fn write_failures(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<20}{:<24}{:>9}",
            "failed operation", "reason", "count"
        );
        if self.failures.is_empty() {
            let _ = writeln!(out, "{:<20}{:<24}{:>9}", "-", "-", 0);
        }
        for failure in &self.failures {
            let _ = writeln!(
                out,
                "{:<20}{:<24}{:>9}",
                failure.op, failure.reason, failure.count
            );
        }
    }

    fn write_throttled(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nthrottled: {} device requests, {} control-plane answers \
             (retried with backoff; not failures)",
            self.throttled, self.control_plane_throttled
        );
    }

    fn write_fleet(&self, out: &mut String) {
        let rotations = &self.rotations;
        let min = rotations
            .per_device_min
            .map_or("-".into(), |n| n.to_string());
        let mean = cell(rotations.per_device_mean);
        let _ = writeln!(
            out,
            "\nrotations: {} total, per device min {min}, mean {mean}",
            rotations.total
        );
        let _ = writeln!(out, "bricked devices: {}", self.bricked);
        let reasons: Vec<String> = (self.unverified_reasons.iter())
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        let _ = match reasons.is_empty() {
            true => writeln!(out, "unverified devices: {}", self.unverified),
            false => writeln!(
                out,
                "unverified devices: {} ({})",
                self.unverified,
                reasons.join(", ")
            ),
        };
        if self.expired_after_stop > 0 {
            let _ = writeln!(
                out,
                "expired after the fleet stopped, proved active by the control plane: {}",
                self.expired_after_stop
            );
        }
        let _ = writeln!(
            out,
            "retired certificates: {}, still accepted: {}",
            self.retired_certificates, self.retired_still_accepted
        );
    }

    fn write_faults(&self, out: &mut String) {
        let Some(faults) = &self.faults else { return };
        let _ = writeln!(out, "\nfaults injected");
        if faults.injected.is_empty() {
            let _ = writeln!(out, "  (none happened)");
        }
        for count in &faults.injected {
            let _ = writeln!(out, "  {:<34}{:>9}", count.name, count.count);
        }
        let _ = writeln!(out, "what the fleet did");
        if faults.responses.is_empty() && faults.devices_failed.is_empty() {
            let _ = writeln!(out, "  (nothing)");
        }
        for count in &faults.responses {
            let _ = writeln!(out, "  {:<34}{:>9}", count.name, count.count);
        }
        for failed in &faults.devices_failed {
            let what = format!("failed at {}: {}", failed.op, failed.reason);
            let _ = writeln!(out, "  {what:<34}{:>9}", failed.devices);
        }
        if !faults.reconnect_pauses.is_empty() {
            let slices: Vec<String> = faults.reconnect_pauses.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "  reconnect pauses by eighth of backoff_max: {}",
                slices.join(" ")
            );
        }
    }

    fn write_verdicts(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n{:<70}{:>14}{:>16}  verdict",
            "objective", "measured", "threshold"
        );
        for verdict in &self.slo {
            let _ = writeln!(
                out,
                "{:<70}{:>14}{:>16}  {}",
                verdict.name,
                cell(verdict.measured),
                threshold(verdict),
                pass_fail(verdict.passed)
            );
        }
        let _ = writeln!(out, "\nresult: {}", pass_fail(self.passed()));
    }
}

impl OperationReport {
    fn build(
        op: Op,
        histogram: Histogram<u64>,
        snapshot: &Snapshot,
        elapsed: Duration,
    ) -> Result<OperationReport, ObserveError> {
        let throttled = snapshot.failures_for(op, FailureReason::Throttled);
        let failures = snapshot.failures_of(op) - throttled;
        let mut report =
            OperationReport::from_histogram(op.as_str(), &histogram, failures, elapsed)?;
        report.throttled = throttled;
        Ok(report)
    }

    /// The figures of operation `op` from its histogram of successes (µs)
    /// and its failure count, over a run of `elapsed`.
    pub fn from_histogram(
        op: &str,
        histogram: &Histogram<u64>,
        failures: u64,
        elapsed: Duration,
    ) -> Result<OperationReport, ObserveError> {
        let quantile = |q: f64| percentile_ms(histogram, q);
        Ok(OperationReport {
            op: op.to_owned(),
            count: histogram.len(),
            failures,
            throttled: 0,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: (!histogram.is_empty()).then(|| micros_to_ms(histogram.max())),
            throughput_per_second: round3(per_second(histogram.len(), elapsed)),
            hdr_histogram: encode(op, histogram)?,
        })
    }

    /// The operation's HDR histogram, in microseconds, exactly as recorded.
    pub fn histogram(&self) -> Result<Histogram<u64>, ObserveError> {
        let corrupt = |reason: String| ObserveError::HistogramDecode {
            op: self.op.clone(),
            reason,
        };
        let bytes = BASE64
            .decode(&self.hdr_histogram)
            .map_err(|e| corrupt(e.to_string()))?;
        Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| corrupt(format!("{e:?}")))
    }
}

impl Rotations {
    fn build(total: u64, per_device: &[u64]) -> Rotations {
        let mean = (!per_device.is_empty())
            .then(|| round3(per_device.iter().sum::<u64>() as f64 / per_device.len() as f64));
        Rotations {
            total,
            per_device_min: per_device.iter().copied().min(),
            per_device_mean: mean,
            devices: per_device.len() as u64,
            per_device_sum: per_device.iter().sum(),
        }
    }
}

fn measure(operations: &[OperationReport], check: &FinalCheck, failed: u64) -> Measured {
    let p99 = |op: Op| {
        let report = operations.iter().find(|report| report.op == op.as_str());
        report.and_then(|report| report.p99_ms)
    };
    let failure_ratio = if check.devices == 0 {
        0.0
    } else {
        failed as f64 / check.devices as f64
    };
    Measured {
        connect_p99_ms: p99(Op::Connect),
        provisioning_p99_ms: p99(Op::Provision),
        failure_ratio: round6(failure_ratio),
        min_rotations_per_device: check.rotations_per_device.iter().copied().min(),
        bricked: check.bricked,
        unverified: check.unverified_devices(),
        retired_still_accepted: check.retired_still_accepted,
    }
}

fn failure_counts(snapshot: &Snapshot) -> Vec<FailureCount> {
    let pairs = Op::ALL
        .into_iter()
        .flat_map(|op| FailureReason::ALL.map(|reason| (op, reason)));
    pairs
        .filter(|(_, reason)| *reason != FailureReason::Throttled)
        .filter_map(|(op, reason)| {
            let count = snapshot.failures_for(op, reason);
            (count > 0).then(|| FailureCount {
                op: op.as_str().to_owned(),
                reason: reason.as_str().to_owned(),
                count,
            })
        })
        .collect()
}

fn encode(op: &str, histogram: &Histogram<u64>) -> Result<String, ObserveError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| ObserveError::HistogramEncode {
            op: op.to_owned(),
            reason: format!("{e:?}"),
        })?;
    Ok(BASE64.encode(bytes))
}

fn percentile_ms(histogram: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| micros_to_ms(histogram.value_at_quantile(quantile)))
}

fn micros_to_ms(micros: u64) -> f64 {
    round3(micros as f64 / 1000.0)
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// Rounding to a fixed number of decimals keeps every number short enough to
/// survive a JSON round trip exactly, and no report needs finer than a µs.
pub(super) fn round3(value: f64) -> f64 {
    (value * 1e3).round() / 1e3
}

pub(super) fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

fn cell(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.3}"))
}

fn threshold(verdict: &SloVerdict) -> String {
    let sign = match verdict.bound {
        Bound::AtMost => "<=",
        Bound::AtLeast => ">=",
    };
    format!("{sign} {} {}", verdict.threshold, verdict.unit)
}

fn pass_fail(passed: bool) -> &'static str {
    if passed { "PASS" } else { "FAIL" }
}
