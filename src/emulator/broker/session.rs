//! One connection's MQTT protocol state, kept apart from the network: its subscriptions,
//! outbound QoS 1 packet ids awaiting PUBACK, and the AWS rules for client ids and keep-alive.
//! Everything here is decided without I/O, so it is tested without sockets.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;

use super::router::Delivery;
use crate::emulator::topic;

/// AWS's limit on a client id, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Why a client id is refused (CONNACK 0x02); the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("client sent an empty client id")]
    Empty,
    #[error("client sent a client id of {len} bytes, more than the {max} AWS allows")]
    TooLong { len: usize, max: usize },
    #[error("client sent a client id starting with the reserved '$'")]
    Reserved,
}

/// Checks a client id against AWS's rules. An empty id is refused although MQTT 3.1.1 lets
/// the server assign one [MQTT-3.1.3-6]: IoT Core policies need a known id.
pub fn validate_client_id(client_id: &str) -> Result<(), ClientIdError> {
    if client_id.is_empty() {
        return Err(ClientIdError::Empty);
    }
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(ClientIdError::TooLong {
            len: client_id.len(),
            max: MAX_CLIENT_ID_BYTES,
        });
    }
    if client_id.starts_with('$') {
        return Err(ClientIdError::Reserved);
    }
    Ok(())
}

/// The keep-alive bounds applied to what a client asks for (AWS: 30 s to 1200 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveClamp {
    pub min: Duration,
    pub max: Duration,
}

impl Default for KeepAliveClamp {
    fn default() -> Self {
        KeepAliveClamp {
            min: Duration::from_secs(30),
            max: Duration::from_secs(1200),
        }
    }
}

impl KeepAliveClamp {
    /// The keep-alive the broker applies. Zero (no keep-alive) and anything above the
    /// maximum become the maximum, as on AWS.
    pub fn clamp(&self, requested_secs: u16) -> Duration {
        let requested = Duration::from_secs(u64::from(requested_secs));
        if requested.is_zero() || requested > self.max {
            self.max
        } else {
            requested.max(self.min)
        }
    }

    /// How long the client may stay silent: 1.5 times its clamped keep-alive.
    pub fn timeout(&self, requested_secs: u16) -> Duration {
        self.clamp(requested_secs) * 3 / 2
    }
}

/// The QoS granted for a requested QoS: IoT Core has no QoS 2, and a SUBSCRIBE asking for it
/// is granted QoS 1 as [MQTT-3.8.4-6] permits.
pub fn granted_qos(requested: QoS) -> QoS {
    match requested {
        QoS::ExactlyOnce => QoS::AtLeastOnce,
        other => other,
    }
}

/// The lower of two QoS levels: what a subscriber gets for a message [MQTT-3.8.4-6].
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

/// The connection already holds as many subscriptions as allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client already holds {limit} subscriptions, the most AWS allows per connection")]
pub struct SubscriptionLimit {
    pub limit: usize,
}

/// The MQTT session state that outlives a connection when the session is persistent: the
/// subscriptions and the QoS 1 messages sent but not yet acknowledged.
#[derive(Debug)]
pub struct Session {
    subscriptions: BTreeMap<String, QoS>,
    max_subscriptions: usize,
    inflight: BTreeMap<u16, Delivery>,
    max_inflight: usize,
    next_packet_id: u16,
}

impl Session {
    pub fn new(max_subscriptions: usize, max_inflight: usize) -> Session {
        Session {
            subscriptions: BTreeMap::new(),
            max_subscriptions,
            inflight: BTreeMap::new(),
            max_inflight: max_inflight.clamp(1, usize::from(u16::MAX)),
            next_packet_id: 1,
        }
    }

    /// Applies the limits of the connection that resumes this session.
    pub fn set_max_inflight(&mut self, max_inflight: usize) {
        self.max_inflight = max_inflight.clamp(1, usize::from(u16::MAX));
    }

    /// The unacknowledged messages, to send again with DUP set after a reconnect
    /// [MQTT-4.4.0-1].
    pub fn unacknowledged(&self) -> impl Iterator<Item = (u16, &Delivery)> {
        self.inflight.iter().map(|(id, delivery)| (*id, delivery))
    }

    /// Adds or replaces a subscription; a replacement never counts against the limit.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), SubscriptionLimit> {
        let is_new = !self.subscriptions.contains_key(filter);
        if is_new && self.subscriptions.len() >= self.max_subscriptions {
            return Err(SubscriptionLimit {
                limit: self.max_subscriptions,
            });
        }
        self.subscriptions.insert(filter.to_owned(), qos);
        Ok(())
    }

    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        self.subscriptions.remove(filter).is_some()
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.subscriptions.keys().map(String::as_str)
    }

    /// The highest QoS among this connection's subscriptions matching `topic`, if any.
    pub fn subscription_for(&self, topic: &str) -> Option<QoS> {
        self.subscriptions
            .iter()
            .filter(|(filter, _)| topic::matches(filter, topic))
            .map(|(_, qos)| *qos)
            .reduce(|a, b| if (a as u8) >= (b as u8) { a } else { b })
    }

    /// Whether another QoS 1 message may be sent before a PUBACK arrives.
    pub fn can_send(&self) -> bool {
        self.inflight.len() < self.max_inflight
    }

    /// A free packet id for an outbound QoS 1 message, now awaiting its PUBACK.
    pub fn allocate_packet_id(&mut self, delivery: &Delivery) -> Option<u16> {
        if !self.can_send() {
            return None;
        }
        while self.inflight.contains_key(&self.next_packet_id) {
            self.advance_packet_id();
        }
        let id = self.next_packet_id;
        self.inflight.insert(id, delivery.clone());
        self.advance_packet_id();
        Some(id)
    }

    fn advance_packet_id(&mut self) {
        // Packet id 0 is not allowed [MQTT-2.3.1-1].
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
    }

    /// Records a PUBACK; false when no message with that id was awaiting one.
    pub fn acknowledge(&mut self, packet_id: u16) -> bool {
        self.inflight.remove(&packet_id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_follow_aws_rules() {
        assert_eq!(validate_client_id("device-1"), Ok(()));
        assert_eq!(validate_client_id(&"x".repeat(128)), Ok(()));
        assert_eq!(validate_client_id(""), Err(ClientIdError::Empty));
        assert_eq!(validate_client_id("$me"), Err(ClientIdError::Reserved));
        let long = validate_client_id(&"x".repeat(129));
        assert_eq!(long, Err(ClientIdError::TooLong { len: 129, max: 128 }));
    }

    #[test]
    fn keep_alive_is_clamped_like_aws_then_scaled_by_one_and_a_half() {
        let clamp = KeepAliveClamp::default();
        assert_eq!(clamp.timeout(60), Duration::from_secs(90));
        assert_eq!(clamp.timeout(0), Duration::from_secs(1800));
        assert_eq!(clamp.timeout(1201), Duration::from_secs(1800));
        assert_eq!(clamp.timeout(5), Duration::from_secs(45));
        let short = KeepAliveClamp {
            min: Duration::from_secs(1),
            max: Duration::from_secs(2),
        };
        assert_eq!(short.timeout(1), Duration::from_millis(1500));
    }

    #[test]
    fn qos_2_subscriptions_are_granted_qos_1() {
        assert_eq!(granted_qos(QoS::ExactlyOnce), QoS::AtLeastOnce);
        assert_eq!(granted_qos(QoS::AtMostOnce), QoS::AtMostOnce);
        assert_eq!(min_qos(QoS::AtLeastOnce, QoS::AtMostOnce), QoS::AtMostOnce);
    }

    #[test]
    fn the_subscription_limit_counts_distinct_filters() {
        let mut session = Session::new(2, 10);
        assert_eq!(session.subscribe("a", QoS::AtMostOnce), Ok(()));
        assert_eq!(session.subscribe("b", QoS::AtMostOnce), Ok(()));
        assert_eq!(session.subscribe("a", QoS::AtLeastOnce), Ok(()));
        assert_eq!(
            session.subscribe("c", QoS::AtMostOnce),
            Err(SubscriptionLimit { limit: 2 })
        );
        assert!(session.unsubscribe("b"));
        assert_eq!(session.subscribe("c", QoS::AtMostOnce), Ok(()));
    }

    #[test]
    fn the_highest_matching_subscription_decides_the_qos() {
        let mut session = Session::new(50, 10);
        session
            .subscribe("$aws/certificates/create/json/+", QoS::AtMostOnce)
            .unwrap();
        session
            .subscribe("$aws/certificates/#", QoS::AtLeastOnce)
            .unwrap();
        let topic = "$aws/certificates/create/json/accepted";
        assert_eq!(session.subscription_for(topic), Some(QoS::AtLeastOnce));
        assert_eq!(session.subscription_for("other/topic"), None);
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let delivery = Delivery {
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let mut session = Session::new(50, 3);
        session.next_packet_id = u16::MAX;
        assert_eq!(session.allocate_packet_id(&delivery), Some(u16::MAX));
        assert_eq!(session.allocate_packet_id(&delivery), Some(1));
        assert_eq!(session.allocate_packet_id(&delivery), Some(2));
        assert_eq!(session.allocate_packet_id(&delivery), None);
        assert!(session.acknowledge(1));
        assert!(!session.acknowledge(1));
        assert_eq!(session.unacknowledged().count(), 2);
        session.next_packet_id = 2;
        assert_eq!(session.allocate_packet_id(&delivery), Some(3));
    }
}
