//! Fixtures for the broker tests: an emulator (CA, registry, broker on 127.0.0.1:0), devices
//! with certificates issued at test time, real rumqttc clients and raw TLS clients.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use fleetsim::emulator::broker::{Broker, BrokerConfig, BrokerHandle, KeepAliveClamp};
use fleetsim::emulator::ca::CertificateAuthority;
use fleetsim::emulator::fleet_provisioning::FleetProvisioning;
use fleetsim::emulator::registry::{CertificateStatus, NewCertificate, Registry};
use fleetsim::emulator::tls;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rumqttc::mqttbytes::v4;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport, v5};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";
pub const WAIT: Duration = Duration::from_secs(5);

/// Allows every data-plane action on every resource.
pub const ALLOW_ALL: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
  "Action":["iot:Connect","iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"}]}"#;

pub struct Emulator {
    pub ca: Arc<CertificateAuthority>,
    pub registry: Arc<Registry>,
    pub broker: BrokerHandle,
}

pub struct EmulatorBuilder {
    config: BrokerConfig,
}

impl EmulatorBuilder {
    pub fn keep_alive(mut self, min: Duration, max: Duration) -> Self {
        self.config.keep_alive = KeepAliveClamp { min, max };
        self
    }

    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.config.session_expiry = expiry;
        self
    }

    pub fn start(self) -> Emulator {
        let ca = Arc::new(CertificateAuthority::generate("fleetsim test root").expect("root"));
        let registry = Arc::new(Registry::new(REGION, ACCOUNT));
        registry
            .create_policy("allow-all", ALLOW_ALL)
            .expect("policy");
        let server = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .expect("server cert");
        let tls = tls::server_config(ca.root_der().clone(), server, Arc::clone(&registry))
            .expect("tls config");
        let provisioning = Arc::new(FleetProvisioning::new(
            Arc::clone(&registry),
            Arc::clone(&ca),
            std::time::Duration::from_secs(3600),
        ));
        let broker = Broker::start(self.config, tls, Arc::clone(&registry), provisioning)
            .expect("broker starts");
        Emulator {
            ca,
            registry,
            broker,
        }
    }
}

impl Emulator {
    pub fn builder() -> EmulatorBuilder {
        let config = BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..BrokerConfig::default()
        };
        EmulatorBuilder { config }
    }

    pub fn start() -> Emulator {
        Emulator::builder().start()
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// A certificate issued by our root, registered with `status` and `policy` attached.
    pub fn device(&self, status: CertificateStatus, policy: &str) -> Credentials {
        let credentials = self.unregistered_device();
        let pem = credentials.pem.clone();
        self.registry.insert_certificate(NewCertificate {
            id: credentials.id.clone(),
            pem,
            not_before: std::time::SystemTime::now(),
            not_after: std::time::SystemTime::now() + Duration::from_secs(3600),
            status,
        });
        self.registry
            .attach_policy(policy, &credentials.id)
            .expect("attach policy");
        credentials
    }

    pub fn active_device(&self) -> Credentials {
        self.device(CertificateStatus::Active, "allow-all")
    }

    /// A certificate issued by our root that the registry has never heard of.
    pub fn unregistered_device(&self) -> Credentials {
        Credentials::issued_by(&self.ca, self.ca.root_der().clone())
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub id: String,
    pub pem: String,
    cert: CertificateDer<'static>,
    key_pem: String,
    server_root: CertificateDer<'static>,
}

impl Credentials {
    /// A client certificate from `issuer`, trusting `server_root` for the broker.
    pub fn issued_by(issuer: &CertificateAuthority, server_root: CertificateDer<'static>) -> Self {
        let (issued, key_pem) = issuer
            .issue_client("test device", Duration::from_secs(3600))
            .expect("client cert");
        Credentials {
            id: issued.id,
            pem: issued.pem,
            cert: issued.der,
            key_pem,
            server_root,
        }
    }

    /// The same certificate and key as a fleetsim device holds them.
    pub fn identity(&self) -> fleetsim::identity::Credentials {
        fleetsim::identity::Credentials {
            certificate_pem: self.pem.clone(),
            private_key_pem: self.key_pem.clone(),
        }
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_root.clone()).expect("root");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![self.cert.clone()], key)
            .expect("client auth");
        Arc::new(config)
    }
}

/// A rumqttc client whose event loop runs in a task and reports every incoming packet, then
/// the error that ended it. It never reconnects.
pub struct TestClient {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

impl TestClient {
    pub fn start(addr: SocketAddr, client_id: &str, credentials: &Credentials) -> TestClient {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        let tls = TlsConfiguration::Rustls(credentials.client_config());
        options.set_transport(Transport::tls_with_config(tls));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        TestClient { client, events }
    }

    /// Starts a client and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str, credentials: &Credentials) -> Self {
        let mut client = TestClient::start(addr, client_id, credentials);
        match client.next_packet().await {
            Ok(Packet::ConnAck(ack)) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    /// The next incoming packet, or the error that closed the connection.
    pub async fn next_packet(&mut self) -> Result<Packet, String> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("client event within the wait")
            .unwrap_or_else(|| Err("event loop ended".into()))
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue subscribe");
        loop {
            match self.next_packet().await {
                Ok(Packet::SubAck(ack)) => {
                    let granted = ack.return_codes[0];
                    assert!(matches!(granted, rumqttc::SubscribeReasonCode::Success(_)));
                    return;
                }
                Ok(_) => {}
                Err(error) => panic!("subscribe failed: {error}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, qos: QoS, payload: &[u8]) {
        let payload = payload.to_vec();
        self.client
            .publish(topic, qos, false, payload)
            .await
            .expect("queue publish");
    }

    /// The next PUBLISH received, skipping acknowledgements.
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next_packet().await {
                Ok(Packet::Publish(publish)) => return publish,
                Ok(_) => {}
                Err(error) => panic!("connection closed while waiting for a publish: {error}"),
            }
        }
    }

    /// Waits until the connection is closed, skipping packets; returns the error.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Err(error) = self.next_packet().await {
                return error;
            }
        }
    }

    /// Whether anything at all arrives within `window`.
    pub async fn quiet_for(&mut self, window: Duration) -> bool {
        tokio::time::timeout(window, self.events.recv())
            .await
            .is_err()
    }
}

impl TestClient {
    /// Starts a 3.1.1 client whose options the caller adjusts (clean session, will).
    pub fn start_with(
        addr: SocketAddr,
        client_id: &str,
        credentials: &Credentials,
        adjust: impl FnOnce(&mut MqttOptions),
    ) -> TestClient {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        let tls = TlsConfiguration::Rustls(credentials.client_config());
        options.set_transport(Transport::tls_with_config(tls));
        adjust(&mut options);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });
        TestClient { client, events }
    }

    /// The CONNACK of a client started with [`TestClient::start_with`].
    pub async fn connack(&mut self) -> rumqttc::ConnAck {
        match self.next_packet().await {
            Ok(Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

/// An MQTT 5 rumqttc client, reporting like [`TestClient`].
pub struct V5Client {
    pub client: v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<v5::mqttbytes::v5::Packet, String>>,
}

impl V5Client {
    pub fn start_with(
        addr: SocketAddr,
        client_id: &str,
        credentials: &Credentials,
        adjust: impl FnOnce(&mut v5::MqttOptions),
    ) -> V5Client {
        let mut options = v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        let tls = TlsConfiguration::Rustls(credentials.client_config());
        options.set_transport(Transport::tls_with_config(tls));
        adjust(&mut options);
        let (client, mut event_loop) = v5::AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(v5::Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(v5::Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(format!("{error:?}")));
                        return;
                    }
                }
            }
        });
        V5Client { client, events }
    }

    /// Starts a clean MQTT 5 client and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str, credentials: &Credentials) -> Self {
        let mut client = V5Client::start_with(addr, client_id, credentials, |_| {});
        let ack = client.connack().await;
        assert_eq!(ack.code, v5::mqttbytes::v5::ConnectReturnCode::Success);
        client
    }

    pub async fn connack(&mut self) -> v5::mqttbytes::v5::ConnAck {
        match self.next_packet().await {
            Ok(v5::mqttbytes::v5::Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn next_packet(&mut self) -> Result<v5::mqttbytes::v5::Packet, String> {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("client event within the wait")
            .unwrap_or_else(|| Err("event loop ended".into()))
    }

    /// Subscribes and returns the SUBACK's reason codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: v5::mqttbytes::QoS,
    ) -> Vec<v5::mqttbytes::v5::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue subscribe");
        loop {
            match self.next_packet().await {
                Ok(v5::mqttbytes::v5::Packet::SubAck(ack)) => return ack.return_codes,
                Ok(_) => {}
                Err(error) => panic!("subscribe failed: {error}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, qos: v5::mqttbytes::QoS, payload: &[u8]) {
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .await
            .expect("queue publish");
    }

    /// The next PUBACK's reason code.
    pub async fn next_puback(&mut self) -> v5::mqttbytes::v5::PubAckReason {
        loop {
            match self.next_packet().await {
                Ok(v5::mqttbytes::v5::Packet::PubAck(ack)) => return ack.reason,
                Ok(_) => {}
                Err(error) => panic!("connection closed while waiting for a puback: {error}"),
            }
        }
    }

    pub async fn next_publish(&mut self) -> v5::mqttbytes::v5::Publish {
        loop {
            match self.next_packet().await {
                Ok(v5::mqttbytes::v5::Packet::Publish(publish)) => return publish,
                Ok(_) => {}
                Err(error) => panic!("connection closed while waiting for a publish: {error}"),
            }
        }
    }

    /// How the connection ended, skipping other packets: rumqttc reports a server's
    /// DISCONNECT as `ServerDisconnect { reason_code: .. }`.
    pub async fn closed(&mut self) -> String {
        loop {
            match self.next_packet().await {
                Ok(v5::mqttbytes::v5::Packet::Disconnect(disconnect)) => {
                    return format!("{disconnect:?}");
                }
                Ok(_) => {}
                Err(error) => return error,
            }
        }
    }

    pub async fn quiet_for(&mut self, window: Duration) -> bool {
        tokio::time::timeout(window, self.events.recv())
            .await
            .is_err()
    }
}

/// A TLS connection that speaks raw bytes.
pub async fn raw_tls(addr: SocketAddr, credentials: &Credentials) -> TlsStream<TcpStream> {
    raw_tls_with(addr, credentials.client_config()).await
}

/// [`raw_tls`] with a client configuration of the test's own.
pub async fn raw_tls_with(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let connector = TlsConnector::from(config);
    let name = ServerName::try_from("127.0.0.1").expect("ip server name");
    connector.connect(name, tcp).await.expect("tls handshake")
}

/// A CONNECT packet's bytes.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = keep_alive;
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).expect("encode connect");
    bytes.to_vec()
}

/// The process-wide metrics recorder; counters are shared by every test in this binary,
/// so tests compare values before and after.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("one recorder per test binary")
    })
}

/// The value of counter `name` with exactly the label `key="value"`, zero when absent.
pub fn counter(name: &str, key: &str, value: &str) -> u64 {
    let prefix = format!("{name}{{{key}=\"{value}\"}} ");
    metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("counter value"))
}
