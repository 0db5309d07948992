//! Throughput of the in-process emulator: mutual-TLS MQTT handshakes per
//! second and Fleet Provisioning requests per second (CreateCertificateFromCsr
//! then RegisterThing, and CreateKeysAndCertificate from a warm RSA key pool
//! then RegisterThing).
//!
//! A benchmark, not a test: `cargo bench --bench provisioning` prints the
//! numbers and writes them as JSON to `target/bench/provisioning.json`.

use std::time::Duration;

use fleetsim::control::{ControlPlane, SetupNames, SetupSpec};
use fleetsim::device::mqtt::{ConnectSettings, Endpoint, Session};
use fleetsim::emulator::{self, Emulator, EmulatorConfig};
use fleetsim::identity::tls::client_config;
use fleetsim::identity::{Credentials, generate_key_and_csr};
use fleetsim::provisioning::{create_from_csr, create_keys, register_thing_topic};
use tokio::time::Instant;

const TEMPLATE: &str = "fleetsim-fleet";
const WORKERS: usize = 8;
const HANDSHAKES_PER_WORKER: usize = 25;
const REQUESTS_PER_WORKER: usize = 25;
const KEY_POOL: usize = 64;

struct Bench {
    emulator: Emulator,
    claim: Credentials,
}

#[tokio::main]
async fn main() {
    let bench = start().await;
    let handshakes = handshakes_per_second(&bench).await;
    let csr = provisioning_per_second(&bench, Flow::Csr).await;
    wait_for_pool(&bench.emulator).await;
    let keys = provisioning_per_second(&bench, Flow::CreateKeys).await;
    let results = serde_json::json!({
        "handshakes_per_second": handshakes,
        "csr_provisionings_per_second": csr,
        "create_keys_provisionings_per_second": keys,
        "workers": WORKERS,
        "key_pool": KEY_POOL,
    });
    let text = serde_json::to_string_pretty(&results).expect("plain numbers");
    println!("{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench is writable");
    std::fs::write(dir.join("provisioning.json"), text).expect("results are written");
}

async fn start() -> Bench {
    let emulator = Emulator::start(EmulatorConfig {
        key_pool_size: KEY_POOL,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts");
    let control = ControlPlane::for_endpoint(&emulator.control_url(), emulator::REGION);
    let names = SetupNames {
        prefix: "fleetsim".to_owned(),
        account_id: emulator::ACCOUNT_ID.to_owned(),
        region: emulator::REGION.to_owned(),
        claim_policy: "fleetsim-claim".to_owned(),
        device_policy: "fleetsim-device".to_owned(),
        template: TEMPLATE.to_owned(),
        provisioning_role_arn: "arn:aws:iam::123456789012:role/fleetsim-provisioning".to_owned(),
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let spec = SetupSpec::load(names, &dir).expect("repository policies");
    let setup = control.setup(&spec).await.expect("setup");
    let claim = Credentials {
        certificate_pem: setup.claim_certificate_pem,
        private_key_pem: setup.claim_private_key_pem,
    };
    Bench { emulator, claim }
}

async fn connect(bench: &Bench, client_id: &str) -> Session {
    let settings = ConnectSettings {
        endpoint: Endpoint {
            host: "localhost".to_owned(),
            port: bench.emulator.mqtt_addr().port(),
        },
        keep_alive: Duration::from_secs(60),
        step_timeout: Duration::from_secs(30),
        sources: Default::default(),
    };
    let tls = client_config(bench.emulator.root_pem(), &bench.claim).expect("claim PEM");
    Session::connect(&settings, client_id, tls)
        .await
        .expect("claim connects")
}

async fn handshakes_per_second(bench: &Bench) -> f64 {
    let started = Instant::now();
    let workers = (0..WORKERS).map(|w| async move {
        for i in 0..HANDSHAKES_PER_WORKER {
            connect(bench, &format!("bench-{w}-{i}"))
                .await
                .disconnect()
                .await;
        }
    });
    futures_util::future::join_all(workers).await;
    rate(WORKERS * HANDSHAKES_PER_WORKER, started)
}

#[derive(Clone, Copy)]
enum Flow {
    Csr,
    CreateKeys,
}

/// Whole provisionings (certificate + RegisterThing) per second.
async fn provisioning_per_second(bench: &Bench, flow: Flow) -> f64 {
    let started = Instant::now();
    let workers = (0..WORKERS).map(|w| async move {
        let mut session = connect(bench, &format!("provision-bench-{w}")).await;
        let (request, accepted, rejected) = match flow {
            Flow::Csr => (
                create_from_csr::REQUEST,
                create_from_csr::ACCEPTED,
                create_from_csr::REJECTED,
            ),
            Flow::CreateKeys => (
                create_keys::REQUEST,
                create_keys::ACCEPTED,
                create_keys::REJECTED,
            ),
        };
        let register = register_thing_topic(TEMPLATE);
        let filters = vec![
            accepted.to_owned(),
            rejected.to_owned(),
            format!("{register}/accepted"),
            format!("{register}/rejected"),
        ];
        session.subscribe(&filters).await.expect("subscribed");
        for i in 0..REQUESTS_PER_WORKER {
            let serial = format!("bench-{w}-{i}");
            let payload = match flow {
                Flow::Csr => {
                    let csr = generate_key_and_csr(&serial).expect("key").csr_pem;
                    serde_json::to_vec(&serde_json::json!({ "certificateSigningRequest": csr }))
                }
                Flow::CreateKeys => Ok(b"{}".to_vec()),
            }
            .expect("json");
            let reply = session.request(request, payload, accepted, rejected).await;
            let body = reply.expect("answered").expect("accepted");
            let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let register_request = serde_json::json!({
                "certificateOwnershipToken": body["certificateOwnershipToken"],
                "parameters": { "SerialNumber": serial },
            });
            let payload = serde_json::to_vec(&register_request).expect("json");
            let accepted = format!("{register}/accepted");
            let rejected = format!("{register}/rejected");
            let reply = session
                .request(&register, payload, &accepted, &rejected)
                .await;
            reply.expect("answered").expect("registered");
        }
        session.disconnect().await;
    });
    futures_util::future::join_all(workers).await;
    rate(WORKERS * REQUESTS_PER_WORKER, started)
}

async fn wait_for_pool(emulator: &Emulator) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while emulator.provisioning().key_pool().ready() < KEY_POOL && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rate(count: usize, started: Instant) -> f64 {
    let per_second = count as f64 / started.elapsed().as_secs_f64();
    (per_second * 10.0).round() / 10.0
}
