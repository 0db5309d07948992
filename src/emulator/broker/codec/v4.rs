//! Translation between rumqttc's MQTT 3.1.1 packets and the broker's own vocabulary. 3.1.1
//! has no reason codes outside CONNACK and SUBACK, so the others are dropped here.

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};

use crate::emulator::broker::packet::{
    ConnectRequest, Granted, Protocol, PublishRequest, Reason, Reply, Request, Will,
};

pub fn request(packet: Packet) -> Request {
    match packet {
        Packet::Connect(connect) => Request::Connect(connect_request(connect)),
        Packet::Publish(publish) => Request::Publish(PublishRequest {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            pkid: publish.pkid,
            topic_alias: None,
        }),
        Packet::PubAck(ack) => Request::PubAck { pkid: ack.pkid },
        Packet::Subscribe(subscribe) => Request::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos))
                .collect(),
            subscription_id: false,
        },
        Packet::Unsubscribe(unsubscribe) => Request::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
        },
        Packet::PingReq => Request::PingReq,
        Packet::Disconnect => Request::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Request::Qos2Flow,
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            Request::Unexpected
        }
    }
}

fn connect_request(connect: Connect) -> ConnectRequest {
    ConnectRequest {
        protocol: Protocol::V311,
        client_id: connect.client_id,
        keep_alive: connect.keep_alive,
        clean_start: connect.clean_session,
        session_expiry: None,
        receive_maximum: None,
        will: connect.last_will.map(|will| Will {
            topic: will.topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            delay_secs: 0,
        }),
    }
}

/// The 3.1.1 packet for a reply; `None` when 3.1.1 has no such packet (DISCONNECT).
pub fn packet(reply: Reply) -> Option<Packet> {
    let packet = match reply {
        Reply::ConnAck {
            session_present,
            code,
            ..
        } => Packet::ConnAck(ConnAck::new(connect_code(code), session_present)),
        Reply::Publish(out) => {
            let mut publish = Publish::from_bytes(out.topic.as_ref(), out.qos, out.payload);
            publish.retain = out.retain;
            publish.pkid = out.pkid;
            publish.dup = out.dup;
            Packet::Publish(publish)
        }
        Reply::PubAck { pkid, .. } => Packet::PubAck(PubAck::new(pkid)),
        Reply::SubAck { pkid, codes } => {
            Packet::SubAck(SubAck::new(pkid, codes.into_iter().map(granted).collect()))
        }
        Reply::UnsubAck { pkid, .. } => Packet::UnsubAck(UnsubAck::new(pkid)),
        Reply::PingResp => Packet::PingResp,
        Reply::Disconnect(_) => return None,
    };
    Some(packet)
}

/// CONNACK return codes of 3.1.1 [MQTT-3.2.2.3]; anything without one is "server unavailable".
fn connect_code(code: Reason) -> ConnectReturnCode {
    match code {
        Reason::Success => ConnectReturnCode::Success,
        Reason::UnsupportedProtocolVersion => ConnectReturnCode::RefusedProtocolVersion,
        Reason::ClientIdNotValid => ConnectReturnCode::BadClientId,
        Reason::NotAuthorized => ConnectReturnCode::NotAuthorized,
        _ => ConnectReturnCode::ServiceUnavailable,
    }
}

fn granted(code: Granted) -> SubscribeReasonCode {
    match code {
        Granted::Qos(QoS::ExactlyOnce) | Granted::Qos(QoS::AtLeastOnce) => {
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        }
        Granted::Qos(QoS::AtMostOnce) => SubscribeReasonCode::Success(QoS::AtMostOnce),
        Granted::Refused(_) => SubscribeReasonCode::Failure,
    }
}
