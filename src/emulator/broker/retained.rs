//! Retained messages, one per topic, as IoT Core keeps them: a zero-byte retained publish
//! deletes the topic's message, and a new subscription receives one only when its filter is
//! exactly that topic (wildcard filters get none) [aws-iot-facts §7].

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub payload: Bytes,
    pub qos: QoS,
}

#[derive(Debug, Default)]
pub struct RetainedMessages {
    messages: RwLock<HashMap<String, Retained>>,
}

impl RetainedMessages {
    /// Stores the topic's message, or deletes it when the payload is empty.
    pub fn store(&self, topic: &str, payload: &Bytes, qos: QoS) {
        // Each write is one map call, so a poisoned map is still consistent.
        let mut messages = self
            .messages
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if payload.is_empty() {
            messages.remove(topic);
        } else {
            let retained = Retained {
                payload: payload.clone(),
                qos,
            };
            messages.insert(topic.to_owned(), retained);
        }
    }

    /// The message a new subscription to `filter` receives: only a filter without wildcards
    /// that equals a retained topic gets one.
    pub fn for_filter(&self, filter: &str) -> Option<Retained> {
        if filter.contains(['+', '#']) {
            return None;
        }
        self.messages
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(filter)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.messages
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_topic_filter_gets_the_retained_message() {
        let retained = RetainedMessages::default();
        retained.store("a/b", &Bytes::from_static(b"x"), QoS::AtLeastOnce);
        assert_eq!(
            retained.for_filter("a/b").map(|r| r.payload),
            Some(Bytes::from_static(b"x"))
        );
        assert_eq!(retained.for_filter("a/+"), None);
        assert_eq!(retained.for_filter("a/#"), None);
    }

    #[test]
    fn an_empty_retained_publish_deletes_the_message() {
        let retained = RetainedMessages::default();
        retained.store("a/b", &Bytes::from_static(b"x"), QoS::AtMostOnce);
        retained.store("a/b", &Bytes::new(), QoS::AtMostOnce);
        assert_eq!(retained.for_filter("a/b"), None);
        assert_eq!(retained.len(), 0);
    }
}
