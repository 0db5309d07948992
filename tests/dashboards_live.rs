//! The dashboards against real runs: a small fleet runs with the exporter on
//! loopback, its `/metrics` passes `promtool check metrics`, every metric and
//! label the dashboards name is in its output, and a real Prometheus
//! scraping the run answers the dashboards' queries.
//!
//! The exporter is process-wide, so every test here shares one address.

mod dashboards_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use dashboards_support::{
    Selector, Series, assert_success, dashboards_dir, exposition_series, for_run, panel_queries,
    parse, read_yaml, tool,
};
use fleetsim::observe::metrics::install_exporter;
use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::Scenario;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn metrics_addr() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(free_loopback_addr)
}

/// Twenty devices that provision, publish and rotate about once in a few
/// seconds, with every objective set so the SLO gauges exist. One device's
/// policy denies its telemetry, so refusals and failures are real too.
fn scenario(name: &str, seconds: u32) -> Scenario {
    let yaml = format!(
        r#"
name: {name}
fleet: {{ size: 20, serial_pattern: "dash-{{seq:03}}" }}
arrival: {{ rate: 10/s }}
clock: {{ speedup: 432000 }}
certificates: {{ validity: 30d }}
rotation: {{ check_every: 12h, renew_before: 10d, jitter: 6h }}
telemetry: {{ interval: 500ms, qos: 1 }}
run: {{ duration: {seconds}s, step_timeout: 5s }}
credentials: {{ storage: memory }}
slo:
  connect_p99: 1s
  provisioning_p99: 10s
  max_failure_ratio: 0.5
  min_rotations_per_device: 1
"#
    );
    Scenario::parse(&yaml, Path::new("dash.yaml")).expect("the test scenario is valid")
}

/// The repository's policies, plus a Deny of telemetry for `dash-000`.
fn policies_denying_one_device(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let device = dir.join("device-policy.json");
    let mut policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&device).unwrap()).unwrap();
    policy["Statement"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Effect": "Deny",
            "Action": "iot:Publish",
            "Resource": "arn:aws:iot:{{region}}:{{account}}:topic/fleetsim/fleetsim-dash-000/*"
        }));
    std::fs::write(&device, serde_json::to_string_pretty(&policy).unwrap()).unwrap();
}

async fn run(name: &str, seconds: u32) {
    let policies = tempfile::tempdir().unwrap();
    policies_denying_one_device(policies.path());
    let options = RunOptions {
        metrics: Some(metrics_addr()),
        policies_dir: Some(policies.path().to_owned()),
        ..RunOptions::default()
    };
    let summary = execute(&scenario(name, seconds), &options, CancellationToken::new())
        .await
        .expect("the run starts");
    assert!(
        summary.report.provisioned >= 19,
        "{}",
        summary.report.render_table()
    );
}

/// An HTTP/1.0 GET, so the body is never chunked.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    body.to_owned()
}

// ---- what the dashboards name, checked against a run's output ----

/// Recording rules by name: their expressions and fixed labels.
fn recording_rules() -> Vec<(String, String, Value)> {
    let rules = read_yaml(&dashboards_dir().join("prometheus/fleetsim.rules.yml"));
    let mut all = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["record"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap().to_owned();
            all.push((name, expr, rule["labels"].clone()));
        }
    }
    all
}

/// Labels that Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Each label a metric's series carry, with every value seen; a recording
/// rule's are those of its grouping (or its input's, for a quantile) plus
/// its fixed labels.
fn label_values(metric: &str, series: &Series) -> Vec<(String, BTreeSet<String>)> {
    if !metric.contains(':') {
        let found = series
            .get(metric)
            .unwrap_or_else(|| panic!("{metric} is not in the run's output"));
        let mut labels: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
        for one in found {
            for (label, value) in one {
                labels
                    .entry(label.clone())
                    .or_default()
                    .insert(value.clone());
            }
        }
        return labels.into_iter().collect();
    }
    let rules: Vec<_> = recording_rules()
        .into_iter()
        .filter(|(n, ..)| n == metric)
        .collect();
    assert!(!rules.is_empty(), "{metric} is no recording rule");
    let mut labels: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (_, expr, fixed) in rules {
        let parsed = parse(&expr);
        for selector in &parsed.selectors {
            for (label, values) in label_values(&selector.metric, series) {
                let kept = if parsed.grouping.is_empty() {
                    label != "le"
                } else {
                    parsed.grouping.contains(&label)
                };
                if kept {
                    labels.entry(label).or_default().extend(values);
                }
            }
        }
        for (label, value) in fixed.as_object().into_iter().flatten() {
            labels
                .entry(label.clone())
                .or_default()
                .insert(value.as_str().unwrap().to_owned());
        }
    }
    labels.into_iter().collect()
}

fn check_selector(selector: &Selector, series: &Series, context: &str) -> BTreeSet<String> {
    let labels = label_values(&selector.metric, series);
    for (label, op, value) in &selector.matchers {
        let known = labels.iter().find(|(l, _)| l == label);
        let (_, values) =
            known.unwrap_or_else(|| panic!("{context}: {} has no label {label}", selector.metric));
        if op == "=" {
            assert!(
                values.contains(value),
                "{context}: no {}{{{label}=\"{value}\"}}",
                selector.metric
            );
        }
    }
    labels.into_iter().map(|(label, _)| label).collect()
}

fn check_dashboard_queries(series: &Series, run: &str) {
    for query in panel_queries() {
        let context = format!("{} / {}", query.dashboard, query.panel);
        let parsed = parse(&for_run(&query.expr, run));
        let mut available: BTreeSet<String> = TARGET_LABELS.map(String::from).into();
        for selector in &parsed.selectors {
            available.extend(check_selector(selector, series, &context));
        }
        for label in &parsed.grouping {
            assert!(
                available.contains(label),
                "{context}: groups by {label}, which no series has"
            );
        }
    }
}

/// The series of one run, plus those without a run label (the emulator's).
fn of_run(series: Series, run: &str) -> Series {
    series
        .into_iter()
        .map(|(metric, all)| {
            let kept: Vec<_> = all
                .into_iter()
                .filter(|labels| labels.get("run").is_none_or(|r| r == run))
                .collect();
            (metric, kept)
        })
        .filter(|(_, kept)| !kept.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_passes_promtool_check_metrics_and_has_every_series_the_dashboards_query() {
    let name = "dash-scrape";
    run(name, 7).await;

    let text = http_get(metrics_addr(), "/metrics").await;

    let checked = tool("promtool", &["check", "metrics"], Some(&text));
    assert_success(&checked, "promtool check metrics");
    assert!(
        checked.stdout.is_empty() && checked.stderr.is_empty(),
        "no lint: {checked:?}"
    );
    check_dashboard_queries(&of_run(exposition_series(&text), name), name);
    for api in [
        "register_thing",
        "create_certificate_from_csr",
        "CreatePolicy",
    ] {
        let series = format!("fleetsim_emulator_request_duration_seconds_count{{api=\"{api}\"}}");
        assert!(text.contains(&series), "the emulator times {api}");
    }
}

// ---- a real Prometheus ----

/// A `prometheus` server on loopback with its own storage, stopped on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scrapes `target` and evaluates the shipped rules every second.
fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = dashboards_dir().join("prometheus/fleetsim.rules.yml");
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: [\"{}\"]\n\
         scrape_configs:\n  - job_name: fleetsim\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
        rules.display()
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let addr = free_loopback_addr();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`prometheus` is needed (Debian package `prometheus`; .ci/run installs it): {e}")
        });
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

async fn status_of(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.lines().next().map(str::to_owned)
}

async fn wait_ready(prometheus: &mut Prometheus) {
    for _ in 0..100 {
        if let Some(exited) = prometheus.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(prometheus._dir.path().join("prometheus.log"));
            panic!("prometheus exited ({exited}): {log:?}");
        }
        if status_of(prometheus.addr, "/-/ready")
            .await
            .is_some_and(|s| s.contains(" 200"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("prometheus not ready after 20 s");
}

async fn wait_target_up(prometheus: &Prometheus) {
    for _ in 0..100 {
        if !query(prometheus, r#"up{job="fleetsim"} == 1"#)
            .await
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("prometheus never scraped the exporter");
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query; a query Prometheus refuses fails the test.
async fn query(prometheus: &Prometheus, expr: &str) -> Vec<Value> {
    let path = format!("/api/v1/query?query={}", percent_encode(expr));
    let body = http_get(prometheus.addr, &path).await;
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"].as_array().unwrap().clone()
}

fn single_value(result: &[Value], expr: &str) -> f64 {
    assert!(!result.is_empty(), "{expr} answered nothing");
    result[0]["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scraping_a_run_answers_the_dashboard_queries() {
    let name = "dash-prom";
    // Prometheus applies new targets a few seconds after it starts: serve
    // the endpoint first and start the run once the target is up.
    install_exporter(metrics_addr()).expect("the exporter installs");
    let mut prometheus = start_prometheus(metrics_addr());
    wait_ready(&mut prometheus).await;
    wait_target_up(&prometheus).await;

    run(name, 8).await;
    // Two more scrapes and rule evaluations see the run's final counts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rate = format!(r#"fleetsim:flow_successes:rate1m{{run="{name}", op="provision"}}"#);
    let provisioned_per_second = single_value(&query(&prometheus, &rate).await, &rate);
    assert!(
        provisioned_per_second > 0.0,
        "{rate} = {provisioned_per_second}"
    );
    let p99 = format!(
        r#"fleetsim:operation_duration_seconds:quantile1m{{run="{name}", op="connect", quantile="0.99"}}"#
    );
    let connect_p99 = single_value(&query(&prometheus, &p99).await, &p99);
    assert!(
        connect_p99 > 0.0 && connect_p99 <= 30.0,
        "{p99} = {connect_p99}"
    );
    let raw = format!(
        r#"histogram_quantile(0.99, sum by (le) (rate(fleetsim_flow_duration_seconds_bucket{{run="{name}", op="provision"}}[1m])))"#
    );
    let provision_p99 = single_value(&query(&prometheus, &raw).await, &raw);
    assert!(
        provision_p99 > 0.0 && provision_p99.is_finite(),
        "{raw} = {provision_p99}"
    );

    let mut answered = 0;
    for panel in panel_queries() {
        let expr = for_run(&panel.expr, name);
        answered += usize::from(!query(&prometheus, &expr).await.is_empty());
    }
    assert!(
        answered * 10 >= panel_queries().len() * 9,
        "most panels show data: {answered}"
    );
}
