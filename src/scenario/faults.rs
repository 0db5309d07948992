//! The `faults:` section: what goes wrong on purpose during a run. Dropped
//! connections (at random, at named steps of provisioning and rotation, or
//! the whole fleet at once), device crashes with a restart from what is on
//! disk, provisioning denied or throttled by the emulator, added latency on
//! its answers, and skewed device clocks. Every field is optional; an absent
//! section injects nothing.

use std::time::Duration;

use super::build::{child, maybe, optional, ratio};
use super::fields::{Field, Problem, Section};
use super::tree::Value;
use super::values::format_duration;
use super::{RunLimits, Target};

/// Every fault a run injects; the default injects none.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    pub drops: Drops,
    pub crash: Option<Crash>,
    pub provisioning: ProvisioningFaults,
    pub clock_skew: Option<ClockSkew>,
    /// When (wall clock, from the start of the run) the claim certificate
    /// is replaced and the old one revoked, as after a leak.
    pub claim_compromise: Option<Duration>,
    /// The in-process emulator stopped and started again on its state and
    /// ports in the middle of the run.
    pub emulator_restart: Option<EmulatorRestart>,
}

/// When the emulator goes down, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorRestart {
    /// Wall clock, from the start of the run.
    pub at: Duration,
    pub down_for: Duration,
}

/// Connections the devices drop without a DISCONNECT, as a network would.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Drops {
    /// Chance that a device's connection drops right after each telemetry
    /// message or provisioning reply.
    pub rate: f64,
    /// Named steps at which each device's connection drops, the first time
    /// the device passes them in provisioning and the first time in a rotation.
    pub at: Vec<DropPoint>,
    /// Moments (wall clock, from the start of the run) at which every
    /// connected device drops its connection at once.
    pub all_at: Vec<Duration>,
}

/// A step boundary of provisioning or rotation where a drop is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropPoint {
    /// The new certificate has arrived; RegisterThing is not yet sent.
    AfterCertificate,
    /// The new files are written; the device has not reconnected with them.
    AfterStore,
    /// The new certificate is connected; the old one is not yet revoked.
    AfterReconnect,
}

impl DropPoint {
    pub const ALL: [DropPoint; 3] = [
        DropPoint::AfterCertificate,
        DropPoint::AfterStore,
        DropPoint::AfterReconnect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropPoint::AfterCertificate => "after_certificate",
            DropPoint::AfterStore => "after_store",
            DropPoint::AfterReconnect => "after_reconnect",
        }
    }
}

/// Device processes that die: the task is aborted wherever it is and
/// started again from the credential store.
#[derive(Debug, Clone, PartialEq)]
pub struct Crash {
    /// Crashes per device per (wall-clock) second, at random moments.
    pub per_device_per_second: f64,
    /// At most this many crashes per device in one run.
    pub max_per_device: u32,
}

/// What the in-process emulator does wrong on purpose.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProvisioningFaults {
    /// Share of RegisterThing requests the pre-provisioning hook denies.
    pub deny_rate: f64,
    /// Share of Fleet Provisioning requests answered with a throttle (429).
    pub throttle_rate: f64,
    /// Added before every Fleet Provisioning answer.
    pub latency: Duration,
}

impl ProvisioningFaults {
    pub fn any(&self) -> bool {
        self.deny_rate > 0.0 || self.throttle_rate > 0.0 || !self.latency.is_zero()
    }
}

/// A share of the fleet whose clocks are off, in simulated time.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockSkew {
    /// Share of devices (chosen at random) with a skewed clock.
    pub share: f64,
    /// Positive: the clock runs ahead; negative: behind. Simulated time.
    pub offset_seconds: f64,
}

const FIELDS: &[&str] = &[
    "drops",
    "crash",
    "provisioning",
    "clock_skew",
    "claim_compromise",
    "emulator_restart",
];

/// Reads `faults`, checking times against the run's length and refusing
/// emulator faults on a target that is not the emulator.
pub(crate) fn faults(top: &Section, target: Target, run: &RunLimits) -> Result<Faults, Problem> {
    let section = child(top, "faults", FIELDS)?;
    let provisioning = provisioning(&section)?;
    let restart = emulator_restart(&section, run)?;
    if let (Target::Aws, Some(restart)) = (target, &restart) {
        return Err(restart.problem("only the emulator can be restarted; use target local"));
    }
    if target == Target::Aws && provisioning.value.any() {
        return Err(provisioning.problem(
            "only the emulator can deny, throttle or delay provisioning; use target local",
        ));
    }
    Ok(Faults {
        drops: drops(&section, run)?,
        crash: crash(&section)?,
        provisioning: provisioning.value,
        clock_skew: clock_skew(&section)?,
        claim_compromise: claim_compromise(&section, run)?,
        emulator_restart: restart.map(|r| r.value),
    })
}

fn emulator_restart(
    faults: &Section,
    run: &RunLimits,
) -> Result<Option<At<EmulatorRestart>>, Problem> {
    if faults.get("emulator_restart").is_none() {
        return Ok(None);
    }
    let section = child(faults, "emulator_restart", &["at", "down_for"])?;
    let field = section.require("at")?;
    let at = field.positive_duration()?;
    let down_for = optional(
        &section,
        "down_for",
        Field::duration,
        Duration::from_secs(1),
    )?;
    if at + down_for >= run.duration {
        return Err(field.problem(format!(
            "{} plus down_for {} is not before the end of the run (run.duration {})",
            format_duration(at),
            format_duration(down_for),
            format_duration(run.duration)
        )));
    }
    let site = super::fields::Site {
        field: faults.path("emulator_restart"),
        at: faults.key_at("emulator_restart").unwrap_or(faults.at()),
        written: true,
    };
    Ok(Some(At {
        value: EmulatorRestart { at, down_for },
        site,
    }))
}

fn claim_compromise(faults: &Section, run: &RunLimits) -> Result<Option<Duration>, Problem> {
    if faults.get("claim_compromise").is_none() {
        return Ok(None);
    }
    let section = child(faults, "claim_compromise", &["at"])?;
    let field = section.require("at")?;
    let at = field.positive_duration()?;
    if at >= run.duration {
        return Err(field.problem(format!(
            "{} is not before the end of the run (run.duration {})",
            format_duration(at),
            format_duration(run.duration)
        )));
    }
    Ok(Some(at))
}

/// A parsed value with where to blame it.
struct At<T> {
    value: T,
    site: super::fields::Site,
}

impl<T> At<T> {
    fn problem(&self, reason: &str) -> Problem {
        self.site.problem(reason)
    }
}

fn drops(faults: &Section, run: &RunLimits) -> Result<Drops, Problem> {
    let section = child(faults, "drops", &["rate", "at", "all_at"])?;
    Ok(Drops {
        rate: optional(&section, "rate", ratio, 0.0)?,
        at: maybe(&section, "at", drop_points)?.unwrap_or_default(),
        all_at: maybe(&section, "all_at", |f| storm_times(f, run))?.unwrap_or_default(),
    })
}

fn list<'a>(field: &Field<'a>, expected: &str) -> Result<&'a [super::tree::Node], Problem> {
    match &field.node.value {
        Value::Seq(items) => Ok(items),
        other => Err(field.problem(format!(
            "expected a list of {expected}, found {}",
            other.describe()
        ))),
    }
}

fn item<'a>(field: &Field<'a>, index: usize, node: &'a super::tree::Node) -> Field<'a> {
    Field {
        site: super::fields::Site {
            field: format!("{}[{index}]", field.site.field),
            at: node.at,
            written: true,
        },
        node,
    }
}

fn drop_points(field: &Field) -> Result<Vec<DropPoint>, Problem> {
    let options = DropPoint::ALL.map(|point| (point.as_str(), point));
    let mut points = Vec::new();
    for (index, node) in list(field, "step names")?.iter().enumerate() {
        let entry = item(field, index, node);
        let point = entry.choice(&options)?;
        if points.contains(&point) {
            return Err(entry.problem(format!("`{}` is listed twice", point.as_str())));
        }
        points.push(point);
    }
    Ok(points)
}

fn storm_times(field: &Field, run: &RunLimits) -> Result<Vec<Duration>, Problem> {
    let mut times = Vec::new();
    for (index, node) in list(field, "durations")?.iter().enumerate() {
        let entry = item(field, index, node);
        let at = entry.positive_duration()?;
        if at >= run.duration {
            return Err(entry.problem(format!(
                "{} is not before the end of the run (run.duration {})",
                format_duration(at),
                format_duration(run.duration)
            )));
        }
        times.push(at);
    }
    times.sort();
    Ok(times)
}

fn crash(faults: &Section) -> Result<Option<Crash>, Problem> {
    if faults.get("crash").is_none() {
        return Ok(None);
    }
    let section = child(faults, "crash", &["rate", "max_per_device"])?;
    let rate = section.require("rate")?.rate()?;
    let max = optional(&section, "max_per_device", |f| f.integer(1, 1_000), 3)?;
    Ok(Some(Crash {
        per_device_per_second: rate.per_second,
        max_per_device: max as u32,
    }))
}

fn provisioning(faults: &Section) -> Result<At<ProvisioningFaults>, Problem> {
    let fields = ["deny_rate", "throttle_rate", "latency"];
    let section = child(faults, "provisioning", &fields)?;
    let value = ProvisioningFaults {
        deny_rate: optional(&section, "deny_rate", ratio, 0.0)?,
        throttle_rate: optional(&section, "throttle_rate", ratio, 0.0)?,
        latency: optional(&section, "latency", Field::duration, Duration::ZERO)?,
    };
    let site = super::fields::Site {
        field: faults.path("provisioning"),
        at: faults.key_at("provisioning").unwrap_or(faults.at()),
        written: true,
    };
    Ok(At { value, site })
}

fn clock_skew(faults: &Section) -> Result<Option<ClockSkew>, Problem> {
    if faults.get("clock_skew").is_none() {
        return Ok(None);
    }
    let section = child(faults, "clock_skew", &["share", "ahead", "behind"])?;
    let share = section.require("share")?;
    let share_value = ratio(&share)?;
    let offset = match (section.get("ahead"), section.get("behind")) {
        (Some(ahead), None) => ahead.positive_duration()?.as_secs_f64(),
        (None, Some(behind)) => -behind.positive_duration()?.as_secs_f64(),
        (Some(_), Some(behind)) => {
            return Err(behind.problem("a skewed clock is either ahead or behind, not both"));
        }
        (None, None) => {
            return Err(section.default_site("ahead").problem(
                "say how far the clocks are off: `ahead: <duration>` or `behind: <duration>`",
            ));
        }
    };
    Ok(Some(ClockSkew {
        share: share_value,
        offset_seconds: offset,
    }))
}
