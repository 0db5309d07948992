//! One MQTT 3.1.1 connection of a device over mutual TLS: a small client of
//! our own on tokio's `TcpSocket`, tokio-rustls and rumqttc's v4 packet codec.
//!
//! Owning the socket lets a connection start from a chosen local address,
//! so one load machine can spread its connections over several source
//! addresses and is not limited by one address's ephemeral ports; it also
//! keeps a connection's memory to its TLS state and one framed buffer.
//! A driver task owns the socket: it writes what the device sends, answers
//! keep-alive and QoS 1 deliveries, and forwards acks, messages and the end
//! of the connection. It never reconnects on its own: reconnecting is the
//! device's decision, paced by its backoff.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{
    Codec, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeFilter,
};
use rumqttc::mqttbytes::{Error as PacketError, QoS};
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Encoder, Framed};

use crate::observe::FailureReason;

/// Largest packet either side may send; AWS's payload limit is 128 KiB.
const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Initial read and write buffer of a connection. An idle device holds its
/// connection for hours, so the buffers start at the size of a telemetry
/// message and grow only for the few larger packets (provisioning replies).
const INITIAL_BUFFER_BYTES: usize = 512;

type Wire = Framed<TlsStream<TcpStream>, Codec>;

/// Where the broker listens, and the name its certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Local addresses that connections start from, taken in turn; empty lets
/// the operating system choose, as an unbound socket does.
#[derive(Debug, Clone, Default)]
pub struct SourceAddresses {
    addresses: Arc<[IpAddr]>,
    next: Arc<AtomicUsize>,
}

impl SourceAddresses {
    pub fn new(addresses: Vec<IpAddr>) -> SourceAddresses {
        SourceAddresses {
            addresses: addresses.into(),
            next: Arc::default(),
        }
    }

    /// The address the next connection starts from, round robin.
    pub fn next(&self) -> Option<IpAddr> {
        if self.addresses.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addresses[turn % self.addresses.len()])
    }

    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }
}

/// Why a connection or an exchange on it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason:?}: {detail}")]
pub struct SessionError {
    pub reason: FailureReason,
    pub detail: String,
}

impl SessionError {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> SessionError {
        SessionError {
            reason,
            detail: detail.into(),
        }
    }

    fn timeout(what: &str) -> SessionError {
        SessionError::new(
            FailureReason::Timeout,
            format!("no {what} before the step deadline"),
        )
    }
}

/// What the driver tells the device. Kept small: a channel allocates room
/// for 32 of them per connection up front, whatever it carries.
enum Notice {
    SubAck(u16),
    PubAck(u16),
    Message(Box<(String, bytes::Bytes)>),
    Closed(SessionError),
}

/// A live connection. Dropping it stops the driver and closes the socket.
pub struct Session {
    /// Boxed, so that the channel's up-front block stays small.
    outgoing: mpsc::UnboundedSender<Box<Packet>>,
    notices: mpsc::UnboundedReceiver<Notice>,
    driver: tokio::task::JoinHandle<()>,
    step_timeout: Duration,
    last_packet_id: u16,
    /// Messages that arrived while waiting for an ack or a reply, kept for
    /// [`Session::next_message`] instead of being lost.
    held: VecDeque<(String, bytes::Bytes)>,
}

/// Messages held per session; the oldest go first when more arrive.
const MAX_HELD: usize = 64;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connection settings shared by every connection of one device.
#[derive(Clone)]
pub struct ConnectSettings {
    pub endpoint: Endpoint,
    pub keep_alive: Duration,
    pub step_timeout: Duration,
    pub sources: SourceAddresses,
}

impl Session {
    /// Opens a TLS connection and completes the MQTT CONNECT handshake.
    pub async fn connect(
        settings: &ConnectSettings,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Session, SessionError> {
        let deadline = Instant::now() + settings.step_timeout;
        let mut codec = Codec {
            max_incoming_size: MAX_PACKET_BYTES,
            max_outgoing_size: MAX_PACKET_BYTES,
        };
        let connect = connect_packet(&mut codec, client_id, settings.keep_alive)?;
        let tcp = open_tcp(settings, deadline).await?;
        let stream = handshake(&settings.endpoint, tcp, tls, &connect, deadline).await?;
        let mut wire = Framed::with_capacity(stream, codec, INITIAL_BUFFER_BYTES);
        let deadline = Instant::now() + settings.step_timeout;
        read_connack(&mut wire, deadline).await?;
        let (outgoing, queued) = mpsc::unbounded_channel();
        let (tx, notices) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(wire, queued, tx, settings.keep_alive));
        Ok(Session {
            outgoing,
            notices,
            driver,
            step_timeout: settings.step_timeout,
            last_packet_id: 0,
            held: VecDeque::new(),
        })
    }

    pub async fn subscribe<S: AsRef<str>>(&mut self, filters: &[S]) -> Result<(), SessionError> {
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.as_ref().to_owned(), QoS::AtLeastOnce));
        let mut subscribe = Subscribe::new_many(filters);
        let id = self.packet_id();
        subscribe.pkid = id;
        self.send(Packet::Subscribe(subscribe))?;
        self.wait_for(
            "SUBACK",
            |n| matches!(n, Notice::SubAck(acked) if *acked == id),
        )
        .await
    }

    /// Publishes and, for QoS 1, waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<(), SessionError> {
        let mut publish = Publish::new(topic, qos, payload);
        if qos == QoS::AtMostOnce {
            return self.send(Packet::Publish(publish));
        }
        let id = self.packet_id();
        publish.pkid = id;
        self.send(Packet::Publish(publish))?;
        self.wait_for(
            "PUBACK",
            |n| matches!(n, Notice::PubAck(acked) if *acked == id),
        )
        .await
    }

    /// Publishes a request and waits for the message on `accepted` or
    /// `rejected`; a rejection comes back as `Err(Ok(payload))`.
    pub async fn request(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        accepted: &str,
        rejected: &str,
    ) -> Result<Result<bytes::Bytes, bytes::Bytes>, SessionError> {
        self.publish(topic, QoS::AtLeastOnce, payload).await?;
        let deadline = Instant::now() + self.step_timeout;
        loop {
            let notice = timeout_at(deadline, self.notices.recv())
                .await
                .map_err(|_| SessionError::timeout("provisioning reply"))?;
            match notice {
                Some(Notice::Message(message)) if message.0 == accepted => {
                    return Ok(Ok(message.1));
                }
                Some(Notice::Message(message)) if message.0 == rejected => {
                    return Ok(Err(message.1));
                }
                Some(Notice::Message(message)) => self.hold(*message),
                Some(Notice::Closed(error)) => return Err(error),
                None => return Err(closed()),
                Some(_) => {}
            }
        }
    }

    fn hold(&mut self, message: (String, bytes::Bytes)) {
        if self.held.len() == MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back(message);
    }

    /// The next message delivered to this connection within `wait`, if any.
    pub async fn next_message(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(String, bytes::Bytes)>, SessionError> {
        if let Some(held) = self.held.pop_front() {
            return Ok(Some(held));
        }
        let deadline = Instant::now() + wait;
        loop {
            match timeout_at(deadline, self.notices.recv()).await {
                Err(_) => return Ok(None),
                Ok(Some(Notice::Message(message))) => return Ok(Some(*message)),
                Ok(Some(Notice::Closed(error))) => return Err(error),
                Ok(None) => return Err(closed()),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Whether the connection has ended, without waiting.
    pub fn closed_reason(&mut self) -> Option<SessionError> {
        while let Ok(notice) = self.notices.try_recv() {
            match notice {
                Notice::Closed(error) => return Some(error),
                Notice::Message(message) => self.hold(*message),
                _ => {}
            }
        }
        self.driver.is_finished().then(closed)
    }

    /// Drops the connection at once, without a DISCONNECT, as a broken
    /// network would (fault injection); every later step on it fails.
    pub fn sever(&mut self) {
        self.driver.abort();
    }

    /// Sends DISCONNECT and gives the driver a moment to flush it.
    pub async fn disconnect(mut self) {
        if self.send(Packet::Disconnect).is_ok() {
            let _ = timeout(Duration::from_millis(500), async {
                while let Some(notice) = self.notices.recv().await {
                    if matches!(notice, Notice::Closed(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Packet identifiers are non-zero [MQTT-2.3.1-1]; one device has at most
    /// one exchange in flight, so wrapping cannot collide.
    fn packet_id(&mut self) -> u16 {
        self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
        self.last_packet_id
    }

    fn send(&self, packet: Packet) -> Result<(), SessionError> {
        self.outgoing.send(Box::new(packet)).map_err(|_| closed())
    }

    async fn wait_for(
        &mut self,
        what: &str,
        wanted: impl Fn(&Notice) -> bool,
    ) -> Result<(), SessionError> {
        let deadline = Instant::now() + self.step_timeout;
        loop {
            let notice = timeout_at(deadline, self.notices.recv())
                .await
                .map_err(|_| SessionError::timeout(what))?;
            match notice {
                Some(n) if wanted(&n) => return Ok(()),
                Some(Notice::Message(message)) => self.hold(*message),
                Some(Notice::Closed(error)) => return Err(error),
                None => return Err(closed()),
                Some(_) => {}
            }
        }
    }
}

/// A TCP connection to the broker, from the next source address if any.
async fn open_tcp(
    settings: &ConnectSettings,
    deadline: Instant,
) -> Result<TcpStream, SessionError> {
    let source = settings.sources.next();
    let broker = resolve(&settings.endpoint, source).await?;
    let socket = match broker {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| connection_error("cannot open a socket", &e))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| connection_error(&format!("cannot bind source address {source}"), &e))?;
    }
    let tcp = timeout_at(deadline, socket.connect(broker))
        .await
        .map_err(|_| SessionError::timeout("TCP connection"))?
        .map_err(|e| connection_error(&format!("cannot connect to {broker}"), &e))?;
    // Small request/reply packets: without this, Nagle's algorithm and
    // delayed ACKs add tens of milliseconds to every exchange.
    tcp.set_nodelay(true)
        .map_err(|e| connection_error("cannot set TCP_NODELAY", &e))?;
    Ok(tcp)
}

/// The broker's address, of the source address's family when there is one.
async fn resolve(endpoint: &Endpoint, source: Option<IpAddr>) -> Result<SocketAddr, SessionError> {
    let addresses = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| connection_error(&format!("cannot resolve {}", endpoint.host), &e))?;
    let mut fitting = addresses.filter(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()));
    fitting.next().ok_or_else(|| {
        SessionError::new(
            FailureReason::Connection,
            format!(
                "{} has no address of the source address's family",
                endpoint.host
            ),
        )
    })
}

/// The client side of the TLS handshake; any failure here is the server
/// refusing us or us refusing the server. Its errors name the endpoint, since
/// a wrong one (down, not TLS, a certificate for another name) is the usual
/// cause.
///
/// `first_packet` is handed to rustls before the handshake starts: rustls
/// holds application data until the handshake is complete and then sends it
/// right behind the client's Finished, in the same write, instead of in a
/// write (and a read on the broker's side) of its own. It is never sent
/// earlier: 0-RTT early data is off.
async fn handshake(
    endpoint: &Endpoint,
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
    first_packet: &[u8],
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, SessionError> {
    let Endpoint { host, port } = endpoint;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        SessionError::new(
            FailureReason::TlsRefused,
            format!("bad server name {host}: {e}"),
        )
    })?;
    let mut queued = Ok(());
    let connecting = TlsConnector::from(tls).connect_with(name, tcp, |connection| {
        queued = connection.writer().write_all(first_packet);
    });
    queued.map_err(|e| connection_error("cannot queue the CONNECT packet", &e))?;
    timeout_at(deadline, connecting)
        .await
        .map_err(|_| SessionError::timeout(&format!("TLS handshake with {host}:{port}")))?
        .map_err(|e| {
            let detail = format!("TLS handshake with {host}:{port}: {e}");
            SessionError::new(FailureReason::TlsRefused, detail)
        })
}

/// The encoded CONNECT with a clean session, sent with the handshake.
fn connect_packet(
    codec: &mut Codec,
    client_id: &str,
    keep_alive: Duration,
) -> Result<bytes::BytesMut, SessionError> {
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
    connect.keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.clean_session = true;
    let mut packet = bytes::BytesMut::new();
    codec
        .encode(Packet::Connect(connect), &mut packet)
        .map_err(|e| classify(&e))?;
    Ok(packet)
}

/// The CONNACK to the CONNECT sent with the handshake. With TLS 1.3 a refused
/// client certificate shows up here, as an alert on the first read.
async fn read_connack(wire: &mut Wire, deadline: Instant) -> Result<(), SessionError> {
    let reply = timeout_at(deadline, wire.next())
        .await
        .map_err(|_| SessionError::timeout("CONNACK"))?;
    match reply {
        Some(Ok(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => Ok(()),
        Some(Ok(Packet::ConnAck(ack))) => Err(SessionError::new(
            FailureReason::MqttRefused,
            format!("connection refused: {:?}", ack.code),
        )),
        Some(Ok(other)) => Err(SessionError::new(
            FailureReason::Protocol,
            format!("expected CONNACK, got {other:?}"),
        )),
        Some(Err(error)) => Err(classify(&error)),
        None => Err(closed()),
    }
}

/// Owns the socket until the connection ends: writes queued packets, reads
/// and answers the broker, and pings when nothing was sent for a keep-alive
/// period [MQTT-3.1.2-23].
async fn drive(
    mut wire: Wire,
    mut queued: mpsc::UnboundedReceiver<Box<Packet>>,
    notices: mpsc::UnboundedSender<Notice>,
    keep_alive: Duration,
) {
    let mut ping_due = Instant::now() + keep_alive;
    let mut awaiting_pong = false;
    let end = loop {
        tokio::select! {
            packet = queued.recv() => {
                let Some(packet) = packet else { return };
                let leaving = matches!(*packet, Packet::Disconnect);
                if let Err(error) = wire.send(*packet).await {
                    break classify(&error);
                }
                if leaving {
                    break closed();
                }
                ping_due = Instant::now() + keep_alive;
            }
            incoming = wire.next() => {
                let packet = match incoming {
                    Some(Ok(packet)) => packet,
                    Some(Err(error)) => break classify(&error),
                    None => break closed(),
                };
                if matches!(packet, Packet::PingResp) {
                    awaiting_pong = false;
                }
                match answer(&mut wire, packet).await {
                    Ok(Some(notice)) => {
                        if notices.send(notice).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => break error,
                }
            }
            () = sleep_until(ping_due) => {
                if awaiting_pong {
                    break SessionError::new(FailureReason::Timeout, "no PINGRESP within keep-alive");
                }
                if let Err(error) = wire.send(Packet::PingReq).await {
                    break classify(&error);
                }
                awaiting_pong = true;
                ping_due = Instant::now() + keep_alive;
            }
        }
    };
    let _ = notices.send(Notice::Closed(end));
}

/// What the device hears of one packet from the broker; QoS 1 deliveries
/// are acknowledged here [MQTT-4.3.2-2].
async fn answer(wire: &mut Wire, packet: Packet) -> Result<Option<Notice>, SessionError> {
    let notice = match packet {
        Packet::SubAck(ack) => Notice::SubAck(ack.pkid),
        Packet::PubAck(ack) => Notice::PubAck(ack.pkid),
        Packet::Publish(publish) => {
            if publish.qos == QoS::AtLeastOnce {
                let ack = Packet::PubAck(PubAck::new(publish.pkid));
                wire.send(ack).await.map_err(|e| classify(&e))?;
            }
            Notice::Message(Box::new((publish.topic, publish.payload)))
        }
        _ => return Ok(None),
    };
    Ok(Some(notice))
}

fn closed() -> SessionError {
    SessionError::new(FailureReason::Connection, "connection closed")
}

fn connection_error(what: &str, error: &std::io::Error) -> SessionError {
    let reason = match error.kind() {
        std::io::ErrorKind::TimedOut => FailureReason::Timeout,
        _ => FailureReason::Connection,
    };
    SessionError::new(reason, format!("{what}: {error}"))
}

/// Maps a read or write failure onto the bounded failure reasons. A TLS 1.3
/// server refuses a client certificate after the client has finished its
/// side of the handshake, so the refusal surfaces as a fatal alert on a
/// later read.
pub fn classify(error: &PacketError) -> SessionError {
    match error {
        PacketError::Io(io) if carries_tls_alert(io) => {
            SessionError::new(FailureReason::TlsRefused, error.to_string())
        }
        PacketError::Io(io) => connection_error("connection", io),
        other => SessionError::new(FailureReason::Protocol, other.to_string()),
    }
}

/// Whether a fatal TLS alert from the server is inside the I/O error.
fn carries_tls_alert(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)))
}
