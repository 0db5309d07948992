//! Translation between rumqttc's MQTT 5 packets and the broker's own vocabulary, including
//! the CONNACK properties that tell an MQTT 5 client IoT Core's limits [aws-iot-facts §7].

use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, Packet, PubAck, PubAckReason, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, UnsubAckReason,
};

use crate::emulator::broker::packet::{
    ConnectRequest, Granted, Protocol, PublishRequest, Reason, Reply, Request, ServerLimits, Will,
};

pub fn request(packet: Packet) -> Request {
    match packet {
        Packet::Connect(connect, will, _login) => Request::Connect(connect_request(connect, will)),
        Packet::Publish(publish) => publish_request(publish),
        Packet::PubAck(ack) => Request::PubAck { pkid: ack.pkid },
        Packet::Subscribe(subscribe) => subscribe_request(subscribe),
        Packet::Unsubscribe(unsubscribe) => Request::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.filters,
        },
        Packet::PingReq(_) => Request::PingReq,
        Packet::Disconnect(disconnect) => Request::Disconnect {
            with_will: disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: disconnect
                .properties
                .and_then(|properties| properties.session_expiry_interval),
        },
        Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Request::Qos2Flow,
        Packet::Auth(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp(_) => Request::Unexpected,
    }
}

fn connect_request(connect: Connect, will: Option<LastWill>) -> ConnectRequest {
    let properties = connect.properties.unwrap_or_default();
    ConnectRequest {
        protocol: Protocol::V5,
        client_id: connect.client_id,
        keep_alive: connect.keep_alive,
        clean_start: connect.clean_start,
        session_expiry: properties.session_expiry_interval,
        receive_maximum: properties.receive_maximum,
        will: will.map(will_request),
    }
}

fn will_request(will: LastWill) -> Will {
    Will {
        topic: String::from_utf8_lossy(&will.topic).into_owned(),
        payload: will.message,
        qos: qos(will.qos),
        retain: will.retain,
        delay_secs: will
            .properties
            .and_then(|properties| properties.delay_interval)
            .unwrap_or(0),
    }
}

fn publish_request(publish: Publish) -> Request {
    let topic_alias = publish
        .properties
        .as_ref()
        .and_then(|properties| properties.topic_alias);
    Request::Publish(PublishRequest {
        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: publish.payload,
        qos: qos(publish.qos),
        retain: publish.retain,
        pkid: publish.pkid,
        topic_alias,
    })
}

fn subscribe_request(subscribe: Subscribe) -> Request {
    let subscription_id = subscribe
        .properties
        .as_ref()
        .is_some_and(|properties| properties.id.is_some());
    Request::Subscribe {
        pkid: subscribe.pkid,
        filters: subscribe
            .filters
            .into_iter()
            .map(|filter| (filter.path, qos(filter.qos)))
            .collect(),
        subscription_id,
    }
}

fn qos(qos: Qos5) -> QoS {
    match qos {
        Qos5::AtMostOnce => QoS::AtMostOnce,
        Qos5::AtLeastOnce => QoS::AtLeastOnce,
        Qos5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos5(qos: QoS) -> Qos5 {
    match qos {
        QoS::AtMostOnce => Qos5::AtMostOnce,
        QoS::AtLeastOnce => Qos5::AtLeastOnce,
        QoS::ExactlyOnce => Qos5::ExactlyOnce,
    }
}

pub fn packet(reply: Reply) -> Packet {
    match reply {
        Reply::ConnAck {
            session_present,
            code,
            limits,
        } => Packet::ConnAck(ConnAck {
            session_present,
            code: connect_code(code),
            properties: limits.map(connack_properties),
        }),
        Reply::Publish(out) => {
            let mut publish = Publish::new(out.topic.as_ref(), qos5(out.qos), out.payload, None);
            publish.retain = out.retain;
            publish.pkid = out.pkid;
            publish.dup = out.dup;
            Packet::Publish(publish)
        }
        Reply::PubAck { pkid, code } => Packet::PubAck(PubAck {
            pkid,
            reason: puback_code(code),
            properties: None,
        }),
        Reply::SubAck { pkid, codes } => Packet::SubAck(SubAck {
            pkid,
            return_codes: codes.into_iter().map(granted).collect(),
            properties: None,
        }),
        Reply::UnsubAck { pkid, found } => Packet::UnsubAck(UnsubAck {
            pkid,
            reasons: found.into_iter().map(unsuback_code).collect(),
            properties: None,
        }),
        Reply::PingResp => Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp),
        Reply::Disconnect(code) => {
            // Unreachable through the codec, which writes DISCONNECT itself.
            Packet::Disconnect(Disconnect::new(disconnect_code(code)))
        }
    }
}

/// Retain and wildcard subscriptions are left at their default (available). Subscription
/// Identifiers are not available on IoT Core; shared subscriptions exist on IoT Core but not
/// in the emulator, so both are announced as unavailable.
fn connack_properties(limits: ServerLimits) -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: limits.session_expiry,
        receive_max: Some(limits.receive_maximum),
        max_qos: Some(1),
        retain_available: None,
        max_packet_size: Some(limits.maximum_packet_size),
        assigned_client_identifier: None,
        topic_alias_max: Some(limits.topic_alias_maximum),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: limits.server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

fn connect_code(code: Reason) -> ConnectReturnCode {
    match code {
        Reason::Success => ConnectReturnCode::Success,
        Reason::UnsupportedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
        Reason::ClientIdNotValid => ConnectReturnCode::ClientIdentifierNotValid,
        Reason::NotAuthorized => ConnectReturnCode::NotAuthorized,
        Reason::MalformedPacket => ConnectReturnCode::MalformedPacket,
        Reason::ProtocolError => ConnectReturnCode::ProtocolError,
        Reason::QosNotSupported => ConnectReturnCode::QoSNotSupported,
        Reason::TopicNameInvalid => ConnectReturnCode::TopicNameInvalid,
        Reason::RetainNotSupported => ConnectReturnCode::RetainNotSupported,
        _ => ConnectReturnCode::UnspecifiedError,
    }
}

fn puback_code(code: Reason) -> PubAckReason {
    match code {
        Reason::Success => PubAckReason::Success,
        Reason::NotAuthorized => PubAckReason::NotAuthorized,
        Reason::TopicNameInvalid | Reason::TopicAliasInvalid => PubAckReason::TopicNameInvalid,
        Reason::QuotaExceeded => PubAckReason::QuotaExceeded,
        _ => PubAckReason::UnspecifiedError,
    }
}

fn granted(code: Granted) -> SubscribeReasonCode {
    match code {
        Granted::Qos(qos) => SubscribeReasonCode::Success(qos5(qos)),
        Granted::Refused(Reason::NotAuthorized) => SubscribeReasonCode::NotAuthorized,
        Granted::Refused(Reason::TopicFilterInvalid) => SubscribeReasonCode::TopicFilterInvalid,
        Granted::Refused(Reason::QuotaExceeded) => SubscribeReasonCode::QuotaExceeded,
        Granted::Refused(Reason::SubscriptionIdsNotSupported) => {
            SubscribeReasonCode::SubscriptionIdNotSupported
        }
        Granted::Refused(_) => SubscribeReasonCode::Unspecified,
    }
}

fn unsuback_code(found: bool) -> UnsubAckReason {
    match found {
        true => UnsubAckReason::Success,
        false => UnsubAckReason::NoSubscriptionExisted,
    }
}

/// A DISCONNECT with its reason code and an empty property block. rumqttc's own writer
/// miscounts the remaining length of a DISCONNECT with a reason code, so it is written here.
pub fn write_disconnect(code: Reason, dst: &mut bytes::BytesMut) {
    dst.extend_from_slice(&[0xE0, 2, disconnect_code(code) as u8, 0]);
}

fn disconnect_code(code: Reason) -> DisconnectReasonCode {
    match code {
        Reason::Success => DisconnectReasonCode::NormalDisconnection,
        Reason::MalformedPacket => DisconnectReasonCode::MalformedPacket,
        Reason::ProtocolError => DisconnectReasonCode::ProtocolError,
        Reason::NotAuthorized => DisconnectReasonCode::NotAuthorized,
        Reason::ServerShuttingDown => DisconnectReasonCode::ServerShuttingDown,
        Reason::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
        Reason::SessionTakenOver => DisconnectReasonCode::SessionTakenOver,
        Reason::TopicFilterInvalid => DisconnectReasonCode::TopicFilterInvalid,
        Reason::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
        Reason::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
        Reason::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
        Reason::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
        Reason::AdministrativeAction => DisconnectReasonCode::AdministrativeAction,
        Reason::RetainNotSupported => DisconnectReasonCode::RetainNotSupported,
        Reason::QosNotSupported => DisconnectReasonCode::QoSNotSupported,
        Reason::SubscriptionIdsNotSupported => {
            DisconnectReasonCode::SubscriptionIdentifiersNotSupported
        }
        _ => DisconnectReasonCode::UnspecifiedError,
    }
}
