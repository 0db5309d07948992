//! fleetsim's own MQTT client against the emulator: connections start from
//! each configured source address in turn (seen from the emulator's side,
//! as the peer address of each connection it accepts), every connection
//! works end to end, and a quiet connection stays up by pinging within its
//! keep-alive.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleetsim::device::mqtt::{Session, SourceAddresses};
use fleetsim::emulator::EmulatorConfig;
use fleetsim::emulator::broker::KeepAliveClamp;
use fleetsim::provisioning::create_from_csr;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Peer addresses of the broker's `connection` spans, in the order accepted.
#[derive(Clone, Default)]
struct BrokerPeers(Arc<Mutex<Vec<SocketAddr>>>);

impl<S: tracing::Subscriber> Layer<S> for BrokerPeers {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let metadata = attrs.metadata();
        if metadata.name() != "connection" || !metadata.target().contains("broker") {
            return;
        }
        let mut peer = PeerField(None);
        attrs.record(&mut peer);
        if let Some(addr) = peer.0 {
            self.0.lock().unwrap().push(addr);
        }
    }
}

struct PeerField(Option<SocketAddr>);

impl Visit for PeerField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "peer" {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

/// The process-wide subscriber: the broker's tasks run on every worker
/// thread, so a thread-local one would miss them.
fn broker_peers() -> BrokerPeers {
    static PEERS: OnceLock<BrokerPeers> = OnceLock::new();
    PEERS
        .get_or_init(|| {
            let peers = BrokerPeers::default();
            let subscriber = tracing_subscriber::registry().with(peers.clone());
            tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
            peers
        })
        .clone()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// CreateCertificateFromCsr with a payload the service rejects: a QoS 1
/// publish, its PUBACK and a QoS 1 delivery back, without issuing anything.
async fn exchange(session: &mut Session) {
    session
        .subscribe(&[create_from_csr::ACCEPTED, create_from_csr::REJECTED])
        .await
        .expect("subscribed");
    let reply = session
        .request(
            create_from_csr::REQUEST,
            b"{}".to_vec(),
            create_from_csr::ACCEPTED,
            create_from_csr::REJECTED,
        )
        .await
        .expect("a reply");
    assert!(reply.is_err(), "an empty request is rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_start_from_each_source_address_in_turn() {
    let peers = broker_peers();
    let target = support::configured_emulator(Duration::from_secs(3600)).await;
    let mut settings = target.settings();
    settings.sources = SourceAddresses::new(vec![loopback(1), loopback(2), loopback(3)]);
    let tls = fleetsim::identity::tls::client_config(target.emulator.root_pem(), &target.claim())
        .unwrap();

    let mut sessions = Vec::new();
    for k in 0..6 {
        let client_id = format!("provision-source-{k}");
        let mut session = Session::connect(&settings, &client_id, Arc::clone(&tls))
            .await
            .expect("connects from its source address");
        exchange(&mut session).await;
        sessions.push(session);
    }

    let seen = peers.0.lock().unwrap().clone();
    let mut per_source: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for peer in &seen {
        *per_source.entry(peer.ip()).or_default() += 1;
    }
    let expected = BTreeMap::from([(loopback(1), 2), (loopback(2), 2), (loopback(3), 2)]);
    assert_eq!(per_source, expected, "the broker saw {seen:?}");
    for session in sessions {
        session.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_connection_stays_up_by_pinging_within_its_keep_alive() {
    let mut config = EmulatorConfig::default();
    // The broker drops a client silent for 1.5 keep-alives: 1.5 s here.
    config.broker.keep_alive = KeepAliveClamp {
        min: Duration::from_secs(1),
        max: Duration::from_secs(1),
    };
    let target = support::configured(config).await;
    let mut settings = target.settings();
    settings.keep_alive = Duration::from_secs(1);
    let tls = fleetsim::identity::tls::client_config(target.emulator.root_pem(), &target.claim())
        .unwrap();
    let mut session = Session::connect(&settings, "provision-quiet", tls)
        .await
        .expect("connects");

    let heard = session.next_message(Duration::from_secs(4)).await;
    assert_eq!(heard, Ok(None), "still connected after 4 s of silence");
    assert_eq!(session.closed_reason(), None);
    exchange(&mut session).await;
}
