//! The measuring side of a run: a Recorder fed known samples must give the
//! expected percentiles and verdicts in the report, the report must survive
//! JSON exactly, and the exporter must serve the documented metric names over
//! real HTTP on loopback.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleetsim::observe::metrics::{MetricsHandle, install_exporter};
use fleetsim::observe::{
    DeviceState, FailureReason, FinalCheck, ObserveError, Op, Recorder, Report,
};
use fleetsim::scenario::Slo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One exporter per test process, as in a real run; every test that reads
/// metrics shares it and tells its series apart by the run label.
fn exporter() -> MetricsHandle {
    static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| install_exporter(free_loopback_addr()).expect("exporter installs"))
        .clone()
}

/// The exporter binds a fixed address, so borrow a free port from the kernel.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Connect latencies of 1, 2, … 1000 ms.
fn recorder_with_connects(run: &str) -> Recorder {
    let recorder = Recorder::new(run);
    for ms in 1..=1000 {
        recorder.record(Op::Connect, Duration::from_millis(ms));
    }
    recorder
}

fn clean_check(devices: u64) -> FinalCheck {
    FinalCheck {
        devices,
        provisioned: devices,
        rotations_per_device: vec![2; devices as usize],
        ..FinalCheck::default()
    }
}

fn build(recorder: &Recorder, slo: &Slo, check: &FinalCheck) -> Report {
    Report::build(recorder, slo, check, Duration::from_secs(10)).unwrap()
}

fn assert_close(measured: Option<f64>, expected_ms: f64) {
    let measured = measured.expect("a measured value");
    // Three significant digits: HDR is within 0.1% of the true value.
    let tolerance = expected_ms * 0.001 + 0.001;
    assert!(
        (measured - expected_ms).abs() <= tolerance,
        "measured {measured} ms, expected {expected_ms} ms"
    );
}

#[test]
fn report_gives_percentiles_of_known_samples_within_hdr_precision() {
    let recorder = recorder_with_connects("percentiles");
    let report = build(&recorder, &Slo::default(), &clean_check(10));
    let connect = report.operation(Op::Connect).unwrap();

    assert_eq!(connect.count, 1000);
    assert_close(connect.p50_ms, 500.0);
    assert_close(connect.p90_ms, 900.0);
    assert_close(connect.p99_ms, 990.0);
    assert_close(connect.p999_ms, 999.0);
    assert_close(connect.max_ms, 1000.0);
    assert_eq!(connect.throughput_per_second, 100.0);
}

#[test]
fn operation_never_done_has_no_percentiles() {
    let recorder = Recorder::new("empty");
    let report = build(&recorder, &Slo::default(), &clean_check(1));
    let publish = report.operation(Op::Publish).unwrap();
    assert_eq!(
        (publish.count, publish.p99_ms, publish.max_ms),
        (0, None, None)
    );
}

#[test]
fn met_objectives_pass_the_report() {
    let recorder = recorder_with_connects("met");
    recorder.record(Op::Provision, Duration::from_secs(3));
    let slo = Slo {
        connect_p99: Some(Duration::from_secs(1)),
        provisioning_p99: Some(Duration::from_secs(5)),
        max_failure_ratio: Some(0.0),
        min_rotations_per_device: Some(2),
    };
    let report = build(&recorder, &slo, &clean_check(10));

    assert_eq!(report.slo.len(), 5, "four objectives and the invariant");
    assert!(
        report.slo.iter().all(|verdict| verdict.passed),
        "{report:#?}"
    );
    assert!(report.passed() && report.passed);
}

#[test]
fn missed_connect_p99_fails_the_report() {
    let recorder = recorder_with_connects("missed");
    let slo = Slo {
        connect_p99: Some(Duration::from_millis(500)),
        ..Slo::default()
    };
    let report = build(&recorder, &slo, &clean_check(10));

    let verdict = &report.slo[0];
    assert_eq!(verdict.name, "connect_p99");
    assert_close(verdict.measured, 990.0);
    assert_eq!(verdict.threshold, 500.0);
    assert!(!verdict.passed);
    assert!(!report.passed());
}

#[test]
fn bricked_device_fails_the_report_even_without_objectives() {
    let recorder = Recorder::new("bricked");
    let check = FinalCheck {
        bricked: 1,
        ..clean_check(10)
    };
    let report = build(&recorder, &Slo::default(), &check);

    assert_eq!(report.bricked, 1);
    assert_eq!(report.slo.len(), 1);
    assert!(!report.passed());
}

#[test]
fn retired_certificate_still_accepted_fails_the_report() {
    let recorder = Recorder::new("retired");
    let check = FinalCheck {
        retired_certificates: 20,
        retired_still_accepted: 1,
        ..clean_check(10)
    };
    assert!(!build(&recorder, &Slo::default(), &check).passed());
}

#[test]
fn failure_ratio_counts_devices_that_ended_failed() {
    let recorder = Recorder::new("ratio");
    for _ in 0..10 {
        recorder.device_state(None, DeviceState::Pending);
    }
    recorder.device_state(Some(DeviceState::Pending), DeviceState::Failed);
    let slo = Slo {
        max_failure_ratio: Some(0.05),
        ..Slo::default()
    };
    let report = build(&recorder, &slo, &clean_check(10));

    assert_eq!(report.devices_failed, 1);
    assert_eq!(report.slo[0].measured, Some(0.1));
    assert!(!report.passed());
}

#[test]
fn rotations_per_device_are_judged_by_the_least_rotated_device() {
    let recorder = Recorder::new("rotations");
    (0..7).for_each(|_| recorder.rotation_completed());
    let check = FinalCheck {
        rotations_per_device: vec![3, 1, 3],
        ..clean_check(3)
    };
    let slo = Slo {
        min_rotations_per_device: Some(2),
        ..Slo::default()
    };
    let report = build(&recorder, &slo, &check);

    assert_eq!(report.rotations.total, 7);
    assert_eq!(report.rotations.per_device_min, Some(1));
    assert_eq!(report.rotations.per_device_mean, Some(2.333));
    assert_eq!(report.slo[0].measured, Some(1.0));
    assert!(!report.passed());
}

#[test]
fn failures_are_reported_by_operation_and_reason() {
    let recorder = Recorder::new("failures");
    recorder.failure(Op::Connect, FailureReason::TlsRefused);
    recorder.failure(Op::Connect, FailureReason::TlsRefused);
    recorder.failure(Op::RegisterThing, FailureReason::ProvisioningRejected);
    let report = build(&recorder, &Slo::default(), &clean_check(1));

    let pairs: Vec<_> = report
        .failures
        .iter()
        .map(|f| (f.op.as_str(), f.reason.as_str(), f.count))
        .collect();
    assert_eq!(
        pairs,
        [
            ("register_thing", "provisioning_rejected", 1),
            ("connect", "tls_refused", 2)
        ]
    );
    assert_eq!(report.operation(Op::Connect).unwrap().failures, 2);
}

#[test]
fn snapshot_follows_device_state_moves() {
    let recorder = Recorder::new("states");
    recorder.device_state(None, DeviceState::Pending);
    recorder.device_state(None, DeviceState::Pending);
    recorder.device_state(Some(DeviceState::Pending), DeviceState::Provisioning);
    recorder.device_state(Some(DeviceState::Provisioning), DeviceState::Online);
    recorder.record(Op::Provision, Duration::from_secs(1));
    recorder.rotation_completed();
    recorder.failure(Op::Publish, FailureReason::Timeout);

    let snapshot = recorder.snapshot();
    assert_eq!(snapshot.devices(DeviceState::Pending), 1);
    assert_eq!(snapshot.devices(DeviceState::Provisioning), 0);
    assert_eq!(snapshot.devices(DeviceState::Online), 1);
    assert_eq!(snapshot.provisioned(), 1);
    assert_eq!(snapshot.rotations(), 1);
    assert_eq!(snapshot.failures(), 1);
}

#[test]
fn table_shows_every_operation_and_verdict() {
    let recorder = recorder_with_connects("table");
    let slo = Slo {
        connect_p99: Some(Duration::from_millis(500)),
        ..Slo::default()
    };
    let table = build(&recorder, &slo, &clean_check(10)).render_table();

    for op in Op::ALL {
        assert!(table.contains(op.as_str()), "{op:?} missing from\n{table}");
    }
    let connect_verdict = table
        .lines()
        .find(|line| line.starts_with("connect_p99"))
        .unwrap();
    assert!(connect_verdict.ends_with("FAIL"), "{connect_verdict}");
    let invariant = table
        .lines()
        .find(|line| line.starts_with("no bricked"))
        .unwrap();
    assert!(invariant.ends_with("PASS"), "{invariant}");
    assert!(table.contains("result: FAIL"), "{table}");
}

#[test]
fn an_unverified_device_fails_the_report_and_says_why() {
    let recorder = Recorder::new("unverified");
    let check = FinalCheck {
        provisioned: 9,
        unverified: [(FailureReason::Timeout, 1)].into(),
        ..clean_check(10)
    };
    let report = build(&recorder, &Slo::default(), &check);

    assert_eq!(report.bricked, 0);
    assert_eq!(report.unverified, 1);
    assert_eq!(report.unverified_reasons["timeout"], 1);
    assert!(!report.passed(), "nothing was proved about one device");
    let table = report.render_table();
    assert!(
        table.contains("unverified devices: 1 (timeout 1)"),
        "{table}"
    );
    let json = report.to_json_pretty().unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn json_report_round_trips_with_exact_histograms() {
    let recorder = recorder_with_connects("json");
    recorder.failure(Op::Rotate, FailureReason::ControlPlane);
    let slo = Slo {
        connect_p99: Some(Duration::from_millis(1500)),
        ..Slo::default()
    };
    let report = build(&recorder, &slo, &clean_check(10));

    let json = report.to_json_pretty().unwrap();
    let back = Report::from_json(&json).unwrap();

    assert_eq!(back, report);
    let histogram = back.operation(Op::Connect).unwrap().histogram().unwrap();
    assert_eq!(histogram, recorder.histogram(Op::Connect));
}

#[test]
fn corrupt_histogram_in_json_is_an_error() {
    let recorder = recorder_with_connects("corrupt");
    let mut report = build(&recorder, &Slo::default(), &clean_check(1));
    report.operations[0].hdr_histogram = "bm90IGEgaGlzdG9ncmFt".into();
    assert!(matches!(
        report.operations[0].histogram(),
        Err(ObserveError::HistogramDecode { .. })
    ));
}

#[tokio::test]
async fn exporter_serves_fleetsim_metrics_over_http() {
    let handle = exporter();
    let recorder = Arc::new(Recorder::new("scrape"));
    recorder.record(Op::Connect, Duration::from_millis(20));
    recorder.failure(Op::Connect, FailureReason::Timeout);
    recorder.rotation_completed();
    recorder.device_state(None, DeviceState::Online);

    let body = scrape(handle.addr()).await;

    for expected in [
        r#"fleetsim_operation_duration_seconds_bucket{op="connect",run="scrape",le="0.025"} 1"#,
        r#"fleetsim_flow_duration_seconds_bucket{op="rotate",run="scrape",le="300"} 0"#,
        r#"fleetsim_arrivals_total{run="scrape"} 0"#,
        r#"fleetsim_run_info{run="scrape"} 1"#,
        r#"fleetsim_operation_failures_total{op="connect",reason="timeout",run="scrape"} 1"#,
        r#"fleetsim_rotations_total{run="scrape"} 1"#,
        r#"fleetsim_devices{state="online",run="scrape"} 1"#,
        r#"fleetsim_devices{state="failed",run="scrape"} 0"#,
        r#"fleetsim_bricked_devices{run="scrape"} 0"#,
        "# TYPE fleetsim_operation_duration_seconds histogram",
    ] {
        assert!(body.contains(expected), "{expected} missing from\n{body}");
    }
    assert!(
        !body.contains("quantile="),
        "durations must be buckets, not summaries"
    );
}

#[test]
fn final_report_publishes_bricked_devices() {
    let handle = exporter();
    let recorder = Recorder::new("final-bricked");
    let check = FinalCheck {
        bricked: 3,
        ..clean_check(10)
    };
    build(&recorder, &Slo::default(), &check);
    assert!(
        handle
            .render()
            .contains(r#"fleetsim_bricked_devices{run="final-bricked"} 3"#)
    );
}

#[test]
fn exporter_install_is_idempotent_for_its_address_and_refuses_another() {
    let handle = exporter();

    let again = install_exporter(handle.addr()).unwrap();
    assert_eq!(again.addr(), handle.addr());

    let elsewhere = free_loopback_addr();
    let refused = install_exporter(elsewhere).unwrap_err();
    assert!(matches!(
        refused,
        ObserveError::ExporterAlreadyListening { requested, listening }
            if requested == elsewhere && listening == handle.addr()
    ));
}

/// A plain HTTP/1.1 GET, by hand, so the test needs no HTTP client crate.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
