//! The device view: one device's live status as JSON, with the registry's
//! word on each of its certificates. Only public parts of certificates are
//! shown; private keys never leave the device task.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::device::live::{CertificateSummary, DeviceStatus, Step};
use crate::emulator::registry::Registry;

pub(super) fn device_json(status: &DeviceStatus, registry: Option<&Registry>, kind: &str) -> Value {
    let registry_status = |id: &str| {
        registry
            .and_then(|r| r.certificate_status(id))
            .map(|s| s.as_str())
    };
    json!({
        "serial": status.serial,
        "thing": status.thing,
        "kind": kind,
        "state": status.state.as_str(),
        "rotations": status.rotations,
        "current": status.current.as_ref().map(|c| certificate_json(c, registry_status(&c.id))),
        "retired": status.retired.iter().map(|id| json!({
            "id": id,
            "registry_status": registry_status(id),
        })).collect::<Vec<_>>(),
        "errors": status.errors.iter().rev().map(step_json).collect::<Vec<_>>(),
        "steps": status.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

fn certificate_json(certificate: &CertificateSummary, registry_status: Option<&str>) -> Value {
    json!({
        "id": certificate.id,
        "serial": certificate.serial_hex,
        "not_before": timestamp(certificate.not_before),
        "not_after": timestamp(certificate.not_after),
        "key_type": certificate.key_type,
        "registry_status": registry_status,
    })
}

pub(super) fn step_json(step: &Step) -> Value {
    json!({
        "name": step.name,
        "at": timestamp_millis(step.at),
        "duration_ms": (step.duration.as_secs_f64() * 1e6).round() / 1e3,
        "ok": step.ok,
        "detail": step.detail,
    })
}

/// Counts of what the registry holds. It walks every record, so it is
/// served on request, never on the live feed.
pub(super) fn registry_json(registry: &Registry) -> Value {
    let mut by_status = serde_json::Map::new();
    for certificate in registry.certificates() {
        let key = certificate.status.as_str().to_owned();
        let count = by_status.get(&key).and_then(Value::as_u64).unwrap_or(0) + 1;
        by_status.insert(key, json!(count));
    }
    json!({
        "things": registry.thing_count(),
        "certificates": registry.certificate_count(),
        "certificates_by_status": by_status,
        "thing_list": thing_list(registry),
    })
}

/// How many things the registry view lists, by name.
const LISTED_THINGS: usize = 100;

/// The first things by name, each with its certificates and their status.
fn thing_list(registry: &Registry) -> Vec<Value> {
    let mut things = registry.things();
    things.sort_by(|a, b| a.name.cmp(&b.name));
    let principal = |id: &String| {
        let status = registry.certificate_status(id).map(|s| s.as_str());
        json!({ "id": id, "status": status })
    };
    things
        .iter()
        .take(LISTED_THINGS)
        .map(|thing| {
            let certificates: Vec<Value> = thing.principals.iter().map(principal).collect();
            json!({ "name": thing.name, "certificates": certificates })
        })
        .collect()
}

fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn timestamp_millis(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
