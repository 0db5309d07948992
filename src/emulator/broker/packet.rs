//! The broker's own packet vocabulary, the same for MQTT 3.1.1 and MQTT 5: what a client asks
//! ([`Request`]) and what the broker answers ([`Reply`]). The codec translates rumqttc's v4 and
//! v5 packets to and from it, so the connection logic and the router never see a version and
//! a 3.1.1 publisher reaches a 5 subscriber unchanged.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

/// The protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// A CONNECT, with the MQTT 5 properties the broker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub protocol: Protocol,
    pub client_id: String,
    pub keep_alive: u16,
    /// 3.1.1 cleanSession, 5 Clean Start.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds; absent means 0 [MQTT-3.1.2.11.2].
    pub session_expiry: Option<u32>,
    /// MQTT 5 Receive Maximum: how many QoS 1 messages the client accepts in flight.
    pub receive_maximum: Option<u16>,
    pub will: Option<Will>,
}

/// A Last Will message registered at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval in seconds; 0 for 3.1.1.
    pub delay_secs: u32,
}

/// A PUBLISH from a client. `topic` is empty when an MQTT 5 client names it by alias only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub pkid: u16,
    pub topic_alias: Option<u16>,
}

/// Every packet a client may send after the codec has decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Connect(ConnectRequest),
    Publish(PublishRequest),
    PubAck {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS)>,
        /// MQTT 5 Subscription Identifier, which IoT Core does not support.
        subscription_id: bool,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5 reason 0x04: the client wants its will published after all.
        with_will: bool,
        /// MQTT 5 may change the session expiry on DISCONNECT.
        session_expiry: Option<u32>,
    },
    /// PUBREC, PUBREL or PUBCOMP: QoS 2, which IoT Core does not support.
    Qos2Flow,
    /// A packet only a server sends (CONNACK, SUBACK, ...), or AUTH, which IoT Core lacks.
    Unexpected,
}

/// MQTT 5 reason codes the broker uses [MQTT-2.4]. 3.1.1 has no equivalent for most; the
/// codec maps the few that exist (CONNACK return codes, SUBACK failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Success,
    MalformedPacket,
    ProtocolError,
    UnsupportedProtocolVersion,
    ClientIdNotValid,
    NotAuthorized,
    ServerShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    TopicAliasInvalid,
    PacketTooLarge,
    QuotaExceeded,
    AdministrativeAction,
    RetainNotSupported,
    QosNotSupported,
    SubscriptionIdsNotSupported,
}

/// One filter's outcome in a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    Qos(QoS),
    Refused(Reason),
}

/// The limits the broker announces in an MQTT 5 CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub maximum_packet_size: u32,
    /// The session expiry the broker grants, when it differs from the one asked for.
    pub session_expiry: Option<u32>,
    /// The keep-alive the broker applies, when it differs from the one asked for.
    pub server_keep_alive: Option<u16>,
}

/// A PUBLISH to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPublish {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub pkid: u16,
    pub dup: bool,
}

/// Every packet the broker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    ConnAck {
        session_present: bool,
        code: Reason,
        limits: Option<ServerLimits>,
    },
    Publish(OutboundPublish),
    PubAck {
        pkid: u16,
        code: Reason,
    },
    SubAck {
        pkid: u16,
        codes: Vec<Granted>,
    },
    UnsubAck {
        pkid: u16,
        found: Vec<bool>,
    },
    PingResp,
    /// MQTT 5 only; a 3.1.1 connection is closed without a packet.
    Disconnect(Reason),
}
