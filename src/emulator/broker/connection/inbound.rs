//! What a connection does with each packet its client sends, and with each message queued
//! for it: the publish, subscribe and delivery rules of IoT Core, the same for both protocol
//! versions except where MQTT 5 can answer with a reason code instead of closing.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::time::Instant;
use tracing::debug;

use super::{CloseReason, Connection};
use crate::emulator::broker::codec::{CodecError, Inbound};
use crate::emulator::broker::metric;
use crate::emulator::broker::packet::{
    Granted, OutboundPublish, Protocol, PublishRequest, Reason, Reply, Request,
};
use crate::emulator::broker::router::Delivery;
use crate::emulator::broker::session::{SubscriptionLimit, granted_qos, min_qos};
use crate::emulator::policy::Action;
use crate::emulator::topic;

impl Connection {
    pub(super) async fn on_frame(
        &mut self,
        frame: Option<Result<Inbound, CodecError>>,
    ) -> Result<(), CloseReason> {
        let request = match frame {
            None => return Err(CloseReason::ConnectionLost(None)),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(Inbound::UnsupportedProtocol { .. })) => {
                return Err(CloseReason::ProtocolViolation(
                    "second CONNECT [MQTT-3.1.0-2]",
                ));
            }
            Some(Ok(Inbound::Request(request))) => request,
        };
        self.last_heard = Instant::now();
        self.on_request(request).await
    }

    async fn on_request(&mut self, request: Request) -> Result<(), CloseReason> {
        match request {
            Request::Publish(publish) => self.on_publish(publish).await,
            Request::PubAck { pkid } => {
                self.session.acknowledge(pkid);
                Ok(())
            }
            Request::Subscribe {
                pkid,
                filters,
                subscription_id,
            } => self.on_subscribe(pkid, filters, subscription_id).await,
            Request::Unsubscribe { pkid, filters } => self.on_unsubscribe(pkid, filters).await,
            Request::PingReq => self.send(Reply::PingResp).await,
            Request::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(secs) = session_expiry {
                    let asked = std::time::Duration::from_secs(u64::from(secs));
                    self.session_expiry = asked.min(self.shared.config.session_expiry);
                }
                Err(CloseReason::ClientDisconnect { with_will })
            }
            Request::Connect(_) => Err(CloseReason::ProtocolViolation(
                "second CONNECT [MQTT-3.1.0-2]",
            )),
            Request::Qos2Flow => Err(CloseReason::Refused {
                reason: Reason::QosNotSupported,
                what: "QoS 2 flow, which AWS IoT does not support",
            }),
            Request::Unexpected => Err(CloseReason::ProtocolViolation(
                "client sent a server-only packet or AUTH",
            )),
        }
    }

    /// A denied request: a 3.1.1 connection closes, as on AWS; MQTT 5 gets 0x87 and stays.
    fn authorize(&self, action: Action, kind: &str, name: &str) -> Result<Reason, CloseReason> {
        if self.authorizer.allows(action, kind, name) {
            return Ok(Reason::Success);
        }
        match self.protocol {
            Protocol::V5 => Ok(Reason::NotAuthorized),
            Protocol::V311 => Err(CloseReason::Forbidden {
                action,
                resource: format!("{kind}/{name}"),
            }),
        }
    }

    async fn on_publish(&mut self, publish: PublishRequest) -> Result<(), CloseReason> {
        if publish.qos == QoS::ExactlyOnce {
            // AWS sends no PUBACK for QoS 2; closing makes the refusal visible at once.
            return Err(CloseReason::Refused {
                reason: Reason::QosNotSupported,
                what: "QoS 2 PUBLISH, which AWS IoT does not support",
            });
        }
        let topic = self.resolve_alias(&publish)?;
        topic::validate_topic_name(&topic).map_err(CloseReason::InvalidTopic)?;
        if publish.retain && topic.starts_with('$') {
            return Err(CloseReason::Refused {
                reason: Reason::RetainNotSupported,
                what: "retained PUBLISH to a reserved $ topic",
            });
        }
        let mut code = self.authorize(Action::Publish, "topic", &topic)?;
        if code == Reason::Success && publish.retain {
            code = self.authorize(Action::RetainPublish, "topic", &topic)?;
        }
        if code == Reason::Success {
            metric::message("inbound");
            self.dispatch(&topic, publish.payload, publish.qos, publish.retain)
                .await;
        }
        if publish.qos == QoS::AtLeastOnce {
            let ack = Reply::PubAck {
                pkid: publish.pkid,
                code,
            };
            self.send(ack).await?;
        }
        Ok(())
    }

    /// The topic of an MQTT 5 publish that may name it by alias (1 to the announced
    /// maximum) [MQTT-3.3.2-8].
    fn resolve_alias(&mut self, publish: &PublishRequest) -> Result<String, CloseReason> {
        let Some(alias) = publish.topic_alias else {
            return Ok(publish.topic.clone());
        };
        let invalid = CloseReason::Refused {
            reason: Reason::TopicAliasInvalid,
            what: "topic alias outside 1..=topic alias maximum, or never set",
        };
        if alias == 0 || alias > self.shared.config.topic_alias_maximum {
            return Err(invalid);
        }
        if publish.topic.is_empty() {
            return self.aliases.get(&alias).cloned().ok_or(invalid);
        }
        self.aliases.insert(alias, publish.topic.clone());
        Ok(publish.topic.clone())
    }

    /// Hands a publish to Fleet Provisioning, whose reply goes to this connection only;
    /// anything else is retained if asked and routed to subscribers.
    async fn dispatch(&mut self, topic: &str, payload: Bytes, qos: QoS, retain: bool) {
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
            None => self.shared.publish(topic, &payload, qos, retain),
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
            retain: false,
        };
        if !self.handle.offer(delivery) {
            metric::dropped(1);
        }
    }

    pub(super) async fn deliver(&mut self, delivery: Delivery) -> Result<(), CloseReason> {
        if !self
            .authorizer
            .allows(Action::Receive, "topic", &delivery.topic)
        {
            return Ok(());
        }
        let mut pkid = 0;
        if delivery.qos == QoS::AtLeastOnce {
            let Some(packet_id) = self.session.allocate_packet_id(&delivery) else {
                metric::dropped(1);
                return Ok(());
            };
            pkid = packet_id;
        }
        let publish = OutboundPublish {
            topic: delivery.topic,
            payload: delivery.payload,
            qos: delivery.qos,
            retain: delivery.retain,
            pkid,
            dup: false,
        };
        self.send(Reply::Publish(publish)).await?;
        metric::message("outbound");
        Ok(())
    }

    async fn on_subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, QoS)>,
        subscription_id: bool,
    ) -> Result<(), CloseReason> {
        if filters.len() > self.shared.config.max_filters_per_subscribe {
            return Err(CloseReason::Refused {
                reason: Reason::QuotaExceeded,
                what: "more topic filters in one SUBSCRIBE than AWS allows",
            });
        }
        if subscription_id {
            let refused = Granted::Refused(Reason::SubscriptionIdsNotSupported);
            let codes = vec![refused; filters.len()];
            return self.send(Reply::SubAck { pkid, codes }).await;
        }
        let mut codes = Vec::with_capacity(filters.len());
        for (filter, qos) in &filters {
            codes.push(self.subscribe_one(filter, *qos)?);
        }
        let granted: Vec<(String, QoS)> = filters
            .into_iter()
            .zip(&codes)
            .filter_map(|((filter, _), code)| match code {
                Granted::Qos(qos) => Some((filter, *qos)),
                Granted::Refused(_) => None,
            })
            .collect();
        self.send(Reply::SubAck { pkid, codes }).await?;
        self.queue_retained(&granted);
        Ok(())
    }

    fn subscribe_one(&mut self, filter: &str, requested: QoS) -> Result<Granted, CloseReason> {
        if let Err(error) = topic::validate_topic_filter(filter) {
            return match self.protocol {
                Protocol::V5 => Ok(Granted::Refused(Reason::TopicFilterInvalid)),
                Protocol::V311 => Err(CloseReason::InvalidTopic(error)),
            };
        }
        let code = self.authorize(Action::Subscribe, "topicfilter", filter)?;
        if code != Reason::Success {
            return Ok(Granted::Refused(code));
        }
        let qos = granted_qos(requested);
        match self.session.subscribe(filter, qos) {
            Ok(()) => {
                self.shared.router.subscribe(self.handle.id, filter, qos);
                Ok(Granted::Qos(qos))
            }
            Err(SubscriptionLimit { limit }) => {
                debug!(filter, limit, "subscription refused: limit reached");
                Ok(Granted::Refused(Reason::QuotaExceeded))
            }
        }
    }

    /// Queues, after the SUBACK, the retained message of every new filter that names its
    /// topic exactly.
    fn queue_retained(&mut self, granted: &[(String, QoS)]) {
        for (filter, qos) in granted {
            let Some(retained) = self.shared.retained.for_filter(filter) else {
                continue;
            };
            let delivery = Delivery {
                topic: filter.as_str().into(),
                payload: retained.payload,
                qos: min_qos(retained.qos, *qos),
                retain: true,
            };
            if !self.handle.offer(delivery) {
                metric::dropped(1);
            }
        }
    }

    async fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) -> Result<(), CloseReason> {
        let mut found = Vec::with_capacity(filters.len());
        for filter in &filters {
            let removed = self.session.unsubscribe(filter);
            if removed {
                self.shared.router.unsubscribe(self.handle.id, filter);
            }
            found.push(removed);
        }
        self.send(Reply::UnsubAck { pkid, found }).await
    }
}
