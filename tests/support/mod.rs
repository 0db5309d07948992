//! Fixtures shared by the integration tests: an emulator set up through the
//! control plane exactly as a run sets it up, and devices built on it.

#![allow(dead_code)] // each test file uses its own subset

use std::time::Duration;

use fleetsim::control::{ControlPlane, SetupNames, SetupOutput, SetupSpec};
use fleetsim::device::mqtt::{ConnectSettings, Endpoint, Session, SessionError};
use fleetsim::emulator::{self, Emulator, EmulatorConfig};
use fleetsim::identity::Credentials;
use fleetsim::identity::tls::client_config;

pub const TEMPLATE: &str = "fleetsim-fleet";

/// Scenario lines that compress a month into seconds: one simulated day
/// lasts 0.2 real seconds, so certificates of 30 days last 6 s and are
/// renewed from 10 days (2 s) before they expire, checked every 12 h.
pub const MONTH_IN_SIX_SECONDS: &str = "\
clock:
  speedup: 432000
certificates:
  validity: 30d
rotation:
  check_every: 12h
  renew_before: 10d
";

/// A running emulator configured with the repository's policies and template.
pub struct Target {
    pub emulator: Emulator,
    pub control: ControlPlane,
    pub setup: SetupOutput,
}

pub async fn configured_emulator(certificate_validity: Duration) -> Target {
    configured_emulator_with(EmulatorConfig {
        certificate_validity,
        ..EmulatorConfig::default()
    })
    .await
}

/// An emulator started with `config`, then set up like a run sets it up.
pub async fn configured_emulator_with(config: EmulatorConfig) -> Target {
    let emulator = Emulator::start(config)
        .await
        .expect("emulator starts on loopback");
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
    let spec =
        SetupSpec::load(names, std::path::Path::new("policies")).expect("repository policies load");
    let setup = control
        .setup(&spec)
        .await
        .expect("setup through the control plane");
    Target {
        emulator,
        control,
        setup,
    }
}

impl Target {
    pub fn settings(&self) -> ConnectSettings {
        ConnectSettings {
            endpoint: Endpoint {
                host: "localhost".to_owned(),
                port: self.emulator.mqtt_addr().port(),
            },
            keep_alive: Duration::from_secs(60),
            step_timeout: Duration::from_secs(5),
            sources: Default::default(),
        }
    }

    pub fn claim(&self) -> Credentials {
        Credentials {
            certificate_pem: self.setup.claim_certificate_pem.clone(),
            private_key_pem: self.setup.claim_private_key_pem.clone(),
        }
    }

    pub async fn connect(
        &self,
        client_id: &str,
        credentials: &Credentials,
    ) -> Result<Session, SessionError> {
        let tls = client_config(self.emulator.root_pem(), credentials)
            .expect("test credentials are valid PEM");
        Session::connect(&self.settings(), client_id, tls).await
    }

    pub async fn connect_claim(&self, client_id: &str) -> Session {
        self.connect(client_id, &self.claim())
            .await
            .expect("claim certificate connects")
    }
}

/// An emulator started with `config` and set up like `configured_emulator`.
pub async fn configured(config: EmulatorConfig) -> Target {
    configured_emulator_with(config).await
}
// ---- Fleet Provisioning exchanges ----

/// The accepted and rejected reply topics of a request topic.
pub fn replies(topic: &str) -> [String; 2] {
    [format!("{topic}/accepted"), format!("{topic}/rejected")]
}

/// Publishes raw `payload` on `topic`: `Ok` the accepted body, `Err` the rejection.
pub async fn call(
    session: &mut Session,
    topic: &str,
    payload: Vec<u8>,
) -> Result<Vec<u8>, Vec<u8>> {
    let [accepted, rejected] = replies(topic);
    session
        .request(topic, payload, &accepted, &rejected)
        .await
        .expect("the service answers on the same connection")
        .map(|body| body.to_vec())
        .map_err(|body| body.to_vec())
}

/// A reply body in `format`.
pub fn decode<T: serde::de::DeserializeOwned>(
    format: fleetsim::provisioning::PayloadFormat,
    bytes: &[u8],
) -> T {
    fleetsim::emulator::fleet_provisioning::format::decode(format, bytes).expect("decodable reply")
}

pub mod standalone;

/// Watches a run's recorder (sent through `RunOptions::recorder_tap`) and,
/// once the returned token is cancelled, answers the most devices it saw
/// connected at once (online or rotating).
pub fn watch_peak_connected(
    mut tapped: tokio::sync::mpsc::UnboundedReceiver<std::sync::Arc<fleetsim::observe::Recorder>>,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<u64>,
) {
    use fleetsim::observe::DeviceState;
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let recorder = tapped.recv().await.expect("the run taps its recorder");
            let mut peak = 0;
            loop {
                let snapshot = recorder.snapshot();
                let connected =
                    snapshot.devices(DeviceState::Online) + snapshot.devices(DeviceState::Rotating);
                peak = peak.max(connected);
                tokio::select! {
                    _ = stop.cancelled() => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    });
    (stop, watcher)
}
