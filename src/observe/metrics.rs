//! The Prometheus side of a run: metric names, their help text and histogram
//! buckets, and the exporter that serves them on `/metrics`.
//!
//! The exporter is the process-wide `metrics` recorder, so it is installed at
//! most once; asking again for the same address hands back the same exporter.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use ::metrics::Unit;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use super::{ObserveError, Op};

/// Where the command line serves metrics unless told otherwise: loopback only,
/// so a run never exposes anything to the network by default.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

pub const OPERATION_DURATION: &str = "fleetsim_operation_duration_seconds";
pub const FLOW_DURATION: &str = "fleetsim_flow_duration_seconds";
pub const OPERATION_FAILURES: &str = "fleetsim_operation_failures_total";
pub const ARRIVALS: &str = "fleetsim_arrivals_total";
pub const ROTATIONS: &str = "fleetsim_rotations_total";
pub const ROTATION_LAG: &str = "fleetsim_rotation_lag_ratio";
pub const DEVICES: &str = "fleetsim_devices";
pub const BRICKED_DEVICES: &str = "fleetsim_bricked_devices";
pub const RUN_INFO: &str = "fleetsim_run_info";
pub const SLO_CONNECT_P99: &str = "fleetsim_slo_connect_p99_seconds";
pub const SLO_PROVISIONING_P99: &str = "fleetsim_slo_provisioning_p99_seconds";
pub const SLO_MAX_FAILURE_RATIO: &str = "fleetsim_slo_max_failure_ratio";
pub const SLO_MIN_ROTATIONS: &str = "fleetsim_slo_min_rotations_per_device";

/// The histogram an operation's latency goes to. The exporter picks buckets
/// per metric name, so operations of different ranges need different names:
/// single exchanges with the service (a connect, a publish, one request) take
/// from a tenth of a millisecond to a step deadline, while whole provisionings
/// and rotations chain several exchanges and their retries.
pub fn duration_metric(op: Op) -> &'static str {
    match op {
        Op::Provision | Op::Rotate => FLOW_DURATION,
        _ => OPERATION_DURATION,
    }
}

/// Buckets of `fleetsim_operation_duration_seconds` (single exchanges), in
/// seconds: a loopback publish acknowledged in 100 µs up to a connect retried
/// past the default 10 s step deadline.
pub const OPERATION_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets of `fleetsim_flow_duration_seconds` (whole provisionings and
/// rotations), in seconds: a few milliseconds on an idle loopback emulator up
/// to a boot storm where devices queue, time out and back off for minutes.
pub const FLOW_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of `fleetsim_rotation_lag_ratio`: the share of the renewal window
/// used up when a rotation finished. Fine near 0 (a healthy fleet rotates
/// right after its window opens), then 1 (notAfter) and beyond (expired).
pub const ROTATION_LAG_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0,
];

/// Buckets for any other histogram registered in the process (the emulator's),
/// so that none falls back to a summary, whose quantiles are wrong for early
/// samples and cannot be aggregated across shards.
pub const DEFAULT_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0,
];

/// The installed exporter: where it listens and how to render its text.
#[derive(Clone)]
pub struct MetricsHandle {
    addr: SocketAddr,
    prometheus: PrometheusHandle,
}

impl MetricsHandle {
    /// The address `/metrics` is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The exposition text a scrape would get right now.
    pub fn render(&self) -> String {
        self.prometheus.render()
    }
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

static INSTALLED: Mutex<Option<MetricsHandle>> = Mutex::new(None);

/// Installs the Prometheus exporter as the global `metrics` recorder, serving
/// `/metrics` on `addr`. Idempotent for the same address, because tests run
/// many runs in one process; a different address is refused, since one
/// process has one recorder. Install it before creating any [`Recorder`],
/// whose metric handles are bound at creation.
///
/// [`Recorder`]: super::Recorder
pub fn install_exporter(addr: SocketAddr) -> Result<MetricsHandle, ObserveError> {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return reuse(handle, addr);
    }
    let handle = start_exporter(addr)?;
    describe_metrics();
    *installed = Some(handle.clone());
    Ok(handle)
}

fn reuse(handle: &MetricsHandle, requested: SocketAddr) -> Result<MetricsHandle, ObserveError> {
    if handle.addr == requested {
        Ok(handle.clone())
    } else {
        Err(ObserveError::ExporterAlreadyListening {
            requested,
            listening: handle.addr,
        })
    }
}

/// Serves the exporter from its own thread and runtime: a scrape must keep
/// working when the runtime that asked for it (a test's, say) is gone.
fn start_exporter(addr: SocketAddr) -> Result<MetricsHandle, ObserveError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ObserveError::ExporterThread)?;
    let built = {
        let _entered = runtime.enter();
        builder(addr).and_then(|b| b.build().map_err(|error| build_error(addr, error)))
    };
    let (recorder, exporter) = match built {
        Ok(parts) => parts,
        Err(error) => return Err(abandon(runtime, error)),
    };
    let prometheus = recorder.handle();
    if ::metrics::set_global_recorder(recorder).is_err() {
        drop(exporter);
        return Err(abandon(runtime, ObserveError::RecorderTaken));
    }
    std::thread::Builder::new()
        .name("fleetsim-metrics".into())
        .spawn(move || runtime.block_on(exporter))
        .map_err(ObserveError::ExporterThread)?;
    Ok(MetricsHandle { addr, prometheus })
}

/// Drops the exporter's unused runtime without blocking: the caller may be
/// inside another runtime (`fleetsim run` is), where a plain drop panics,
/// and a port in use must be an error, not a crash.
fn abandon(runtime: tokio::runtime::Runtime, error: ObserveError) -> ObserveError {
    runtime.shutdown_background();
    error
}

fn builder(addr: SocketAddr) -> Result<PrometheusBuilder, ObserveError> {
    let exact = |name: &str| Matcher::Full(name.into());
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&DEFAULT_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(exact(OPERATION_DURATION), &OPERATION_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(exact(FLOW_DURATION), &FLOW_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(exact(ROTATION_LAG), &ROTATION_LAG_BUCKETS))
        .map_err(|error| build_error(addr, error))
}

fn build_error(addr: SocketAddr, error: BuildError) -> ObserveError {
    match error {
        BuildError::FailedToSetGlobalRecorder(_) => ObserveError::RecorderTaken,
        other => ObserveError::Listen {
            addr,
            reason: other.to_string(),
        },
    }
}

fn describe_metrics() {
    describe_durations();
    describe_counters();
    describe_gauges();
    describe_objectives();
    describe_emulator();
}

fn describe_durations() {
    ::metrics::describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Time from when a single device exchange was due to when it succeeded, by operation."
    );
    ::metrics::describe_histogram!(
        FLOW_DURATION,
        Unit::Seconds,
        "Time from when a whole provisioning or rotation was due to when it succeeded."
    );
    ::metrics::describe_histogram!(
        ROTATION_LAG,
        "Share of the renewal window used up when a rotation finished; above 1 is after notAfter."
    );
}

fn describe_counters() {
    ::metrics::describe_counter!(
        OPERATION_FAILURES,
        Unit::Count,
        "Device steps that failed, by operation and bounded reason."
    );
    ::metrics::describe_counter!(
        ARRIVALS,
        Unit::Count,
        "Devices that reached their scheduled arrival and began provisioning."
    );
    ::metrics::describe_counter!(
        ROTATIONS,
        Unit::Count,
        "Certificate rotations completed, old certificate proven refused."
    );
    ::metrics::describe_counter!(
        super::faults::FAULTS_INJECTED,
        Unit::Count,
        "Faults injected on purpose into the run, by kind."
    );
    ::metrics::describe_counter!(
        super::faults::FAULT_RESPONSES,
        Unit::Count,
        "What devices did after a fault or a lost connection, by response."
    );
}

fn describe_gauges() {
    ::metrics::describe_gauge!(DEVICES, Unit::Count, "Devices currently in each state.");
    ::metrics::describe_gauge!(
        BRICKED_DEVICES,
        Unit::Count,
        "Devices left without a working identity at the end of the run."
    );
    ::metrics::describe_gauge!(
        RUN_INFO,
        "Always 1; names each run this process serves, so emulator series can be tied to it."
    );
}

fn describe_objectives() {
    ::metrics::describe_gauge!(
        SLO_CONNECT_P99,
        Unit::Seconds,
        "The scenario's objective for the p99 connect time, when it sets one."
    );
    ::metrics::describe_gauge!(
        SLO_PROVISIONING_P99,
        Unit::Seconds,
        "The scenario's objective for the p99 provisioning time, when it sets one."
    );
    ::metrics::describe_gauge!(
        SLO_MAX_FAILURE_RATIO,
        "The scenario's highest acceptable share of failed devices, when it sets one."
    );
    ::metrics::describe_gauge!(
        SLO_MIN_ROTATIONS,
        Unit::Count,
        "The scenario's fewest rotations per device, when it sets one."
    );
}

/// Help text for the embedded emulator's metrics, which it records by name
/// where the events happen; described here because a description belongs to
/// the exporter, and a series without one fails `promtool check metrics`.
/// How long the emulator takes to answer a request, by API: the
/// control-plane operation name, or the Fleet Provisioning API
/// (`create_certificate_from_csr`, `create_keys_and_certificate`,
/// `register_thing`), from the request to the answer being ready.
pub const EMULATOR_REQUEST_DURATION: &str = "fleetsim_emulator_request_duration_seconds";

const EMULATOR_METRICS: [(&str, &str); 11] = [
    (
        "fleetsim_emulator_connections",
        "MQTT connections open past CONNACK.",
    ),
    (
        "fleetsim_emulator_connects_total",
        "Connection attempts, by how they ended.",
    ),
    (
        "fleetsim_emulator_handshake_refusals_total",
        "TLS handshakes refused, by reason.",
    ),
    (
        "fleetsim_emulator_tls_handshakes_total",
        "TLS handshakes completed, by the key-exchange group negotiated.",
    ),
    (
        "fleetsim_emulator_disconnects_total",
        "Connections closed, by AWS disconnect reason.",
    ),
    (
        "fleetsim_emulator_policy_denials_total",
        "Requests refused by IoT policy, by action.",
    ),
    (
        "fleetsim_emulator_messages_total",
        "PUBLISH packets handled, by direction.",
    ),
    (
        "fleetsim_emulator_messages_dropped_total",
        "Messages dropped for a full subscriber queue.",
    ),
    (
        "fleetsim_emulator_malformed_packets_total",
        "Packets the broker could not accept, by kind.",
    ),
    (
        "fleetsim_emulator_provisioning_requests_total",
        "Fleet Provisioning requests, by API and outcome.",
    ),
    (
        "fleetsim_emulator_control_requests_total",
        "Control-plane requests, by AWS operation and outcome.",
    ),
];

fn describe_emulator() {
    ::metrics::describe_histogram!(
        EMULATOR_REQUEST_DURATION,
        Unit::Seconds,
        "Time the emulator takes to answer a control-plane or Fleet Provisioning request, by API."
    );
    for (name, help) in EMULATOR_METRICS {
        if name == "fleetsim_emulator_connections" {
            ::metrics::describe_gauge!(name, Unit::Count, help);
        } else {
            ::metrics::describe_counter!(name, Unit::Count, help);
        }
    }
}
