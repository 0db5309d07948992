//! Building the typed `Scenario` from the located YAML tree, one section at a
//! time, with defaults filled in. Each section checks its own fields and hands
//! the fields that depend on each other to `rules`, with the place of each.

use std::path::PathBuf;
use std::time::Duration;

use super::fields::{Field, Problem, Section};
use super::rules::{self, Sited};
use super::tree::{Node, Value};
use super::values::{self, format_duration};
use super::*;

const TOP_FIELDS: &[&str] = &[
    "name",
    "target",
    "fleet",
    "arrival",
    "provisioning",
    "tls",
    "clock",
    "certificates",
    "rotation",
    "telemetry",
    "run",
    "credentials",
    "slo",
    "faults",
    "pacing",
];

/// AWS IoT Core's largest MQTT payload.
const MAX_PAYLOAD_BYTES: i128 = 128 * 1024;

const MAX_FLEET_SIZE: i128 = 10_000_000;

/// Slower clocks are of no use, and with the 100-year cap on durations this
/// keeps every scaled duration representable.
const MIN_SPEEDUP: f64 = 0.001;

/// Builds and validates a whole scenario.
pub(crate) fn scenario(root: &Node) -> Result<Scenario, Problem> {
    if root.value == Value::Null {
        return Err(Problem {
            at: root.at,
            field: TOP_LEVEL.into(),
            reason: "the file is empty; a scenario needs at least name, fleet.size, \
                     arrival.rate and run.duration"
                .into(),
        });
    }
    let top = Section::open(Some(root), "", root.at, TOP_FIELDS)?;
    // Sections are read in the order they are documented, so that of several
    // mistakes the one reported first is the one a reader meets first.
    let (name, target, fleet) = (name(&top)?, target(&top)?, fleet(&top)?);
    let (arrival, provisioning) = (arrival(&top)?, provisioning(&top)?);
    let tls = tls(&top)?;
    let (clock, certificates) = (clock(&top)?, certificates(&top)?);
    let rotation = rotation(&top, &certificates, &clock)?;
    let telemetry = telemetry(&top)?;
    let run = run_limits(&top)?;
    Ok(Scenario {
        name,
        target,
        fleet,
        arrival,
        provisioning,
        tls,
        rotation,
        clock: Clock {
            speedup: clock.value,
        },
        certificates: Certificates {
            validity: certificates.value,
        },
        telemetry,
        run: run.clone(),
        credentials: credentials(&top)?,
        slo: slo(&top)?,
        faults: super::faults::faults(&top, target, &run)?,
        pacing: pacing(&top)?,
    })
}

/// Reads an optional field with `read`, or gives `default` when it is absent.
pub(super) fn optional<'a, T>(
    section: &Section<'a>,
    name: &str,
    read: impl FnOnce(&Field<'a>) -> Result<T, Problem>,
    default: T,
) -> Result<T, Problem> {
    section
        .get(name)
        .map(|field| read(&field))
        .unwrap_or(Ok(default))
}

/// Like `optional`, but keeps where the value came from for later cross-field checks.
fn sited<'a, T>(
    section: &Section<'a>,
    name: &str,
    read: impl FnOnce(&Field<'a>) -> Result<T, Problem>,
    default: T,
) -> Result<Sited<T>, Problem> {
    match section.get(name) {
        Some(field) => Ok(Sited {
            value: read(&field)?,
            site: field.site,
        }),
        None => Ok(Sited {
            value: default,
            site: section.default_site(name),
        }),
    }
}

pub(super) fn child<'a>(
    top: &Section<'a>,
    name: &str,
    accepted: &[&str],
) -> Result<Section<'a>, Problem> {
    let at = top.key_at(name).unwrap_or(top.at());
    Section::open(top.node(name), &top.path(name), at, accepted)
}

fn name(top: &Section) -> Result<String, Problem> {
    let field = top.require("name")?;
    let name = field.text()?;
    values::check_name(name, 64).map_err(|reason| field.problem(reason))?;
    Ok(name.to_owned())
}

fn target(top: &Section) -> Result<Target, Problem> {
    let options = [("local", Target::Local), ("aws", Target::Aws)];
    optional(top, "target", |f| f.choice(&options), Target::Local)
}

fn fleet(top: &Section) -> Result<Fleet, Problem> {
    let section = child(top, "fleet", &["size", "serial_pattern"])?;
    let size = section.require("size")?.integer(1, MAX_FLEET_SIZE)? as u64;
    let pattern = sited(
        &section,
        "serial_pattern",
        serial_pattern,
        default_serial_pattern(),
    )?;
    values::check_serial_length(&pattern.value, size)
        .map_err(|reason| pattern.site.problem(reason))?;
    Ok(Fleet {
        size,
        serial_pattern: pattern.value,
    })
}

fn serial_pattern(field: &Field) -> Result<SerialPattern, Problem> {
    values::parse_serial_pattern(field.text()?).map_err(|reason| field.problem(reason))
}

fn default_serial_pattern() -> SerialPattern {
    SerialPattern {
        prefix: "sim-".into(),
        width: 6,
        suffix: String::new(),
    }
}

fn arrival(top: &Section) -> Result<Arrival, Problem> {
    let section = child(top, "arrival", &["rate", "phases"])?;
    let rate = section.require("rate")?.rate()?;
    let phases = match section.get("phases") {
        Some(field) => phases(&field)?,
        None => Vec::new(),
    };
    Ok(Arrival { rate, phases })
}

fn phases(field: &Field) -> Result<Vec<Phase>, Problem> {
    let Value::Seq(items) = &field.node.value else {
        let found = field.node.value.describe();
        return Err(field.problem(format!(
            "expected a list of {{rate, duration}}, found {found}"
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| phase(item, &format!("{}[{index}]", field.site.field)))
        .collect()
}

fn phase(node: &Node, path: &str) -> Result<Phase, Problem> {
    let section = Section::open(Some(node), path, node.at, &["rate", "duration"])?;
    Ok(Phase {
        rate: section.require("rate")?.rate()?,
        duration: section.require("duration")?.positive_duration()?,
    })
}

fn provisioning(top: &Section) -> Result<Provisioning, Problem> {
    let section = child(top, "provisioning", &["method", "template"])?;
    let methods = [
        ("csr", ProvisioningMethod::CsrEcP256),
        ("create_keys", ProvisioningMethod::CreateKeysRsa),
    ];
    let method = optional(&section, "method", |f| f.choice(&methods), methods[0].1)?;
    let template = optional(&section, "template", template, "fleetsim-fleet".into())?;
    Ok(Provisioning { method, template })
}

fn tls(top: &Section) -> Result<Tls, Problem> {
    let section = child(top, "tls", &["key_exchange"])?;
    let groups = KeyExchange::ALL.map(|kx| (kx.label(), kx));
    let key_exchange = optional(
        &section,
        "key_exchange",
        |f| f.choice(&groups),
        KeyExchange::default(),
    )?;
    Ok(Tls { key_exchange })
}

fn template(field: &Field) -> Result<String, Problem> {
    let name = field.text()?;
    values::check_name(name, 36).map_err(|reason| field.problem(reason))?;
    Ok(name.to_owned())
}

fn clock(top: &Section) -> Result<Sited<f64>, Problem> {
    let section = child(top, "clock", &["speedup"])?;
    sited(&section, "speedup", speedup, 1.0)
}

fn speedup(field: &Field) -> Result<f64, Problem> {
    let number = field.number()?;
    if number < MIN_SPEEDUP {
        let reason = format!("{number} is below {MIN_SPEEDUP}, a thousandth of real speed");
        return Err(field.problem(reason));
    }
    Ok(number)
}

fn certificates(top: &Section) -> Result<Sited<Duration>, Problem> {
    let section = child(top, "certificates", &["validity"])?;
    let year = Duration::from_secs(365 * 86_400);
    sited(&section, "validity", Field::positive_duration, year)
}

fn rotation(
    top: &Section,
    validity: &Sited<Duration>,
    speedup: &Sited<f64>,
) -> Result<Rotation, Problem> {
    let fields = ["enabled", "check_every", "renew_before", "jitter"];
    let section = child(top, "rotation", &fields)?;
    let enabled = optional(&section, "enabled", Field::boolean, true)?;
    let day = Duration::from_secs(86_400);
    let check_every = sited(&section, "check_every", Field::positive_duration, day)?;
    let renew_before = sited(
        &section,
        "renew_before",
        Field::positive_duration,
        validity.value / 3,
    )?;
    let jitter = sited(&section, "jitter", Field::duration, Duration::ZERO)?;
    rules::check_renewal(&renew_before, validity)?;
    rules::check_jitter(&jitter, &check_every)?;
    if enabled {
        rules::check_real_validity(validity, speedup)?;
        rules::check_real_tick(&check_every, speedup)?;
    }
    Ok(Rotation {
        enabled,
        check_every: check_every.value,
        renew_before: renew_before.value,
        jitter: jitter.value,
    })
}

fn telemetry(top: &Section) -> Result<Telemetry, Problem> {
    let fields = ["enabled", "interval", "qos", "payload_bytes", "topic"];
    let section = child(top, "telemetry", &fields)?;
    Ok(Telemetry {
        enabled: optional(&section, "enabled", Field::boolean, true)?,
        interval: optional(&section, "interval", interval, Duration::from_secs(10))?,
        qos: optional(&section, "qos", qos, Qos::AtLeastOnce)?,
        payload_bytes: optional(&section, "payload_bytes", payload_bytes, 128)?,
        topic: optional(&section, "topic", topic, "telemetry".into())?,
    })
}

fn interval(field: &Field) -> Result<Duration, Problem> {
    let interval = field.duration()?;
    if interval < rules::MIN_REAL_TICK {
        let shortest = format_duration(rules::MIN_REAL_TICK);
        return Err(field.problem(format!("{} is below {shortest}", format_duration(interval))));
    }
    Ok(interval)
}

fn qos(field: &Field) -> Result<Qos, Problem> {
    match field.integer(i128::MIN, i128::MAX)? {
        0 => Ok(Qos::AtMostOnce),
        1 => Ok(Qos::AtLeastOnce),
        2 => Err(field.problem("AWS IoT Core does not support QoS 2; use 0 or 1")),
        other => Err(field.problem(format!("{other} is not an MQTT QoS; use 0 or 1"))),
    }
}

fn payload_bytes(field: &Field) -> Result<usize, Problem> {
    Ok(field.integer(1, MAX_PAYLOAD_BYTES)? as usize)
}

fn topic(field: &Field) -> Result<String, Problem> {
    let topic = field.text()?;
    values::check_topic(topic).map_err(|reason| field.problem(reason))?;
    Ok(topic.to_owned())
}

fn run_limits(top: &Section) -> Result<RunLimits, Problem> {
    let fields = [
        "duration",
        "step_timeout",
        "backoff_base",
        "backoff_max",
        "max_attempts",
    ];
    let section = child(top, "run", &fields)?;
    let positive = Field::positive_duration;
    let base = sited(
        &section,
        "backoff_base",
        positive,
        Duration::from_millis(100),
    )?;
    let max = sited(&section, "backoff_max", positive, Duration::from_secs(5))?;
    rules::check_backoff(&base, &max)?;
    Ok(RunLimits {
        duration: section.require("duration")?.positive_duration()?,
        step_timeout: optional(&section, "step_timeout", positive, Duration::from_secs(10))?,
        backoff_base: base.value,
        backoff_max: max.value,
        max_attempts: optional(&section, "max_attempts", max_attempts, 5)?,
    })
}

fn max_attempts(field: &Field) -> Result<u32, Problem> {
    Ok(field.integer(1, u32::MAX.into())? as u32)
}

fn credentials(top: &Section) -> Result<CredentialStorage, Problem> {
    let section = child(top, "credentials", &["storage", "dir"])?;
    let storages = [("disk", true), ("memory", false)];
    let on_disk = optional(&section, "storage", |f| f.choice(&storages), true)?;
    let dir = section.get("dir");
    match (on_disk, dir) {
        (false, Some(dir)) => Err(dir.problem("only applies to storage: disk")),
        (false, None) => Ok(CredentialStorage::Memory),
        (true, dir) => Ok(CredentialStorage::Disk {
            dir: dir.map_or(Ok(PathBuf::from("certs")), |f| directory(&f))?,
        }),
    }
}

fn directory(field: &Field) -> Result<PathBuf, Problem> {
    match field.text()? {
        "" => Err(field.problem("must not be empty")),
        dir => Ok(PathBuf::from(dir)),
    }
}

fn slo(top: &Section) -> Result<Slo, Problem> {
    let fields = [
        "connect_p99",
        "provisioning_p99",
        "max_failure_ratio",
        "min_rotations_per_device",
    ];
    let section = child(top, "slo", &fields)?;
    Ok(Slo {
        connect_p99: maybe(&section, "connect_p99", Field::positive_duration)?,
        provisioning_p99: maybe(&section, "provisioning_p99", Field::positive_duration)?,
        max_failure_ratio: maybe(&section, "max_failure_ratio", ratio)?,
        min_rotations_per_device: maybe(&section, "min_rotations_per_device", count)?,
    })
}

/// The fleet's rate limits: any field left out takes AWS's default quota,
/// `enabled: false` turns pacing off.
fn pacing(top: &Section) -> Result<Option<crate::pacing::Quotas>, Problem> {
    if top.node("pacing").is_none() {
        return Ok(None);
    }
    let mut fields = vec!["enabled"];
    fields.extend_from_slice(crate::pacing::QUOTA_NAMES);
    let section = child(top, "pacing", &fields)?;
    if !optional(&section, "enabled", Field::boolean, true)? {
        return Ok(Some(crate::pacing::Quotas::default()));
    }
    let defaults = crate::pacing::Quotas::aws_defaults();
    let rate = |name: &str, default: Option<f64>| -> Result<Option<f64>, Problem> {
        optional(&section, name, |f| Ok(Some(f.rate()?.per_second)), default)
    };
    Ok(Some(crate::pacing::Quotas {
        connect: rate("connect", defaults.connect)?,
        connect_per_client_id: rate("connect_per_client_id", defaults.connect_per_client_id)?,
        create_certificate: rate("create_certificate", defaults.create_certificate)?,
        register_thing: rate("register_thing", defaults.register_thing)?,
        control_plane: rate("control_plane", defaults.control_plane)?,
    }))
}

/// Reads a field that has no default.
pub(super) fn maybe<'a, T>(
    section: &Section<'a>,
    name: &str,
    read: impl FnOnce(&Field<'a>) -> Result<T, Problem>,
) -> Result<Option<T>, Problem> {
    section.get(name).map(|field| read(&field)).transpose()
}

fn count(field: &Field) -> Result<u64, Problem> {
    Ok(field.integer(0, u64::MAX.into())? as u64)
}

pub(super) fn ratio(field: &Field) -> Result<f64, Problem> {
    let ratio = field.number()?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(field.problem(format!("{ratio} is not a ratio between 0 and 1")));
    }
    Ok(ratio)
}
