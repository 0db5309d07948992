//! The end-of-run proofs on real sockets: a certificate the broker accepts
//! is proved working, a revoked one refused, and a broker that never
//! answers or is not there proves nothing either way, with the reason.

mod broker_support;

use std::time::{Duration, Instant};

use broker_support::*;
use fleetsim::device::mqtt::{ConnectSettings, Endpoint};
use fleetsim::device::{Proof, probe};
use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::tls::{KeyExchange, TlsSettings};
use fleetsim::observe::FailureReason;

fn settings(port: u16) -> ConnectSettings {
    ConnectSettings {
        endpoint: Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
        },
        keep_alive: Duration::from_secs(60),
        step_timeout: Duration::from_millis(300),
        sources: Default::default(),
    }
}

fn tls(emulator: &Emulator) -> TlsSettings {
    TlsSettings {
        root_pem: emulator.ca.root_pem().to_owned(),
        key_exchange: KeyExchange::default(),
    }
}

#[tokio::test]
async fn an_active_certificate_is_proved_working_and_a_revoked_one_refused() {
    let emulator = Emulator::start();
    let (active, revoked) = (emulator.active_device(), emulator.active_device());
    emulator
        .registry
        .set_certificate_status(&revoked.id, CertificateStatus::Revoked)
        .expect("revoked");
    let at = settings(emulator.addr().port());

    let proof = probe(&at, &tls(&emulator), "proof-1", &active.identity()).await;
    assert_eq!(proof, Proof::Works);
    let proof = probe(&at, &tls(&emulator), "proof-2", &revoked.identity()).await;
    assert_eq!(proof, Proof::Refused);
}

#[tokio::test]
async fn a_broker_that_never_answers_proves_nothing_and_says_it_timed_out() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    // Accepts connections into its backlog and never reads them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = settings(silent.local_addr().unwrap().port());

    let started = Instant::now();
    let proof = probe(&at, &tls(&emulator), "proof-3", &device.identity()).await;

    assert_eq!(proof, Proof::Inconclusive(FailureReason::Timeout));
    assert!(
        started.elapsed() >= 3 * Duration::from_millis(300),
        "every attempt ran to its deadline"
    );
}

#[tokio::test]
async fn a_broker_that_is_not_there_proves_nothing_and_says_so() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };

    let proof = probe(
        &settings(port),
        &tls(&emulator),
        "proof-4",
        &device.identity(),
    )
    .await;

    assert_eq!(proof, Proof::Inconclusive(FailureReason::Connection));
}
