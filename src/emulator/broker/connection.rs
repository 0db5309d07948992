//! One client connection from TCP accept to close: the TLS handshake, the CONNECT exchange,
//! then a single task that selects over the client's packets, its outbound queue and its
//! keep-alive deadline, and that is closed from outside through a cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, field};

use super::codec::{CodecError, Inbound, MqttCodec};
use super::lifecycle::Presence;
use super::router::{ConnectionHandle, Delivery, Eviction};
use super::session::{self, ClientIdError, Session, SubscriptionLimit, granted_qos};
use super::{Shared, metric};
use crate::emulator::fleet_provisioning::Peer;
use crate::emulator::policy::{self, Action, RequestContext};
use crate::emulator::tls::{self, Refusal};
use crate::emulator::topic::{self, TopicError};

type Wire = Framed<TlsStream<TcpStream>, MqttCodec>;

/// How long a close_notify may take before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a connection ended. The label is AWS's lifecycle `disconnectReason`, lowercased.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("client disconnected")]
    ClientDisconnect,
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
            CloseReason::ClientDisconnect => "client_initiated_disconnect",
            CloseReason::ConnectionLost(_) => "connection_lost",
            CloseReason::KeepAliveTimeout(_) => "mqtt_keep_alive_timeout",
            CloseReason::Malformed(_)
            | CloseReason::InvalidTopic(_)
            | CloseReason::ProtocolViolation(_) => "client_error",
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
            CloseReason::ProtocolViolation(_) => Some("protocol"),
            _ => None,
        }
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
            opened = open(tcp, &shared) => opened,
            () = shutdown.cancelled() => None,
        };
        if let Some(connection) = opened {
            connection.run_until_closed().await;
        }
    }
    .instrument(span)
    .await
}

async fn open(tcp: TcpStream, shared: &Arc<Shared>) -> Option<Connection> {
    let deadline = Instant::now() + shared.config.connect_timeout;
    let Some((wire, certificate_id)) = accept_tls(tcp, shared, deadline).await else {
        metric::connect_outcome("tls_refused");
        return None;
    };
    tracing::Span::current().record("certificate_id", certificate_id.as_str());
    open_session(wire, certificate_id, shared, deadline).await
}

async fn accept_tls(tcp: TcpStream, shared: &Shared, deadline: Instant) -> Option<(Wire, String)> {
    let stream = match timeout_at(deadline, shared.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tls::count_failed_handshake(&error);
            debug!(%error, "tls handshake refused");
            return None;
        }
        Err(_) => {
            Refusal::HandshakeTimeout.count();
            return None;
        }
    };
    let certificate_id = tls::peer_certificate_id(stream.get_ref().1)?;
    let wire = Framed::new(stream, MqttCodec::new(shared.config.max_packet_size));
    Some((wire, certificate_id))
}

/// Reads the CONNECT, applies AWS's rules and the `iot:Connect` policy, registers the
/// connection and answers CONNACK. Returns None when the connection was refused.
async fn open_session(
    mut wire: Wire,
    certificate_id: String,
    shared: &Arc<Shared>,
    deadline: Instant,
) -> Option<Connection> {
    let connect = match read_connect(&mut wire, deadline).await {
        Ok(connect) => connect,
        Err(refusal) => {
            refuse(&mut wire, refusal).await;
            return None;
        }
    };
    tracing::Span::current().record("client_id", connect.client_id.as_str());
    let authorizer = Authorizer {
        shared: Arc::clone(shared),
        client_id: connect.client_id.clone(),
        certificate_id,
    };
    if !authorizer.allows(Action::Connect, "client", &connect.client_id) {
        // AWS closes without a CONNACK [aws-iot-facts §3.6].
        metric::connect_outcome("not_authorized");
        close(&mut wire).await;
        return None;
    }
    Some(Connection::register(wire, connect, authorizer, shared))
}

/// Why a CONNECT was not accepted, and what CONNACK (if any) says so.
#[derive(Debug, thiserror::Error)]
enum ConnectRefusal {
    #[error("client sent no CONNECT in time")]
    Timeout,
    #[error(transparent)]
    Closed(CloseReason),
    #[error("client asked for protocol level {0}; only MQTT 3.1.1 (4) is served")]
    UnsupportedProtocol(u8),
    #[error(transparent)]
    BadClientId(ClientIdError),
}

async fn read_connect(wire: &mut Wire, deadline: Instant) -> Result<Connect, ConnectRefusal> {
    let frame = timeout_at(deadline, wire.next())
        .await
        .map_err(|_| ConnectRefusal::Timeout)?;
    let connect = match frame {
        Some(Ok(Inbound::Packet(Packet::Connect(connect)))) => connect,
        Some(Ok(Inbound::UnsupportedProtocol { level })) => {
            return Err(ConnectRefusal::UnsupportedProtocol(level));
        }
        Some(Ok(Inbound::Packet(_))) => {
            let violation =
                CloseReason::ProtocolViolation("first packet is not CONNECT [MQTT-3.1.0-1]");
            return Err(ConnectRefusal::Closed(violation));
        }
        Some(Err(error)) => return Err(ConnectRefusal::Closed(error.into())),
        None => return Err(ConnectRefusal::Closed(CloseReason::ConnectionLost(None))),
    };
    session::validate_client_id(&connect.client_id).map_err(ConnectRefusal::BadClientId)?;
    Ok(connect)
}

async fn refuse(wire: &mut Wire, refusal: ConnectRefusal) {
    debug!(error = %refusal, "connect refused");
    let (outcome, code) = match &refusal {
        ConnectRefusal::Timeout => ("timeout", None),
        ConnectRefusal::Closed(reason) => {
            if let Some(kind) = reason.malformed_kind() {
                metric::malformed(kind);
            }
            ("protocol_error", None)
        }
        ConnectRefusal::UnsupportedProtocol(_) => (
            "unsupported_protocol",
            Some(ConnectReturnCode::RefusedProtocolVersion),
        ),
        ConnectRefusal::BadClientId(_) => ("bad_client_id", Some(ConnectReturnCode::BadClientId)),
    };
    metric::connect_outcome(outcome);
    if let Some(code) = code {
        let _ = wire.send(Packet::ConnAck(ConnAck::new(code, false))).await;
    }
    close(wire).await;
}

/// Flushes and sends close_notify, within a short grace period.
async fn close(wire: &mut Wire) {
    let _ = timeout(CLOSE_GRACE, SinkExt::<Packet>::close(wire)).await;
}

/// Evaluates the certificate's policies for this connection.
struct Authorizer {
    shared: Arc<Shared>,
    client_id: String,
    certificate_id: String,
}

impl Authorizer {
    /// Whether `action` is allowed on `<kind>/<name>`; a denial is counted.
    fn allows(&self, action: Action, kind: &str, name: &str) -> bool {
        let registry = &self.shared.registry;
        let attached = registry.is_attached(&self.client_id, &self.certificate_id);
        let context = RequestContext {
            client_id: &self.client_id,
            thing_name: attached.then_some(self.client_id.as_str()),
            certificate_id: &self.certificate_id,
        };
        let policies = registry.policies_of(&self.certificate_id);
        let resource = registry.arn(kind, name);
        let allowed = policy::is_allowed(&policies, action, &resource, &context);
        if !allowed {
            metric::policy_denial(action);
        }
        allowed
    }

    fn require(&self, action: Action, kind: &str, name: &str) -> Result<(), CloseReason> {
        if self.allows(action, kind, name) {
            return Ok(());
        }
        Err(CloseReason::Forbidden {
            action,
            resource: format!("{kind}/{name}"),
        })
    }
}

/// A connection past CONNACK.
struct Connection {
    wire: Wire,
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    outbox: mpsc::Receiver<Delivery>,
    session: Session,
    authorizer: Authorizer,
    peer: Peer,
    keep_alive: Duration,
    last_heard: Instant,
    presence: Presence,
}

impl Connection {
    /// Registers the connection, dropping any other with the same client id.
    fn register(
        wire: Wire,
        connect: Connect,
        authorizer: Authorizer,
        shared: &Arc<Shared>,
    ) -> Self {
        let config = &shared.config;
        let (outbox_tx, outbox) = mpsc::channel(config.outbound_queue);
        let handle = Arc::new(ConnectionHandle::new(
            shared.next_connection_id(),
            connect.client_id.clone(),
            authorizer.certificate_id.clone(),
            outbox_tx,
            shared.shutdown.child_token(),
        ));
        if let Some(displaced) = shared.router.register(Arc::clone(&handle)) {
            displaced.evict(Eviction::DuplicateClientId);
        }
        metric::connection_opened();
        metric::connect_outcome("accepted");
        let ip = wire.get_ref().get_ref().0.peer_addr().ok().map(|a| a.ip());
        let presence = Presence::new(&handle.client_id, &handle.certificate_id, ip, handle.id);
        Connection {
            wire,
            shared: Arc::clone(shared),
            handle,
            outbox,
            session: Session::new(config.max_subscriptions_per_connection, config.max_inflight),
            peer: Peer {
                client_id: connect.client_id,
                certificate_id: authorizer.certificate_id.clone(),
            },
            authorizer,
            keep_alive: config.keep_alive.timeout(connect.keep_alive),
            last_heard: Instant::now(),
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
        self.shared
            .router
            .unregister(&self.handle, self.session.filters());
        let aws_reason = reason.label().to_ascii_uppercase();
        self.presence.disconnected(&self.shared.router, &aws_reason);
        metric::connection_closed();
        close(&mut self.wire).await;
    }

    async fn run(&mut self) -> CloseReason {
        // A certificate revoked between the handshake and registration has sent its event
        // before this connection could be found by certificate; look once more.
        if !self.certificate_still_active() {
            return CloseReason::CertificateDeactivated;
        }
        let connack = ConnAck::new(ConnectReturnCode::Success, false);
        if let Err(reason) = self.send(Packet::ConnAck(connack)).await {
            return reason;
        }
        self.presence.connected(&self.shared.router);
        loop {
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

    fn certificate_still_active(&self) -> bool {
        let status = self
            .shared
            .registry
            .certificate_status(&self.handle.certificate_id);
        status == Some(crate::emulator::registry::CertificateStatus::Active)
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Inbound, CodecError>>,
    ) -> Result<(), CloseReason> {
        let packet = match frame {
            None => return Err(CloseReason::ConnectionLost(None)),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(Inbound::UnsupportedProtocol { .. })) => {
                return Err(CloseReason::ProtocolViolation(
                    "second CONNECT [MQTT-3.1.0-2]",
                ));
            }
            Some(Ok(Inbound::Packet(packet))) => packet,
        };
        self.last_heard = Instant::now();
        self.on_packet(packet).await
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), CloseReason> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                self.session.acknowledge(ack.pkid);
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe).await,
            Packet::PingReq => self.send(Packet::PingResp).await,
            Packet::Disconnect => Err(CloseReason::ClientDisconnect),
            Packet::Connect(_) => Err(CloseReason::ProtocolViolation(
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(
                CloseReason::ProtocolViolation("QoS 2 flow, which AWS IoT does not support"),
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => Err(
                CloseReason::ProtocolViolation("client sent a server-only packet"),
            ),
        }
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), CloseReason> {
        if publish.qos == QoS::ExactlyOnce {
            // AWS sends no PUBACK for QoS 2; closing makes the refusal visible at once.
            return Err(CloseReason::ProtocolViolation(
                "QoS 2 PUBLISH, which AWS IoT does not support",
            ));
        }
        topic::validate_topic_name(&publish.topic).map_err(CloseReason::InvalidTopic)?;
        self.authorizer
            .require(Action::Publish, "topic", &publish.topic)?;
        if publish.retain {
            self.authorizer
                .require(Action::RetainPublish, "topic", &publish.topic)?;
        }
        metric::message("inbound");
        self.dispatch(&publish.topic, publish.payload, publish.qos)
            .await;
        if publish.qos == QoS::AtLeastOnce {
            self.send(Packet::PubAck(PubAck::new(publish.pkid))).await?;
        }
        Ok(())
    }

    /// Hands a publish to Fleet Provisioning, whose reply goes to this connection only;
    /// anything else is routed to subscribers.
    async fn dispatch(&mut self, topic: &str, payload: Bytes, qos: QoS) {
        let provisioning = Arc::clone(&self.shared.provisioning);
        match provisioning
            .handle_publish(&self.peer, topic, &payload)
            .await
        {
            // A reply is a promise to the device: it waits until the change is durable.
            Some(reply) => match self.shared.registry.durable().await {
                Ok(()) => self.queue_reply(reply.topic, reply.payload.into()),
                Err(error) => debug!(%error, "provisioning reply withheld"),
            },
            None => {
                let routed = self.shared.router.route(topic, &payload, qos);
                metric::dropped(routed.dropped);
            }
        }
    }

    /// A reply reaches the requester only through a subscription it holds [aws-iot-facts §1.5].
    fn queue_reply(&mut self, topic: String, payload: Bytes) {
        let Some(qos) = self.session.subscription_for(&topic) else {
            debug!(topic, "reply dropped: requester is not subscribed");
            return;
        };
        let delivery = Delivery {
            topic: topic.into(),
            payload,
            qos,
        };
        if !self.handle.offer(delivery) {
            metric::dropped(1);
        }
    }

    async fn deliver(&mut self, delivery: Delivery) -> Result<(), CloseReason> {
        if !self
            .authorizer
            .allows(Action::Receive, "topic", &delivery.topic)
        {
            return Ok(());
        }
        let mut publish =
            Publish::from_bytes(delivery.topic.as_ref(), delivery.qos, delivery.payload);
        if delivery.qos == QoS::AtLeastOnce {
            let Some(packet_id) = self.session.allocate_packet_id() else {
                metric::dropped(1);
                return Ok(());
            };
            publish.pkid = packet_id;
        }
        self.send(Packet::Publish(publish)).await?;
        metric::message("outbound");
        Ok(())
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), CloseReason> {
        if subscribe.filters.len() > self.shared.config.max_filters_per_subscribe {
            return Err(CloseReason::ProtocolViolation(
                "more topic filters in one SUBSCRIBE than AWS allows",
            ));
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in &subscribe.filters {
            codes.push(self.subscribe_one(&filter.path, filter.qos)?);
        }
        self.send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await
    }

    fn subscribe_one(
        &mut self,
        filter: &str,
        requested: QoS,
    ) -> Result<SubscribeReasonCode, CloseReason> {
        topic::validate_topic_filter(filter).map_err(CloseReason::InvalidTopic)?;
        self.authorizer
            .require(Action::Subscribe, "topicfilter", filter)?;
        let qos = granted_qos(requested);
        match self.session.subscribe(filter, qos) {
            Ok(()) => {
                self.shared.router.subscribe(self.handle.id, filter, qos);
                Ok(SubscribeReasonCode::Success(qos))
            }
            Err(SubscriptionLimit { limit }) => {
                debug!(filter, limit, "subscription refused: limit reached");
                Ok(SubscribeReasonCode::Failure)
            }
        }
    }

    async fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), CloseReason> {
        for filter in &unsubscribe.topics {
            if self.session.unsubscribe(filter) {
                self.shared.router.unsubscribe(self.handle.id, filter);
            }
        }
        self.send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
            .await
    }

    async fn send(&mut self, packet: Packet) -> Result<(), CloseReason> {
        self.wire.send(packet).await.map_err(CloseReason::from)
    }
}
