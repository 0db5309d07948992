//! The emulator's MQTT broker over mutual TLS, MQTT 3.1.1 and MQTT 5 on one listener, with
//! IoT Core's rules: certificates checked against the registry at every handshake, policies
//! evaluated on connect, publish, subscribe and every delivery, AWS's limits, client-id
//! takeover, persistent sessions, retained messages, Last Will, and Fleet Provisioning
//! replies delivered only to the requesting connection.
//!
//! Each connection is one task; shared state is the [`router::Router`] tables, the parked
//! persistent sessions and the retained messages, all in memory. A broker-level task closes
//! every connection of a certificate the registry announces as deactivated; another expires
//! parked sessions. Lifecycle events are published on `$aws/events/presence/...`
//! ([`lifecycle`]). Not modelled yet: AWS's rate limits, the 10 msg/s replay rate of queued
//! messages, shared subscriptions.

mod codec;
mod connection;
mod lifecycle;
mod metric;
mod packet;
mod parked;
mod retained;
mod router;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use codec::decode_client_stream;
pub use session::KeepAliveClamp;

use super::fleet_provisioning::FleetProvisioning;
use super::registry::{CertificateEvent, CertificateStatus, Registry};
use crate::lanes::Lanes;
use parked::ParkedSessions;
use retained::RetainedMessages;
use router::{Eviction, Router};

/// AWS's payload limit, 128 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// Room for a PUBLISH's variable header around a full payload: topic length, a topic of AWS's
/// maximum size and the packet id.
const PUBLISH_HEADER_BYTES: usize = 2 + super::topic::MAX_TOPIC_BYTES + 2;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub bind: SocketAddr,
    /// Time from TCP accept to a complete CONNECT, TLS handshake included.
    pub connect_timeout: Duration,
    /// Largest remaining length of any packet, either direction.
    pub max_packet_size: usize,
    /// Bounds applied to the keep-alive a client asks for; AWS's are 30 s to 1200 s.
    pub keep_alive: KeepAliveClamp,
    pub max_filters_per_subscribe: usize,
    pub max_subscriptions_per_connection: usize,
    /// Outbound QoS 1 messages awaiting PUBACK before delivery to that client pauses.
    pub max_inflight: usize,
    /// Messages queued for one connection (or one offline persistent session) before
    /// further ones are dropped.
    pub outbound_queue: usize,
    /// The longest a persistent session outlives its connection (AWS: 1 h by default); an
    /// MQTT 5 client may ask for less.
    pub session_expiry: Duration,
    /// Topic aliases an MQTT 5 client may use (AWS: 8).
    pub topic_alias_maximum: u16,
    /// How long after a certificate leaves ACTIVE its live connections are
    /// closed (AWS: "within a few minutes"; default immediately).
    pub deactivation_delay: Duration,
    /// Descriptor lanes that accept connections beside the caller's runtime,
    /// each on a listener of its own on the same port, so that the server
    /// ends of a fleet larger than one descriptor table allows are spread
    /// over the lanes' tables.
    pub lanes: Option<Lanes>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8883)),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: MAX_PAYLOAD_BYTES + PUBLISH_HEADER_BYTES,
            keep_alive: KeepAliveClamp::default(),
            max_filters_per_subscribe: 8,
            max_subscriptions_per_connection: 50,
            max_inflight: 100,
            outbound_queue: 1024,
            session_expiry: Duration::from_secs(3600),
            topic_alias_maximum: 8,
            deactivation_delay: Duration::ZERO,
            lanes: None,
        }
    }
}

/// What every connection task shares.
struct Shared {
    config: BrokerConfig,
    acceptor: TlsAcceptor,
    registry: Arc<Registry>,
    provisioning: Arc<FleetProvisioning>,
    router: Router,
    parked: ParkedSessions,
    retained: RetainedMessages,
    shutdown: CancellationToken,
    next_id: AtomicU64,
}

impl Shared {
    fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Retains (if asked) and routes an accepted publish, whatever its protocol version.
    fn publish(&self, topic: &str, payload: &Bytes, qos: QoS, retain: bool) {
        if retain {
            self.retained.store(topic, payload, qos);
        }
        let routed = self.router.route(topic, payload, qos);
        metric::dropped(routed.dropped);
    }
}

pub struct Broker;

impl Broker {
    /// Binds the listener and starts accepting, on the calling runtime and on
    /// every descriptor lane configured; must be called inside a tokio runtime.
    pub fn start(
        config: BrokerConfig,
        tls: Arc<ServerConfig>,
        registry: Arc<Registry>,
        provisioning: Arc<FleetProvisioning>,
    ) -> std::io::Result<BrokerHandle> {
        let shares_port = config.lanes.is_some();
        let listener = listen(config.bind, shares_port)?;
        let local_addr = listener.local_addr()?;
        let events = registry.subscribe_events();
        let shared = Arc::new(Shared {
            config,
            acceptor: TlsAcceptor::from(tls),
            registry,
            provisioning,
            router: Router::default(),
            parked: ParkedSessions::default(),
            retained: RetainedMessages::default(),
            shutdown: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        });
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(listener, Arc::clone(&shared), tracker.clone()));
        if let Some(lanes) = &shared.config.lanes
            && let Err(error) = accept_on_lanes(lanes, local_addr, &shared, &tracker)
        {
            shared.shutdown.cancel();
            tracker.close();
            return Err(error);
        }
        tracker.spawn(close_deactivated(events, Arc::clone(&shared)));
        tracker.spawn(expire_sessions(Arc::clone(&shared)));
        debug!(%local_addr, "broker listening");
        Ok(BrokerHandle {
            local_addr,
            shared,
            tracker,
        })
    }
}

/// Connections the kernel completes and queues before the broker accepts them. The default
/// of 128 makes a reconnect storm's surplus SYNs wait out the client's retransmit timer
/// (1 s, then 3 s, then 7 s); the kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds the listener with a backlog that absorbs a fleet reconnecting at once.
/// Listeners that share a port (one per descriptor lane) each get a share of
/// the incoming connections, by the kernel's hash of their addresses; only
/// then is the port shared, so that a second broker on a taken port still
/// fails to start.
fn listen(bind: SocketAddr, shares_port: bool) -> std::io::Result<TcpListener> {
    let socket = if bind.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shares_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(bind)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// How long a lane may take to bind its listener.
const LANE_LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts an accept loop on every lane, each on its own listener on the
/// broker's port, bound from the lane's thread so that the listener and the
/// connections it accepts live in that lane's descriptor table. Returns once
/// every lane listens.
fn accept_on_lanes(
    lanes: &Lanes,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
) -> std::io::Result<()> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    for lane in lanes.handles() {
        let (shared, tracker, bound) = (Arc::clone(shared), tracker.clone(), bound_tx.clone());
        lane.spawn(tracker.clone().track_future(async move {
            match listen(addr, true) {
                Ok(listener) => {
                    let _ = bound.send(Ok(()));
                    accept_loop(listener, shared, tracker).await;
                }
                Err(error) => {
                    let _ = bound.send(Err(error));
                }
            }
        }));
    }
    for _ in lanes.handles() {
        match bound_rx.recv_timeout(LANE_LISTEN_TIMEOUT) {
            Ok(bound) => bound?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a descriptor lane did not listen on {addr} in time"),
                ));
            }
        }
    }
    Ok(())
}

/// A running broker. Dropping it stops the broker too, without waiting.
pub struct BrokerHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl BrokerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections past CONNACK.
    pub fn connection_count(&self) -> usize {
        self.shared.router.len()
    }

    /// Persistent sessions whose client is offline and that have not expired yet.
    pub fn parked_session_count(&self) -> usize {
        self.shared.parked.len()
    }

    /// Topics holding a retained message.
    pub fn retained_count(&self) -> usize {
        self.shared.retained.len()
    }

    /// Closes the listener and every connection, and waits for their tasks to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.tracker.close();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // MQTT exchanges are small request/reply packets: Nagle's
                // algorithm against delayed ACKs would add ~40 ms to each.
                let _ = tcp.set_nodelay(true);
                tracker.spawn(connection::serve(tcp, peer, Arc::clone(&shared)));
            }
            Err(error) => {
                // Out of file descriptors, typically: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Closes the connections of every certificate that leaves ACTIVE.
async fn close_deactivated(mut events: broadcast::Receiver<CertificateEvent>, shared: Arc<Shared>) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shared.shutdown.cancelled() => return,
        };
        match event {
            Ok(CertificateEvent::Deactivated { certificate_id }) => {
                let delay = shared.config.deactivation_delay;
                if delay.is_zero() {
                    evict_certificate(&shared, &certificate_id);
                } else {
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        evict_certificate(&shared, &certificate_id);
                    });
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "certificate events missed; checking every connection"
                );
                evict_inactive(&shared);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn evict_certificate(shared: &Shared, certificate_id: &str) {
    for handle in shared.router.connections_of(certificate_id) {
        handle.evict(Eviction::CertificateDeactivated);
    }
}

fn evict_inactive(shared: &Shared) {
    for handle in shared.router.all() {
        let status = shared.registry.certificate_status(&handle.certificate_id);
        if status != Some(CertificateStatus::Active) {
            handle.evict(Eviction::CertificateDeactivated);
        }
    }
}

/// How often parked sessions are checked for expiry; a client reconnecting to an expired
/// session that was not swept yet gets a clean one anyway.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// Forgets persistent sessions whose client stayed away past their expiry.
async fn expire_sessions(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        tokio::select! {
            _ = sweep.tick() => {}
            () = shared.shutdown.cancelled() => return,
        }
        for expired in shared.parked.take_expired(tokio::time::Instant::now()) {
            shared
                .router
                .unregister(&expired.handle, expired.session.filters());
        }
    }
}
