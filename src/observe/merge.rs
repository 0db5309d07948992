//! Merging the reports of the shards of one run into the report of the whole
//! fleet (`fleetsim report merge`).
//!
//! Nothing is averaged: the shards' HDR histograms are added and percentiles
//! read from the sum, counts are summed, the per-device rotation figures are
//! recomputed from their sums, and every objective is judged again against
//! the thresholds the shards carry. A merge refuses reports that are not one
//! complete set of shards of the same run, naming the file at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::report::{FailureCount, OperationReport, Report, Rotations, round3, round6};
use super::slo::{self, Bound, SloVerdict};
use super::{FailureReason, Op};
use crate::fleet::FleetPlan;

/// Which slice of the fleet a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: u32,
    pub count: u32,
    /// Devices in the whole fleet, every shard together.
    pub fleet_devices: u64,
}

impl ShardInfo {
    /// What a report of `plan` records about its shard; `None` for a whole fleet.
    pub fn of(plan: &FleetPlan) -> Option<ShardInfo> {
        (!plan.shard.is_whole()).then_some(ShardInfo {
            index: plan.shard.index,
            count: plan.shard.count,
            fleet_devices: plan.size,
        })
    }

    /// A report without shard information covers the whole fleet.
    fn of_report(report: &Report) -> ShardInfo {
        report.shard.unwrap_or(ShardInfo {
            index: 0,
            count: 1,
            fleet_devices: report.devices,
        })
    }
}

/// Why reports cannot be merged; every variant is about the inputs.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("no report to merge")]
    Nothing,
    #[error("{path}: cannot read report: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: not a fleetsim report: {reason}")]
    Parse { source_name: String, reason: String },
    #[error(
        "{source_name}: {what} `{found}` differs from `{expected}` in {first}; reports of different runs cannot be merged"
    )]
    Mismatch {
        source_name: String,
        what: &'static str,
        found: String,
        first: String,
        expected: String,
    },
    #[error("{source_name}: shard {shard} is also in {other}")]
    DuplicateShard {
        source_name: String,
        shard: String,
        other: String,
    },
    #[error("shards {missing:?} of {count} are missing; merge needs every shard of the run")]
    MissingShards { missing: Vec<u32>, count: u32 },
    #[error("{source_name}: objective `{name}` is unknown to this fleetsim")]
    UnknownObjective { source_name: String, name: String },
    #[error("{source_name}: {reason}")]
    Histogram { source_name: String, reason: String },
}

/// One report and the name errors call it by (its file, usually).
#[derive(Debug, Clone)]
pub struct NamedReport {
    pub name: String,
    pub report: Report,
}

/// Reads the report files and merges them.
pub fn merge_files(paths: &[PathBuf]) -> Result<Report, MergeError> {
    let reports = paths
        .iter()
        .map(|path| read(path))
        .collect::<Result<Vec<_>, _>>()?;
    merge(&reports)
}

fn read(path: &Path) -> Result<NamedReport, MergeError> {
    let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path.display().to_string();
    let report = Report::from_json(&text).map_err(|e| MergeError::Parse {
        source_name: name.clone(),
        reason: e.to_string(),
    })?;
    Ok(NamedReport { name, report })
}

/// The report of the whole fleet from one complete set of shard reports.
pub fn merge(reports: &[NamedReport]) -> Result<Report, MergeError> {
    let first = reports.first().ok_or(MergeError::Nothing)?;
    for other in &reports[1..] {
        check_same_run(first, other)?;
    }
    check_complete(reports)?;
    let elapsed = reports
        .iter()
        .map(|r| r.report.elapsed_seconds)
        .fold(0.0, f64::max);
    let sum = |field: fn(&Report) -> u64| reports.iter().map(|r| field(&r.report)).sum::<u64>();
    let mut merged = Report {
        run: first.report.run.clone(),
        elapsed_seconds: elapsed,
        devices: sum(|r| r.devices),
        provisioned: sum(|r| r.provisioned),
        devices_failed: sum(|r| r.devices_failed),
        operations: merge_operations(reports, Duration::from_secs_f64(elapsed))?,
        failures: merge_failures(reports),
        rotations: merge_rotations(reports),
        bricked: sum(|r| r.bricked),
        unverified: sum(|r| r.unverified),
        unverified_reasons: merge_unverified_reasons(reports),
        expired_after_stop: sum(|r| r.expired_after_stop),
        retired_certificates: sum(|r| r.retired_certificates),
        retired_still_accepted: sum(|r| r.retired_still_accepted),
        slo: Vec::new(),
        passed: false,
        shard: None,
        key_type: first.report.key_type.clone(),
        key_exchange: first.report.key_exchange.clone(),
        faults: merge_faults(reports),
        throttled: sum(|r| r.throttled),
        control_plane_throttled: sum(|r| r.control_plane_throttled),
    };
    merged.slo = judge_again(first, &merged)?;
    merged.passed = merged.passed();
    Ok(merged)
}

/// Every shard's faults section summed; absent when no shard had one.
fn merge_faults(reports: &[NamedReport]) -> Option<super::faults::FaultSection> {
    let mut sections = reports.iter().filter_map(|r| r.report.faults.as_ref());
    let mut merged = sections.next()?.clone();
    sections.for_each(|section| merged.add(section));
    Some(merged)
}

/// Same run name, key type and key exchange, shard layout, objectives and operations.
fn check_same_run(first: &NamedReport, other: &NamedReport) -> Result<(), MergeError> {
    let mismatch = |what, expected: String, found: String| MergeError::Mismatch {
        source_name: other.name.clone(),
        what,
        found,
        first: first.name.clone(),
        expected,
    };
    let (a, b) = (&first.report, &other.report);
    if a.run != b.run {
        return Err(mismatch("run", a.run.clone(), b.run.clone()));
    }
    let show = |k: &Option<String>| k.clone().unwrap_or_else(|| "unknown".into());
    if a.key_type != b.key_type {
        return Err(mismatch("key type", show(&a.key_type), show(&b.key_type)));
    }
    if a.key_exchange != b.key_exchange {
        let (expected, found) = (show(&a.key_exchange), show(&b.key_exchange));
        return Err(mismatch("key exchange", expected, found));
    }
    let (sa, sb) = (ShardInfo::of_report(a), ShardInfo::of_report(b));
    if (sa.count, sa.fleet_devices) != (sb.count, sb.fleet_devices) {
        let layout = |s: ShardInfo| format!("{} shards of {} devices", s.count, s.fleet_devices);
        return Err(mismatch("layout", layout(sa), layout(sb)));
    }
    if objectives(a) != objectives(b) {
        return Err(mismatch("objectives", objectives(a), objectives(b)));
    }
    let ops = |r: &Report| {
        r.operations
            .iter()
            .map(|o| o.op.clone())
            .collect::<Vec<_>>()
    };
    if ops(a) != ops(b) {
        return Err(mismatch(
            "the operations",
            ops(a).join(","),
            ops(b).join(","),
        ));
    }
    Ok(())
}

fn objectives(report: &Report) -> String {
    let objective = |v: &SloVerdict| format!("{} {:?} {} {}", v.name, v.bound, v.threshold, v.unit);
    report
        .slo
        .iter()
        .map(objective)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every shard index exactly once.
fn check_complete(reports: &[NamedReport]) -> Result<(), MergeError> {
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    for named in reports {
        let shard = ShardInfo::of_report(&named.report);
        if let Some(other) = seen.insert(shard.index, &named.name) {
            return Err(MergeError::DuplicateShard {
                source_name: named.name.clone(),
                shard: format!("{}/{}", shard.index, shard.count),
                other: other.to_owned(),
            });
        }
    }
    let count = ShardInfo::of_report(&reports[0].report).count;
    let missing: Vec<u32> = (0..count).filter(|i| !seen.contains_key(i)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MergeError::MissingShards { missing, count })
    }
}

fn merge_operations(
    reports: &[NamedReport],
    elapsed: Duration,
) -> Result<Vec<OperationReport>, MergeError> {
    let ops = &reports[0].report.operations;
    (0..ops.len())
        .map(|i| {
            let histogram = add_histograms(reports, i)?;
            let failures = reports
                .iter()
                .map(|r| r.report.operations[i].failures)
                .sum();
            let throttled = reports
                .iter()
                .map(|r| r.report.operations[i].throttled)
                .sum();
            OperationReport::from_histogram(&ops[i].op, &histogram, failures, elapsed)
                .map(|report| OperationReport {
                    throttled,
                    ..report
                })
                .map_err(|e| MergeError::Histogram {
                    source_name: "merged report".into(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// The sum of every shard's histogram of operation `i`.
fn add_histograms(reports: &[NamedReport], i: usize) -> Result<Histogram<u64>, MergeError> {
    let mut total: Option<Histogram<u64>> = None;
    for named in reports {
        let fault = |reason: String| MergeError::Histogram {
            source_name: named.name.clone(),
            reason,
        };
        let histogram = named.report.operations[i]
            .histogram()
            .map_err(|e| fault(e.to_string()))?;
        match &mut total {
            None => total = Some(histogram),
            Some(total) => total.add(&histogram).map_err(|e| {
                fault(format!(
                    "{} histogram does not fit: {e:?}",
                    histogram_op(named, i)
                ))
            })?,
        }
    }
    Ok(total.expect("invariant: merge has at least one report"))
}

fn histogram_op(named: &NamedReport, i: usize) -> &str {
    &named.report.operations[i].op
}

/// Failure counts summed per (operation, reason), in the order a single
/// report lists them.
fn merge_failures(reports: &[NamedReport]) -> Vec<FailureCount> {
    let mut counts: BTreeMap<(usize, usize, String, String), u64> = BTreeMap::new();
    for failure in reports.iter().flat_map(|r| &r.report.failures) {
        let op = Op::ALL.iter().position(|op| op.as_str() == failure.op);
        let reason = FailureReason::ALL
            .iter()
            .position(|reason| reason.as_str() == failure.reason);
        let key = (
            op.unwrap_or(usize::MAX),
            reason.unwrap_or(usize::MAX),
            failure.op.clone(),
            failure.reason.clone(),
        );
        *counts.entry(key).or_default() += failure.count;
    }
    counts
        .into_iter()
        .map(|((_, _, op, reason), count)| FailureCount { op, reason, count })
        .collect()
}

fn merge_unverified_reasons(reports: &[NamedReport]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (reason, count) in reports.iter().flat_map(|r| &r.report.unverified_reasons) {
        *counts.entry(reason.clone()).or_default() += count;
    }
    counts
}

fn merge_rotations(reports: &[NamedReport]) -> Rotations {
    let all = || reports.iter().map(|r| &r.report.rotations);
    let devices: u64 = all().map(|r| r.devices).sum();
    let per_device_sum: u64 = all().map(|r| r.per_device_sum).sum();
    Rotations {
        total: all().map(|r| r.total).sum(),
        per_device_min: all().filter_map(|r| r.per_device_min).min(),
        per_device_mean: (devices > 0).then(|| round3(per_device_sum as f64 / devices as f64)),
        devices,
        per_device_sum,
    }
}

/// Each objective of the shards, measured again on the merged figures.
fn judge_again(first: &NamedReport, merged: &Report) -> Result<Vec<SloVerdict>, MergeError> {
    first
        .report
        .slo
        .iter()
        .map(|verdict| {
            let measured =
                remeasure(&verdict.name, merged).ok_or_else(|| MergeError::UnknownObjective {
                    source_name: first.name.clone(),
                    name: verdict.name.clone(),
                })?;
            Ok(rejudge(verdict, measured))
        })
        .collect()
}

/// What objective `name` measures on `merged`, as `Report::build` measures
/// it; `None` when the objective is unknown.
fn remeasure(name: &str, merged: &Report) -> Option<Option<f64>> {
    let p99 = |op: Op| merged.operation(op).and_then(|o| o.p99_ms);
    let measured = match name {
        "connect_p99" => p99(Op::Connect),
        "provisioning_p99" => p99(Op::Provision),
        "max_failure_ratio" => Some(failure_ratio(merged)),
        "min_rotations_per_device" => merged.rotations.per_device_min.map(|n| n as f64),
        slo::INVARIANT => {
            Some((merged.bricked + merged.unverified + merged.retired_still_accepted) as f64)
        }
        _ => return None,
    };
    Some(measured)
}

fn failure_ratio(report: &Report) -> f64 {
    if report.devices == 0 {
        return 0.0;
    }
    round6(report.devices_failed as f64 / report.devices as f64)
}

fn rejudge(objective: &SloVerdict, measured: Option<f64>) -> SloVerdict {
    let passed = measured.is_some_and(|value| match objective.bound {
        Bound::AtMost => value <= objective.threshold,
        Bound::AtLeast => value >= objective.threshold,
    });
    SloVerdict {
        measured,
        passed,
        ..objective.clone()
    }
}
