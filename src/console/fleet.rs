//! The fleet view: one JSON document per tick with devices by state, rates,
//! latency percentiles per operation, failures by reason, live SLO status
//! and the emulator's connections and refusals. The browser draws its small
//! charts from the series of these documents, so the server keeps no history.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{ConsoleSources, FleetSources};
use crate::observe::slo::{self, Measured};
use crate::observe::{DeviceState, FailureReason, Op, Snapshot};

/// The operations whose rates the fleet view shows.
const RATED: [Op; 4] = [Op::Provision, Op::Rotate, Op::Connect, Op::Publish];

/// The previous tick, for rates.
pub(super) type Previous = Option<(Instant, Snapshot)>;

/// The document of one tick, and the state to compute the next one's rates.
pub(super) fn tick(sources: &ConsoleSources, previous: &Previous) -> (Value, Previous) {
    let emulator = sources.metrics.as_ref().map(|m| emulator_json(&m.render()));
    let Some(fleet) = &sources.fleet else {
        return (json!({ "fleet": null, "emulator": emulator }), None);
    };
    let now = Instant::now();
    let snapshot = fleet.recorder.snapshot();
    let document = json!({
        "fleet": {
            "run": fleet.run,
            "elapsed_seconds": fleet.started.elapsed().as_secs_f64(),
            "size": fleet.fleet_size,
            "states": states_json(&snapshot),
            "provisioned": snapshot.provisioned(),
            "rotations": snapshot.rotations(),
            "rates": rates_json(&snapshot, now, previous),
            "latency": latency_json(fleet),
            "failures": failures_json(&snapshot),
            "throttled": throttled(&snapshot),
            "slo": slo_json(fleet, &snapshot),
        },
        "emulator": emulator,
    });
    (document, Some((now, snapshot)))
}

fn states_json(snapshot: &Snapshot) -> Value {
    DeviceState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(snapshot.devices(*s))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Steps per second since the previous tick (zero on the first one).
fn rates_json(snapshot: &Snapshot, now: Instant, previous: &Previous) -> Value {
    RATED
        .iter()
        .map(|op| {
            let rate = previous.as_ref().map_or(0.0, |(then, before)| {
                let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
                snapshot
                    .completed(*op)
                    .saturating_sub(before.completed(*op)) as f64
                    / seconds
            });
            (op.as_str().to_owned(), json!(round(rate, 2)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn latency_json(fleet: &FleetSources) -> Value {
    Op::ALL
        .iter()
        .filter_map(|op| {
            let histogram = fleet.recorder.histogram(*op);
            let ms = |q: f64| round(histogram.value_at_quantile(q) as f64 / 1000.0, 3);
            (!histogram.is_empty()).then(|| {
                json!({
                    "op": op.as_str(),
                    "count": histogram.len(),
                    "p50_ms": ms(0.5),
                    "p90_ms": ms(0.9),
                    "p99_ms": ms(0.99),
                    "max_ms": round(histogram.max() as f64 / 1000.0, 3),
                })
            })
        })
        .collect()
}

fn failures_json(snapshot: &Snapshot) -> Value {
    Op::ALL
        .iter()
        .flat_map(|op| FailureReason::ALL.iter().map(move |reason| (*op, *reason)))
        .filter_map(|(op, reason)| {
            let count = snapshot.failures_for(op, reason);
            (count > 0)
                .then(|| json!({ "op": op.as_str(), "reason": reason.as_str(), "count": count }))
        })
        .collect()
}

fn throttled(snapshot: &Snapshot) -> u64 {
    Op::ALL
        .iter()
        .map(|op| snapshot.failures_for(*op, FailureReason::Throttled))
        .sum()
}

/// The scenario's objectives against what has been measured so far. The
/// invariant (no bricked device) is proved only at the end of the run.
fn slo_json(fleet: &FleetSources, snapshot: &Snapshot) -> Value {
    let p99 = |op| {
        let histogram = fleet.recorder.histogram(op);
        (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99) as f64 / 1000.0)
    };
    let measured = Measured {
        connect_p99_ms: p99(Op::Connect),
        provisioning_p99_ms: p99(Op::Provision),
        failure_ratio: snapshot.devices(DeviceState::Failed) as f64
            / fleet.fleet_size.max(1) as f64,
        min_rotations_per_device: fleet.live.min_rotations(),
        ..Measured::default()
    };
    slo::verdicts(&fleet.slo, &measured)
        .into_iter()
        .filter(|v| v.name != slo::INVARIANT)
        .map(|v| {
            json!({
                "name": v.name,
                "measured": v.measured.map(|m| round(m, 3)),
                "threshold": v.threshold,
                "bound": format!("{:?}", v.bound),
                "unit": v.unit,
                "passed": v.passed,
            })
        })
        .collect()
}

/// The emulator's side, read from the exposition text: connections now,
/// connection outcomes and handshake refusals by reason.
fn emulator_json(text: &str) -> Value {
    json!({
        "connections": sample_sum(text, "fleetsim_emulator_connections"),
        "connects": by_label(text, "fleetsim_emulator_connects_total", "outcome"),
        "refusals": by_label(text, crate::emulator::tls::HANDSHAKE_REFUSALS, "reason"),
    })
}

/// `(labels, value)` of every sample of `name`.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = match rest.strip_prefix('{') {
            Some(inner) => inner.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

fn sample_sum(text: &str, name: &str) -> f64 {
    samples(text, name).map(|(_, v)| v).sum()
}

fn by_label(text: &str, name: &str, label: &str) -> Value {
    let mut found = serde_json::Map::new();
    for (labels, value) in samples(text, name) {
        let key = label_value(labels, label).unwrap_or("").to_owned();
        let total = found.get(&key).and_then(Value::as_f64).unwrap_or(0.0) + value;
        found.insert(key, json!(total));
    }
    found.into()
}

fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == label).then(|| value.trim_matches('"'))
    })
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_counters_are_read_from_the_exposition_text() {
        let text = "\
# TYPE fleetsim_emulator_connections gauge
fleetsim_emulator_connections 3
fleetsim_emulator_connects_total{outcome=\"accepted\"} 10
fleetsim_emulator_connects_total{outcome=\"tls_refused\"} 2
fleetsim_emulator_handshake_refusals_total{reason=\"certificate_revoked\"} 2
fleetsim_emulator_connections_other 99
";
        let value = emulator_json(text);
        assert_eq!(value["connections"], 3.0);
        assert_eq!(value["connects"]["accepted"], 10.0);
        assert_eq!(value["refusals"]["certificate_revoked"], 2.0);
    }
}
