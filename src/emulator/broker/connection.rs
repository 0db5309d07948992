//! One client connection from TCP accept to close: the TLS handshake, the CONNECT exchange
//! (either protocol version), then a single task that selects over the client's packets, its
//! outbound queue and its keep-alive deadline, and that is closed from outside through a
//! cancellation token. On close it sends the will and parks a persistent session.
//!
//! Modelling choices where AWS documents only MQTT 3.1.1: a policy denial closes a 3.1.1
//! connection (as AWS does), while an MQTT 5 client gets reason code 0x87 on its PUBACK,
//! SUBACK or CONNACK and stays connected; a denied QoS 0 publish is dropped. Where a 5
//! connection must close, the broker first sends DISCONNECT with the reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, field};

use super::codec::{CodecError, MqttCodec};
use super::lifecycle::Presence;
use super::packet::{ConnectRequest, OutboundPublish, Protocol, Reason, Reply, Will};
use super::parked::ParkedSession;
use super::router::{ConnectionHandle, Delivery, Eviction};
use super::session::Session;
use super::{Shared, metric};
use crate::emulator::fleet_provisioning::Peer;
use crate::emulator::policy::Action;
use crate::emulator::registry::CertificateStatus;
use crate::emulator::topic::TopicError;

mod authorizer;
mod inbound;
mod open;

use authorizer::Authorizer;
use open::open;

type Wire = Framed<TlsStream<TcpStream>, MqttCodec>;

/// How long a close_notify may take before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a client taking over an id waits for the old connection to park its session.
const TAKEOVER_GRACE: Duration = Duration::from_secs(1);

/// Why a connection ended. The label is AWS's lifecycle `disconnectReason`, lowercased.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("client disconnected")]
    ClientDisconnect { with_will: bool },
    #[error("connection lost")]
    ConnectionLost(#[source] Option<std::io::Error>),
    #[error("client sent nothing for {0:?}, 1.5 times its keep-alive")]
    KeepAliveTimeout(Duration),
    #[error(transparent)]
    Malformed(CodecError),
    #[error(transparent)]
    InvalidTopic(TopicError),
    #[error("client broke the protocol: {0}")]
    ProtocolViolation(&'static str),
    #[error("client asked for something IoT Core refuses: {what}")]
    Refused { reason: Reason, what: &'static str },
    #[error("client is not authorized: {action:?} on {resource}")]
    Forbidden { action: Action, resource: String },
    #[error("another connection took over the client id")]
    DuplicateClientId,
    #[error("certificate is no longer active")]
    CertificateDeactivated,
    #[error("broker is shutting down")]
    Shutdown,
}

impl CloseReason {
    fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect { .. } => "client_initiated_disconnect",
            CloseReason::ConnectionLost(_) => "connection_lost",
            CloseReason::KeepAliveTimeout(_) => "mqtt_keep_alive_timeout",
            CloseReason::Malformed(_)
            | CloseReason::InvalidTopic(_)
            | CloseReason::ProtocolViolation(_)
            | CloseReason::Refused { .. } => "client_error",
            CloseReason::Forbidden { .. } => "forbidden_access",
            CloseReason::DuplicateClientId => "duplicate_clientid",
            CloseReason::CertificateDeactivated => "auth_error",
            CloseReason::Shutdown => "server_initiated_disconnect",
        }
    }

    /// The malformed-packet counter's `kind`, for reasons that are the client's bad bytes.
    fn malformed_kind(&self) -> Option<&'static str> {
        match self {
            CloseReason::Malformed(_) => Some("decode"),
            CloseReason::InvalidTopic(_) => Some("topic"),
            CloseReason::ProtocolViolation(_) | CloseReason::Refused { .. } => Some("protocol"),
            _ => None,
        }
    }

    /// The reason an MQTT 5 client is told in the broker's DISCONNECT; `None` when the
    /// client closed or the connection is already gone.
    fn disconnect_reason(&self) -> Option<Reason> {
        let reason = match self {
            CloseReason::ClientDisconnect { .. } | CloseReason::ConnectionLost(_) => return None,
            CloseReason::KeepAliveTimeout(_) => Reason::KeepAliveTimeout,
            CloseReason::Malformed(error) if error.is_too_large() => Reason::PacketTooLarge,
            CloseReason::Malformed(_) => Reason::MalformedPacket,
            CloseReason::InvalidTopic(_) => Reason::TopicNameInvalid,
            CloseReason::ProtocolViolation(_) => Reason::ProtocolError,
            CloseReason::Refused { reason, .. } => *reason,
            CloseReason::Forbidden { .. } => Reason::NotAuthorized,
            CloseReason::DuplicateClientId => Reason::SessionTakenOver,
            CloseReason::CertificateDeactivated => Reason::AdministrativeAction,
            CloseReason::Shutdown => Reason::ServerShuttingDown,
        };
        Some(reason)
    }

    /// AWS sends the will on every disconnect except a client's own DISCONNECT; MQTT 5 lets
    /// that DISCONNECT ask for the will anyway (reason 0x04).
    fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::ClientDisconnect { with_will: false })
    }
}

impl From<CodecError> for CloseReason {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Io(io) => CloseReason::ConnectionLost(Some(io)),
            other => CloseReason::Malformed(other),
        }
    }
}

impl From<Eviction> for CloseReason {
    fn from(eviction: Eviction) -> Self {
        match eviction {
            Eviction::DuplicateClientId => CloseReason::DuplicateClientId,
            Eviction::CertificateDeactivated => CloseReason::CertificateDeactivated,
        }
    }
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let span = tracing::debug_span!(
        "connection",
        %peer,
        client_id = field::Empty,
        certificate_id = field::Empty
    );
    async move {
        let shutdown = shared.shutdown.clone();
        // Until it is registered, a connection has no kill token of its own.
        let opened = tokio::select! {
            opened = open(tcp, peer.ip(), &shared) => opened,
            () = shutdown.cancelled() => None,
        };
        if let Some(connection) = opened {
            connection.run_until_closed().await;
        }
    }
    .instrument(span)
    .await
}

/// Flushes and sends close_notify, within a short grace period.
async fn close(wire: &mut Wire) {
    let _ = timeout(CLOSE_GRACE, SinkExt::<Reply>::close(wire)).await;
}

/// How long a session outlives its connection: 3.1.1 persistent sessions get the broker's
/// expiry (AWS: 1 h); MQTT 5 asks for its own, capped by it.
fn session_expiry(connect: &ConnectRequest, broker_max: Duration) -> Duration {
    match connect.protocol {
        Protocol::V311 if connect.clean_start => Duration::ZERO,
        Protocol::V311 => broker_max,
        Protocol::V5 => {
            let asked = Duration::from_secs(u64::from(connect.session_expiry.unwrap_or(0)));
            asked.min(broker_max)
        }
    }
}

/// The QoS 1 messages in flight to this client: the broker's limit, lowered by an MQTT 5
/// client's Receive Maximum.
fn max_inflight(connect: &ConnectRequest, config: &super::BrokerConfig) -> usize {
    let client_max = connect.receive_maximum.map_or(usize::MAX, usize::from);
    config.max_inflight.min(client_max)
}

type SessionParts = (Arc<ConnectionHandle>, mpsc::Receiver<Delivery>, Session);

/// A parked session under the new connection: same router id, queue and subscriptions.
fn resume(
    parked: ParkedSession,
    connect: &ConnectRequest,
    certificate_id: &str,
    shared: &Shared,
) -> SessionParts {
    let kill = shared.shutdown.child_token();
    let handle = parked.handle.resumed(kill, certificate_id.to_owned());
    let mut session = parked.session;
    session.set_max_inflight(max_inflight(connect, &shared.config));
    (Arc::new(handle), parked.queue, session)
}

fn start_fresh(connect: &ConnectRequest, certificate_id: &str, shared: &Shared) -> SessionParts {
    let config = &shared.config;
    let (outbox_tx, outbox) = mpsc::channel(config.outbound_queue);
    let handle = ConnectionHandle::new(
        shared.next_connection_id(),
        connect.client_id.clone(),
        certificate_id.to_owned(),
        outbox_tx,
        shared.shutdown.child_token(),
    );
    let max_subscriptions = config.max_subscriptions_per_connection;
    let session = Session::new(max_subscriptions, max_inflight(connect, config));
    (Arc::new(handle), outbox, session)
}

/// A connection past CONNACK.
struct Connection {
    wire: Wire,
    protocol: Protocol,
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    outbox: mpsc::Receiver<Delivery>,
    session: Session,
    session_present: bool,
    session_expiry: Duration,
    /// What the client asked for, to tell an MQTT 5 client when the broker grants less.
    asked_session_expiry: Option<u32>,
    asked_keep_alive: u16,
    will: Option<Will>,
    authorizer: Authorizer,
    peer: Peer,
    keep_alive: Duration,
    last_heard: Instant,
    /// MQTT 5 topic aliases the client set, by alias.
    aliases: std::collections::HashMap<u16, String>,
    presence: Presence,
}

impl Connection {
    /// Registers the connection, dropping any other with the same client id.
    fn register(
        wire: Wire,
        connect: ConnectRequest,
        authorizer: Authorizer,
        resumed: Option<ParkedSession>,
        ip: IpAddr,
        shared: &Arc<Shared>,
    ) -> Self {
        let config = &shared.config;
        let certificate_id = authorizer.certificate_id.clone();
        let session_present = resumed.is_some();
        let (handle, outbox, session) = match resumed {
            Some(parked) => resume(parked, &connect, &certificate_id, shared),
            None => start_fresh(&connect, &certificate_id, shared),
        };
        if let Some(displaced) = shared.router.register(Arc::clone(&handle)) {
            displaced.evict(Eviction::DuplicateClientId);
        }
        metric::connection_opened();
        metric::connect_outcome("accepted");
        let presence = Presence::new(
            &handle.client_id,
            &handle.certificate_id,
            Some(ip),
            handle.id,
        );
        Connection {
            wire,
            protocol: connect.protocol,
            shared: Arc::clone(shared),
            handle,
            outbox,
            session,
            session_present,
            session_expiry: session_expiry(&connect, config.session_expiry),
            asked_session_expiry: connect.session_expiry,
            asked_keep_alive: connect.keep_alive,
            will: connect.will,
            peer: Peer {
                client_id: connect.client_id,
                certificate_id,
            },
            authorizer,
            keep_alive: config.keep_alive.timeout(connect.keep_alive),
            last_heard: Instant::now(),
            aliases: std::collections::HashMap::new(),
            presence,
        }
    }

    async fn run_until_closed(mut self) {
        let kill = self.handle.kill_token();
        let reason = tokio::select! {
            reason = self.run() => reason,
            () = kill.cancelled() => self.handle.eviction().map_or(CloseReason::Shutdown, Into::into),
        };
        debug!(reason = reason.label(), error = %reason, "connection closed");
        if let Some(kind) = reason.malformed_kind() {
            metric::malformed(kind);
        }
        metric::disconnect(reason.label());
        if let Some(code) = reason.disconnect_reason() {
            let _ = timeout(CLOSE_GRACE, self.wire.send(Reply::Disconnect(code))).await;
        }
        if reason.publishes_will() {
            self.send_will();
        }
        metric::connection_closed();
        close(&mut self.wire).await;
        let aws_reason = reason.label().to_ascii_uppercase();
        self.presence.disconnected(&self.shared.router, &aws_reason);
        let handle = Arc::clone(&self.handle);
        self.park_or_forget();
        handle.mark_finished();
    }

    /// Keeps a persistent session for its client's return; forgets a clean one.
    fn park_or_forget(self) {
        let router = &self.shared.router;
        if self.session_expiry.is_zero() {
            router.unregister(&self.handle, self.session.filters());
            return;
        }
        router.park(&self.handle);
        self.shared.parked.park(ParkedSession {
            handle: self.handle,
            session: self.session,
            queue: self.outbox,
            expires_at: Instant::now() + self.session_expiry,
        });
    }

    /// Publishes the will as the client would have: checked against its policy. An MQTT 5
    /// Will Delay postpones it, and a reconnect of the same client id within the delay
    /// cancels it [MQTT-3.1.3-9].
    fn send_will(&mut self) {
        let Some(will) = self.will.take() else {
            return;
        };
        let auth = &self.authorizer;
        let retain = will.retain && !will.topic.starts_with('$');
        if !auth.allows(Action::Publish, "topic", &will.topic)
            || (retain && !auth.allows(Action::RetainPublish, "topic", &will.topic))
        {
            debug!(topic = will.topic, "will not sent: denied by policy");
            return;
        }
        let delay = Duration::from_secs(u64::from(will.delay_secs));
        if delay.is_zero() {
            self.shared
                .publish(&will.topic, &will.payload, will.qos, retain);
            return;
        }
        let shared = Arc::clone(&self.shared);
        let client_id = self.peer.client_id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.shutdown.cancelled() => return,
            }
            if shared.router.online(&client_id).is_none() {
                shared.publish(&will.topic, &will.payload, will.qos, retain);
            }
        });
    }

    async fn run(&mut self) -> CloseReason {
        // A certificate revoked between the handshake and registration has sent its event
        // before this connection could be found by certificate; look once more.
        if !self.certificate_still_active() {
            return CloseReason::CertificateDeactivated;
        }
        if let Err(reason) = self.send_connack().await {
            return reason;
        }
        self.presence.connected(&self.shared.router);
        if let Err(reason) = self.resend_unacknowledged().await {
            return reason;
        }
        loop {
            if let Err(reason) = self.flush_with_queued().await {
                return reason;
            }
            let deadline = self.last_heard + self.keep_alive;
            let step = tokio::select! {
                frame = self.wire.next() => self.on_frame(frame).await,
                Some(delivery) = self.outbox.recv(), if self.session.can_send() => {
                    self.deliver(delivery).await
                }
                () = sleep_until(deadline) => Err(CloseReason::KeepAliveTimeout(self.keep_alive)),
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Writes out what the last packet's handling queued together with the messages already
    /// waiting for this connection (a Fleet Provisioning reply right behind its request's
    /// PUBACK), so that they leave in one TLS record and one write instead of one each.
    async fn flush_with_queued(&mut self) -> Result<(), CloseReason> {
        while self.session.can_send() {
            let Ok(delivery) = self.outbox.try_recv() else {
                break;
            };
            self.deliver(delivery).await?;
        }
        SinkExt::<Reply>::flush(&mut self.wire)
            .await
            .map_err(CloseReason::from)
    }

    fn certificate_still_active(&self) -> bool {
        let status = self
            .shared
            .registry
            .certificate_status(&self.handle.certificate_id);
        status == Some(CertificateStatus::Active)
    }

    async fn send_connack(&mut self) -> Result<(), CloseReason> {
        let limits = (self.protocol == Protocol::V5).then(|| self.shared.server_limits(self));
        self.send(Reply::ConnAck {
            session_present: self.session_present,
            code: Reason::Success,
            limits,
        })
        .await
    }

    /// QoS 1 messages sent before the client went away and never acknowledged.
    async fn resend_unacknowledged(&mut self) -> Result<(), CloseReason> {
        let pending: Vec<(u16, Delivery)> = self
            .session
            .unacknowledged()
            .map(|(id, delivery)| (id, delivery.clone()))
            .collect();
        for (pkid, delivery) in pending {
            let publish = OutboundPublish {
                topic: delivery.topic,
                payload: delivery.payload,
                qos: delivery.qos,
                retain: delivery.retain,
                pkid,
                dup: true,
            };
            self.send(Reply::Publish(publish)).await?;
        }
        Ok(())
    }

    /// Queues `reply` in the write buffer; the run loop flushes it once the packet at hand
    /// is handled, and closing flushes whatever is left.
    async fn send(&mut self, reply: Reply) -> Result<(), CloseReason> {
        self.wire.feed(reply).await.map_err(CloseReason::from)
    }
}

impl Shared {
    /// What an MQTT 5 CONNACK announces for this connection [aws-iot-facts §7].
    fn server_limits(&self, connection: &Connection) -> super::packet::ServerLimits {
        let granted_expiry = u32::try_from(connection.session_expiry.as_secs()).unwrap_or(u32::MAX);
        let asked_expiry = connection.asked_session_expiry.unwrap_or(0);
        let keep_alive = self.config.keep_alive.clamp(connection.asked_keep_alive);
        let keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
        super::packet::ServerLimits {
            receive_maximum: u16::try_from(self.config.max_inflight).unwrap_or(u16::MAX),
            topic_alias_maximum: self.config.topic_alias_maximum,
            // MQTT 5 counts the whole packet; the configured limit is the remaining length,
            // behind a fixed header of at most 5 bytes.
            maximum_packet_size: u32::try_from(self.config.max_packet_size + 5).unwrap_or(u32::MAX),
            session_expiry: (granted_expiry != asked_expiry).then_some(granted_expiry),
            server_keep_alive: (keep_alive != connection.asked_keep_alive).then_some(keep_alive),
        }
    }
}
