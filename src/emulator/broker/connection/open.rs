//! Opening a connection: the TLS handshake, the CONNECT of either protocol version, AWS's
//! rules on it, `iot:Connect`, and the takeover of the client id and its parked session.
//! A refused CONNECT is answered the way each protocol version allows.

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;
use tracing::debug;

use super::{Authorizer, CloseReason, Connection, TAKEOVER_GRACE, Wire, close};
use crate::emulator::broker::codec::{Inbound, MqttCodec};
use crate::emulator::broker::packet::{ConnectRequest, Protocol, Reason, Reply, Request};
use crate::emulator::broker::parked::ParkedSession;
use crate::emulator::broker::router::Eviction;
use crate::emulator::broker::session::{self, ClientIdError};
use crate::emulator::broker::{Shared, metric};
use crate::emulator::policy::Action;
use crate::emulator::tls::{self, Refusal};
use crate::emulator::topic;

/// Initial read and write buffer of a connection: most connections idle
/// between small packets for hours, so buffers start small and grow only for
/// a larger packet.
const INITIAL_BUFFER_BYTES: usize = 512;

/// Who is on the other end of the TLS connection, read once at the handshake.
pub(super) struct PeerCertificate {
    pub(super) id: String,
    pub(super) der: CertificateDer<'static>,
}

/// `ip` is the client's address as the listener accepted it.
pub(super) async fn open(tcp: TcpStream, ip: IpAddr, shared: &Arc<Shared>) -> Option<Connection> {
    let deadline = Instant::now() + shared.config.connect_timeout;
    let Some((wire, certificate)) = accept_tls(tcp, shared, deadline).await else {
        metric::connect_outcome("tls_refused");
        return None;
    };
    tracing::Span::current().record("certificate_id", certificate.id.as_str());
    open_session(wire, certificate, ip, shared, deadline).await
}

async fn accept_tls(
    tcp: TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> Option<(Wire, PeerCertificate)> {
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
    let connection = stream.get_ref().1;
    tls::count_handshake(connection);
    let id = tls::peer_certificate_id(connection)?;
    let der = connection.peer_certificates()?.first()?.clone();
    let codec = MqttCodec::new(shared.config.max_packet_size);
    let wire = Framed::with_capacity(stream, codec, INITIAL_BUFFER_BYTES);
    Some((wire, PeerCertificate { id, der }))
}

/// Reads the CONNECT, applies AWS's rules and the `iot:Connect` policy, takes over the
/// client id and its session, registers the connection. Returns None when it was refused.
async fn open_session(
    mut wire: Wire,
    certificate: PeerCertificate,
    ip: IpAddr,
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
    let authorizer = Authorizer::new(Arc::clone(shared), &connect, certificate);
    if let Err(refusal) = check_connect(&connect, &authorizer) {
        refuse(&mut wire, refusal).await;
        return None;
    }
    let resumed = take_over(shared, &connect).await;
    Some(Connection::register(
        wire, connect, authorizer, resumed, ip, shared,
    ))
}

/// Why a CONNECT was not accepted, and what CONNACK (if any) says so.
#[derive(Debug, thiserror::Error)]
enum ConnectRefusal {
    #[error("client sent no CONNECT in time")]
    Timeout,
    #[error(transparent)]
    Closed(CloseReason),
    #[error("client asked for protocol level {0}; only MQTT 3.1.1 (4) and 5 are served")]
    UnsupportedProtocol(u8),
    #[error(transparent)]
    BadClientId(ClientIdError),
    #[error("client's will is not acceptable: {0}")]
    BadWill(&'static str, Reason),
    #[error("client is not authorized to connect")]
    NotAuthorized,
}

async fn read_connect(
    wire: &mut Wire,
    deadline: Instant,
) -> Result<ConnectRequest, ConnectRefusal> {
    let frame = timeout_at(deadline, wire.next())
        .await
        .map_err(|_| ConnectRefusal::Timeout)?;
    let connect = match frame {
        Some(Ok(Inbound::Request(Request::Connect(connect)))) => connect,
        Some(Ok(Inbound::UnsupportedProtocol { level })) => {
            return Err(ConnectRefusal::UnsupportedProtocol(level));
        }
        Some(Ok(Inbound::Request(_))) => {
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

/// The will's own rules, then `iot:Connect` (whose context carries the connect attributes
/// and the will topic).
fn check_connect(connect: &ConnectRequest, authorizer: &Authorizer) -> Result<(), ConnectRefusal> {
    if let Some(will) = &connect.will {
        if will.qos == rumqttc::mqttbytes::QoS::ExactlyOnce {
            return Err(ConnectRefusal::BadWill("qos 2", Reason::QosNotSupported));
        }
        if topic::validate_topic_name(&will.topic).is_err() {
            return Err(ConnectRefusal::BadWill(
                "invalid topic",
                Reason::TopicNameInvalid,
            ));
        }
    }
    if !authorizer.allows(Action::Connect, "client", &connect.client_id) {
        return Err(ConnectRefusal::NotAuthorized);
    }
    Ok(())
}

async fn refuse(wire: &mut Wire, refusal: ConnectRefusal) {
    debug!(error = %refusal, "connect refused");
    let is_v5 = wire.codec().protocol() == Some(Protocol::V5);
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
            Some(Reason::UnsupportedProtocolVersion),
        ),
        ConnectRefusal::BadClientId(_) => ("bad_client_id", Some(Reason::ClientIdNotValid)),
        ConnectRefusal::BadWill(_, reason) => ("protocol_error", is_v5.then_some(*reason)),
        // AWS closes a 3.1.1 connection without a CONNACK [aws-iot-facts §3.6]; MQTT 5 has
        // a reason code for it.
        ConnectRefusal::NotAuthorized => ("not_authorized", is_v5.then_some(Reason::NotAuthorized)),
    };
    metric::connect_outcome(outcome);
    if let Some(code) = code {
        let connack = Reply::ConnAck {
            session_present: false,
            code,
            limits: None,
        };
        let _ = wire.send(connack).await;
    }
    close(wire).await;
}

/// Drops an online connection with the same client id and waits for it to park its session,
/// then returns the parked session to resume, unless the client asked for a clean start (or
/// it expired), in which case the old session is discarded.
async fn take_over(shared: &Shared, connect: &ConnectRequest) -> Option<ParkedSession> {
    if let Some(online) = shared.router.online(&connect.client_id) {
        online.evict(Eviction::DuplicateClientId);
        let _ = timeout(TAKEOVER_GRACE, online.finished()).await;
    }
    let parked = shared.parked.take(&connect.client_id)?;
    if connect.clean_start || parked.expires_at <= Instant::now() {
        shared
            .router
            .unregister(&parked.handle, parked.session.filters());
        return None;
    }
    Some(parked)
}
