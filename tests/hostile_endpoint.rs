//! A device aimed at the wrong endpoint, with fleetsim's own MQTT client over real sockets
//! on 127.0.0.1: nothing listening, a server that does not speak TLS, a server that never
//! answers, and a TLS server whose certificate is for another name. Each is a failure with
//! its bounded reason and a detail that names the endpoint; and `fleetsim run` against a
//! standalone emulator that is down exits 2 naming where it tried.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fleetsim::device::mqtt::{ConnectSettings, Endpoint, Session, SessionError};
use fleetsim::emulator::ca::CertificateAuthority;
use fleetsim::identity::Credentials;
use fleetsim::observe::FailureReason;
use support::standalone::StandaloneProcess;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A root and a client identity it issued; the servers below present certificates of the
/// same root, so that only the property under test is wrong.
struct Identities {
    ca: CertificateAuthority,
    client: Credentials,
}

impl Identities {
    fn new() -> Identities {
        let ca = CertificateAuthority::generate("endpoint test root").expect("root");
        let (issued, key) = ca
            .issue_client("device", Duration::from_secs(3600))
            .expect("client");
        let client = Credentials {
            certificate_pem: issued.pem,
            private_key_pem: key,
        };
        Identities { ca, client }
    }

    async fn connect(&self, port: u16, step_timeout: Duration) -> SessionError {
        let tls = fleetsim::identity::tls::client_config(self.ca.root_pem(), &self.client)
            .expect("tls config");
        let settings = ConnectSettings {
            endpoint: Endpoint {
                host: "localhost".to_owned(),
                port,
            },
            keep_alive: Duration::from_secs(60),
            step_timeout,
            sources: Default::default(),
        };
        Session::connect(&settings, "device-1", tls)
            .await
            .expect_err("nothing to connect to")
    }
}

const STEP: Duration = Duration::from_secs(10);

async fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

#[tokio::test]
async fn an_endpoint_with_nothing_listening_is_a_connection_failure_naming_it() {
    let identities = Identities::new();
    let (listener, port) = listener().await;
    drop(listener);

    let error = identities.connect(port, STEP).await;

    assert_eq!(error.reason, FailureReason::Connection);
    assert_eq!(
        error.detail,
        format!("cannot connect to 127.0.0.1:{port}: Connection refused (os error 111)")
    );
}

#[tokio::test]
async fn an_endpoint_that_does_not_speak_tls_is_a_tls_refusal_naming_it() {
    let identities = Identities::new();
    let (listener, port) = listener().await;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });

    let error = identities.connect(port, STEP).await;

    assert_eq!(error.reason, FailureReason::TlsRefused);
    let prefix = format!("TLS handshake with localhost:{port}: ");
    assert!(error.detail.starts_with(&prefix), "{error}");
    assert!(error.detail.contains("corrupt message"), "{error}");
}

#[tokio::test]
async fn an_endpoint_that_never_answers_times_out_naming_it() {
    let identities = Identities::new();
    let (listener, port) = listener().await;
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            open.push(tcp);
        }
    });

    let error = identities.connect(port, Duration::from_millis(500)).await;

    assert_eq!(error.reason, FailureReason::Timeout);
    assert_eq!(
        error.detail,
        format!("no TLS handshake with localhost:{port} before the step deadline")
    );
    held.abort();
}

#[tokio::test]
async fn an_endpoint_with_a_certificate_for_another_name_is_refused_naming_both() {
    let identities = Identities::new();
    let server = identities
        .ca
        .issue_server(&["elsewhere.example"])
        .expect("server cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(server.cert_chain, server.key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, port) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });

    let error = identities.connect(port, STEP).await;

    assert_eq!(error.reason, FailureReason::TlsRefused);
    let prefix = format!("TLS handshake with localhost:{port}: invalid peer certificate: ");
    assert!(error.detail.starts_with(&prefix), "{error}");
    let rest = &error.detail[prefix.len()..];
    assert_eq!(
        rest,
        "certificate not valid for name \"localhost\"; certificate is only valid for DnsName(\"elsewhere.example\")"
    );
}

#[test]
fn a_run_against_a_standalone_emulator_that_is_down_exits_naming_its_endpoint() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let emulator = StandaloneProcess::start(&state, "1h");
    let mqtt = (emulator.info.mqtt_host.clone(), emulator.info.mqtt_port);
    emulator.crash();
    let scenario = dir.path().join("down.yaml");
    let text = format!(
        "name: down\nfleet:\n  size: 2\narrival:\n  rate: 10/s\nrun:\n  duration: 3s\n\
         credentials:\n  dir: {}\n",
        dir.path().join("certs").display()
    );
    std::fs::write(&scenario, text).expect("scenario");

    let out = Command::new(env!("CARGO_BIN_EXE_fleetsim"))
        .arg("run")
        .arg(&scenario)
        .args(["--no-metrics", "--emulator"])
        .arg(&state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "does not accept MQTT connections at {}:{}: Connection refused (os error 111)",
        mqtt.0, mqtt.1
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
}
