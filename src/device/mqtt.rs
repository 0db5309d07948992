//! One MQTT connection of a device, over mutual TLS, through rumqttc.
//!
//! rumqttc's event loop must be polled to make progress; a small driver
//! task polls it and forwards what the device cares about (acks, messages,
//! the end of the connection) to the device task. The driver stops at the
//! first connection error instead of letting rumqttc reconnect on its own:
//! reconnecting is the device's decision, paced by its backoff.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::observe::FailureReason;

/// Where the broker listens, and the name its certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
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

enum Notice {
    Connected,
    SubAck,
    PubAck,
    Message {
        topic: String,
        payload: bytes::Bytes,
    },
    Closed(SessionError),
}

/// A live connection. Dropping it stops the driver and closes the socket.
pub struct Session {
    client: AsyncClient,
    notices: mpsc::UnboundedReceiver<Notice>,
    driver: tokio::task::JoinHandle<()>,
    step_timeout: Duration,
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
}

impl Session {
    /// Opens a TLS connection and completes the MQTT CONNECT handshake.
    pub async fn connect(
        settings: &ConnectSettings,
        client_id: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Session, SessionError> {
        let mut options = MqttOptions::new(
            client_id,
            settings.endpoint.host.clone(),
            settings.endpoint.port,
        );
        options
            .set_keep_alive(settings.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(settings.step_timeout.as_secs().max(1));
        // Small request/reply packets: without this, Nagle's algorithm and
        // delayed ACKs add tens of milliseconds to every exchange.
        network.set_tcp_nodelay(true);
        event_loop.set_network_options(network);
        let (tx, notices) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(event_loop, tx));
        let mut session = Session {
            client,
            notices,
            driver,
            step_timeout: settings.step_timeout,
            held: VecDeque::new(),
        };
        session
            .wait_for("CONNACK", |n| matches!(n, Notice::Connected))
            .await?;
        Ok(session)
    }

    pub async fn subscribe<S: AsRef<str>>(&mut self, filters: &[S]) -> Result<(), SessionError> {
        let filters = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.as_ref().to_owned(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(filters)
            .await
            .map_err(|e| SessionError::new(FailureReason::Connection, e.to_string()))?;
        self.wait_for("SUBACK", |n| matches!(n, Notice::SubAck))
            .await
    }

    /// Publishes and, for QoS 1, waits for the PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<(), SessionError> {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|e| SessionError::new(FailureReason::Connection, e.to_string()))?;
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        self.wait_for("PUBACK", |n| matches!(n, Notice::PubAck))
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
        let deadline = tokio::time::Instant::now() + self.step_timeout;
        loop {
            let notice = tokio::time::timeout_at(deadline, self.notices.recv())
                .await
                .map_err(|_| SessionError::timeout("provisioning reply"))?;
            match notice {
                Some(Notice::Message { topic, payload }) if topic == accepted => {
                    return Ok(Ok(payload));
                }
                Some(Notice::Message { topic, payload }) if topic == rejected => {
                    return Ok(Err(payload));
                }
                Some(Notice::Message { topic, payload }) => self.hold(topic, payload),
                Some(Notice::Closed(error)) => return Err(error),
                None => return Err(closed()),
                Some(_) => {}
            }
        }
    }

    fn hold(&mut self, topic: String, payload: bytes::Bytes) {
        if self.held.len() == MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back((topic, payload));
    }

    /// The next message delivered to this connection within `wait`, if any.
    pub async fn next_message(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(String, bytes::Bytes)>, SessionError> {
        if let Some(held) = self.held.pop_front() {
            return Ok(Some(held));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.notices.recv()).await {
                Err(_) => return Ok(None),
                Ok(Some(Notice::Message { topic, payload })) => return Ok(Some((topic, payload))),
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
                Notice::Message { topic, payload } => self.hold(topic, payload),
                _ => {}
            }
        }
        self.driver.is_finished().then(closed)
    }

    /// Sends DISCONNECT and gives the driver a moment to flush it.
    pub async fn disconnect(mut self) {
        if self.client.disconnect().await.is_ok() {
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

    async fn wait_for(
        &mut self,
        what: &str,
        wanted: impl Fn(&Notice) -> bool,
    ) -> Result<(), SessionError> {
        let deadline = tokio::time::Instant::now() + self.step_timeout;
        loop {
            let notice = tokio::time::timeout_at(deadline, self.notices.recv())
                .await
                .map_err(|_| SessionError::timeout(what))?;
            match notice {
                Some(n) if wanted(&n) => return Ok(()),
                Some(Notice::Message { topic, payload }) => self.hold(topic, payload),
                Some(Notice::Closed(error)) => return Err(error),
                None => return Err(closed()),
                Some(_) => {}
            }
        }
    }
}

async fn drive(mut event_loop: EventLoop, tx: mpsc::UnboundedSender<Notice>) {
    loop {
        let notice = match event_loop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => Notice::Connected,
            Ok(Event::Incoming(Incoming::SubAck(_))) => Notice::SubAck,
            Ok(Event::Incoming(Incoming::PubAck(_))) => Notice::PubAck,
            Ok(Event::Incoming(Incoming::Publish(p))) => Notice::Message {
                topic: p.topic,
                payload: p.payload,
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Notice::Closed(closed()));
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                let _ = tx.send(Notice::Closed(classify(&error)));
                return;
            }
        };
        if tx.send(notice).is_err() {
            return;
        }
    }
}

fn closed() -> SessionError {
    SessionError::new(FailureReason::Connection, "connection closed")
}

/// Maps rumqttc's error onto the bounded failure reasons. A TLS 1.3 server
/// refuses a client certificate after the client has finished its side of
/// the handshake, so the refusal surfaces as a fatal alert on the first read,
/// wrapped in however many layers of rumqttc's state and codec errors.
pub fn classify(error: &ConnectionError) -> SessionError {
    let reason = match error {
        ConnectionError::ConnectionRefused(_) => FailureReason::MqttRefused,
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => FailureReason::Timeout,
        ConnectionError::Tls(_) => FailureReason::TlsRefused,
        other if carries_tls_alert(other) => FailureReason::TlsRefused,
        _ => FailureReason::Connection,
    };
    SessionError::new(reason, error.to_string())
}

/// Whether a fatal TLS alert from the server is somewhere in the error.
/// rumqttc keeps some inner errors only in its message, not as a `source`,
/// so the message is the fallback.
fn carries_tls_alert(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        let alert = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
        if alert {
            return true;
        }
        current = e.source();
    }
    error.to_string().contains("received fatal alert")
}
