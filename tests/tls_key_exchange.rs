//! The scenario's `tls.key_exchange` through a whole run on real sockets: a
//! small fleet set to `secp256r1` provisions, rotates and is proved at the
//! end, and the emulator's side, scraped from the run's `/metrics` as
//! Prometheus would, negotiated that group on every handshake it completed
//! and no other; the report names it.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use fleetsim::run::{RunOptions, execute};
use fleetsim::scenario::{KeyExchange, Scenario};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const DEVICES: u64 = 5;

/// Five devices; 30 simulated days last 6 real seconds and rotation starts
/// 2 s before expiry, so each device rotates once in a 7 s run.
fn scenario() -> Scenario {
    let yaml = format!(
        r#"
name: kx-secp256r1
fleet: {{ size: {DEVICES}, serial_pattern: "kx-{{seq:02}}" }}
arrival: {{ rate: 10/s }}
tls:
  key_exchange: secp256r1
clock: {{ speedup: 432000 }}
certificates: {{ validity: 30d }}
rotation: {{ check_every: 12h, renew_before: 10d }}
telemetry: {{ interval: 1s, qos: 1 }}
run: {{ duration: 7s, step_timeout: 5s }}
credentials: {{ storage: memory }}
slo: {{ max_failure_ratio: 0, min_rotations_per_device: 1 }}
"#
    );
    Scenario::parse(&yaml, Path::new("kx.yaml")).expect("the test scenario is valid")
}

fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A plain HTTP/1.1 GET of `/metrics`, by hand: the test needs no HTTP client crate.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Every sample of `metric`, as (labels, value).
fn samples<'t>(text: &'t str, metric: &str) -> Vec<(&'t str, f64)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let (labels, value) = rest.split_once("} ").expect("a labelled sample");
            (labels, value.trim().parse().expect("a sample value"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handshake_of_a_secp256r1_fleet_negotiates_secp256r1() {
    let scenario = scenario();
    assert_eq!(scenario.tls.key_exchange, KeyExchange::Secp256r1);
    let metrics = free_loopback_addr();
    let options = RunOptions {
        metrics: Some(metrics),
        ..RunOptions::default()
    };

    let summary = execute(&scenario, &options, CancellationToken::new())
        .await
        .expect("the run starts");

    let report = &summary.report;
    println!("{}", report.render_table());
    assert!(report.passed(), "every device provisioned and rotated");
    assert_eq!(report.provisioned, DEVICES);
    assert_eq!(report.key_exchange.as_deref(), Some("secp256r1"));
    assert!(
        report
            .to_json_pretty()
            .unwrap()
            .contains(r#""key_exchange": "secp256r1""#)
    );
    assert!(
        report.render_table().contains("secp256r1 key exchange"),
        "the table names the key exchange"
    );

    let text = scrape(metrics).await;
    let handshakes = samples(&text, "fleetsim_emulator_tls_handshakes_total");
    assert_eq!(
        handshakes
            .iter()
            .map(|(labels, _)| *labels)
            .collect::<Vec<_>>(),
        [r#"group="secp256r1""#],
        "no handshake negotiated another group:\n{handshakes:?}"
    );
    let accepted = samples(&text, "fleetsim_emulator_connects_total")
        .into_iter()
        .find(|(labels, _)| *labels == r#"outcome="accepted""#)
        .map_or(0.0, |(_, value)| value);
    // Each device connected with the claim, as itself, with its new
    // certificate, and once more in the end-of-run proof.
    let least = 4.0 * DEVICES as f64;
    assert!(
        accepted >= least,
        "{accepted} accepted connects, expected at least {least}"
    );
    assert!(
        handshakes[0].1 >= accepted,
        "{} handshakes for {accepted} accepted connects",
        handshakes[0].1
    );
}
