//! The emulator beside mosquitto, in one run: the same fleet of fleetsim's
//! own MQTT clients, with the same CA and the same device certificates,
//! connects to each broker (mutual TLS) and publishes QoS 1 messages. Both
//! brokers run as their own processes, so their memory per connection is
//! read apart; connections per second and messages per second are compared
//! as ratios, which the machine's load affects alike.
//!
//! The certificates are issued by the standalone emulator through its
//! control plane (CreateCertificateFromCsr, AttachPolicy), as a user of the
//! emulator would get them; mosquitto trusts the emulator's root and serves
//! a certificate that root signed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rumqttc::QoS;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::BenchError;
use super::child::{EmulatorProcess, TempDir};
use super::host::{self, HostInfo};
use crate::control::ControlPlane;
use crate::device::mqtt::{ConnectSettings, Endpoint, Session, SourceAddresses};
use crate::emulator::ca::{CertificateAuthority, pem_encode};
use crate::emulator::persist::StateDir;
use crate::identity::tls::client_config;
use crate::identity::{Credentials, generate_key_and_csr};
use crate::standalone::EmulatorInfo;

/// Connections and publishes in flight at once, from the client side.
const CONCURRENCY: usize = 64;

/// Control-plane calls in flight at once while issuing certificates.
const ISSUE_CONCURRENCY: usize = 16;

/// A policy that lets the benchmark's clients connect and publish anywhere.
const OPEN_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Connect","iot:Publish"],"Resource":"*"}]}"#;

/// What one broker did for the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerResults {
    pub broker: &'static str,
    pub connections_per_second: f64,
    pub messages_per_second: f64,
    pub rss_kib_before: Option<u64>,
    pub rss_kib_connected: Option<u64>,
    pub kib_per_connection: Option<f64>,
    pub failed_connections: u64,
}

/// Both brokers and their ratios (emulator over mosquitto).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub devices: u64,
    pub messages_per_device: u64,
    pub host_before: HostInfo,
    pub host_after: HostInfo,
    pub mosquitto_version: String,
    pub emulator: BrokerResults,
    pub mosquitto: BrokerResults,
    pub connection_rate_ratio: f64,
    pub message_rate_ratio: f64,
    /// Emulator memory per connection over mosquitto's.
    pub memory_ratio: Option<f64>,
}

/// Runs the fleet against a standalone emulator, then against mosquitto.
pub async fn compare(devices: u64, messages: u64) -> Result<Comparison, BenchError> {
    let host_before = HostInfo::now();
    let state = TempDir::new()?;
    let emulator = EmulatorProcess::start(state.path()).await?;
    let info = EmulatorInfo::load(state.path()).map_err(|e| BenchError::Setup(e.to_string()))?;
    let fleet = issue_fleet(&info, devices).await?;
    let emulator_endpoint = Endpoint {
        host: info.mqtt_host.clone(),
        port: info.mqtt_port,
    };
    let on_emulator = drive(
        "emulator",
        &emulator_endpoint,
        &fleet,
        messages,
        emulator.pid(),
    )
    .await;
    emulator.stop().await;
    let mosquitto = Mosquitto::start(state.path()).await?;
    let mosquitto_endpoint = Endpoint {
        host: "localhost".into(),
        port: mosquitto.port,
    };
    let on_mosquitto = drive(
        "mosquitto",
        &mosquitto_endpoint,
        &fleet,
        messages,
        mosquitto.pid,
    )
    .await;
    let version = mosquitto.version.clone();
    mosquitto.stop().await;
    Ok(Comparison::of(
        devices,
        messages,
        host_before,
        version,
        on_emulator,
        on_mosquitto,
    ))
}

impl Comparison {
    fn of(
        devices: u64,
        messages: u64,
        host_before: HostInfo,
        mosquitto_version: String,
        emulator: BrokerResults,
        mosquitto: BrokerResults,
    ) -> Comparison {
        let memory_ratio = match (emulator.kib_per_connection, mosquitto.kib_per_connection) {
            (Some(e), Some(m)) if m > 0.0 => Some(e / m),
            _ => None,
        };
        Comparison {
            devices,
            messages_per_device: messages,
            host_before,
            host_after: HostInfo::now(),
            mosquitto_version,
            connection_rate_ratio: emulator.connections_per_second
                / mosquitto.connections_per_second,
            message_rate_ratio: emulator.messages_per_second / mosquitto.messages_per_second,
            memory_ratio,
            emulator,
            mosquitto,
        }
    }
}

/// One client per device: its client id and TLS configuration.
struct Device {
    client_id: String,
    tls: Arc<rustls::ClientConfig>,
}

/// Issues a certificate per device through the emulator's control plane,
/// each active and allowed to connect and publish.
async fn issue_fleet(info: &EmulatorInfo, devices: u64) -> Result<Vec<Device>, BenchError> {
    let control = ControlPlane::for_endpoint(&info.control_url, &info.region);
    let client = control.client();
    client
        .create_policy()
        .policy_name("fleetsim-bench-open")
        .policy_document(OPEN_POLICY)
        .send()
        .await
        .map_err(|e| BenchError::Setup(format!("CreatePolicy: {e}")))?;
    let root = info
        .root_pem()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let issued = stream::iter(0..devices)
        .map(|i| issue_one(client, &root, i))
        .buffer_unordered(ISSUE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    issued.into_iter().collect()
}

async fn issue_one(
    client: &aws_sdk_iot::Client,
    root_pem: &str,
    index: u64,
) -> Result<Device, BenchError> {
    let client_id = format!("bench-{index:07}");
    let key = generate_key_and_csr(&client_id).map_err(|e| BenchError::Setup(e.to_string()))?;
    let created = client
        .create_certificate_from_csr()
        .certificate_signing_request(key.csr_pem)
        .set_as_active(true)
        .send()
        .await
        .map_err(|e| BenchError::Setup(format!("CreateCertificateFromCsr: {e}")))?;
    let arn = created.certificate_arn().unwrap_or_default();
    client
        .attach_policy()
        .policy_name("fleetsim-bench-open")
        .target(arn)
        .send()
        .await
        .map_err(|e| BenchError::Setup(format!("AttachPolicy: {e}")))?;
    let credentials = Credentials {
        certificate_pem: created.certificate_pem().unwrap_or_default().to_owned(),
        private_key_pem: key.private_key_pem,
    };
    let tls =
        client_config(root_pem, &credentials).map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(Device { client_id, tls })
}

/// Connects every device, reads the broker's memory, publishes, disconnects.
async fn drive(
    broker: &'static str,
    endpoint: &Endpoint,
    fleet: &[Device],
    messages: u64,
    pid: u32,
) -> BrokerResults {
    let settings = ConnectSettings {
        endpoint: endpoint.clone(),
        keep_alive: Duration::from_secs(300),
        step_timeout: Duration::from_secs(60),
        sources: SourceAddresses::new(super::fleet::loopback_sources(fleet.len() as u64)),
    };
    let rss_kib_before = host::rss_kib(pid);
    let started = Instant::now();
    let sessions: Vec<_> = stream::iter(fleet)
        .map(|device| Session::connect(&settings, &device.client_id, Arc::clone(&device.tls)))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let failed_connections = sessions.iter().filter(|s| s.is_err()).count() as u64;
    let mut sessions: Vec<Session> = sessions.into_iter().filter_map(Result::ok).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib_connected = host::rss_kib(pid);
    let messages_per_second = publish_all(&mut sessions, messages).await;
    stream::iter(sessions)
        .for_each_concurrent(CONCURRENCY, Session::disconnect)
        .await;
    let connected = fleet.len() as u64 - failed_connections;
    let kib_per_connection = match (rss_kib_before, rss_kib_connected) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(after.saturating_sub(before) as f64 / connected as f64)
        }
        _ => None,
    };
    BrokerResults {
        broker,
        connections_per_second: connected as f64 / connect_seconds,
        messages_per_second,
        rss_kib_before,
        rss_kib_connected,
        kib_per_connection,
        failed_connections,
    }
}

/// Every session publishes `messages` QoS 1 messages, one at a time, each
/// waiting for its PUBACK; returns acknowledged messages per second.
async fn publish_all(sessions: &mut [Session], messages: u64) -> f64 {
    let started = Instant::now();
    let acknowledged: u64 = stream::iter(sessions.iter_mut().enumerate())
        .map(|(i, session)| async move {
            let topic = format!("fleetsim/bench-{i:07}/telemetry");
            let mut acked = 0;
            for _ in 0..messages {
                if session
                    .publish(&topic, QoS::AtLeastOnce, vec![0u8; 128])
                    .await
                    .is_ok()
                {
                    acked += 1;
                }
            }
            acked
        })
        .buffer_unordered(CONCURRENCY * 4)
        .fold(0, |sum, acked| async move { sum + acked })
        .await;
    acknowledged as f64 / started.elapsed().as_secs_f64()
}

/// A mosquitto broker on a free loopback port, with mutual TLS against the
/// emulator's root.
struct Mosquitto {
    child: Child,
    pid: u32,
    port: u16,
    version: String,
    _files: TempDir,
}

impl Mosquitto {
    async fn start(emulator_state: &Path) -> Result<Mosquitto, BenchError> {
        let files = TempDir::new()?;
        let config = write_config(emulator_state, files.path())?;
        let port = config.1;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::Setup(format!(
                    "cannot start mosquitto (install Debian's `mosquitto`): {e}"
                ))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Setup("mosquitto exited at once".into()))?;
        wait_listening(port).await?;
        Ok(Mosquitto {
            child,
            pid,
            port,
            version: mosquitto_version().await,
            _files: files,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// mosquitto's configuration and the files it names: the emulator's root as
/// its CA, a server certificate for `localhost` signed by that root.
fn write_config(emulator_state: &Path, dir: &Path) -> Result<(PathBuf, u16), BenchError> {
    let state = StateDir::new(emulator_state);
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))
    };
    let (root_pem, root_key) = (read(state.root_certificate())?, read(state.root_key())?);
    let ca = CertificateAuthority::from_pem(&root_pem, &root_key)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let server = ca
        .issue_server(&["localhost"])
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
        Ok::<_, BenchError>(path)
    };
    let cafile = write("ca.pem", &root_pem)?;
    let certfile = write(
        "server.pem",
        &pem_encode("CERTIFICATE", &server.cert_chain[0]),
    )?;
    let keyfile = write(
        "server.key",
        &pem_encode("PRIVATE KEY", server.key.secret_der()),
    )?;
    let port = free_port()?;
    let config = format!(
        "listener {port} 127.0.0.1\n\
         cafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\n\
         allow_anonymous true\nmax_connections -1\npersistence false\n\
         log_type error\n",
        cafile.display(),
        certfile.display(),
        keyfile.display(),
    );
    Ok((write("mosquitto.conf", &config)?, port))
}

/// A loopback port nothing listens on at this moment.
fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(e.to_string()))
}

async fn wait_listening(port: u16) -> Result<(), BenchError> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(BenchError::Setup(format!(
        "mosquitto did not listen on port {port}"
    )))
}

/// `mosquitto -h`'s first line names its version.
async fn mosquitto_version() -> String {
    let output = Command::new("mosquitto").arg("-h").output().await;
    output
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}
