//! AWS IoT lifecycle events: every accepted connection is announced on
//! `$aws/events/presence/connected/<clientId>` and its end on
//! `.../disconnected/<clientId>`, with AWS's payload fields [aws-iot-facts §5.4].
//!
//! Where AWS is vague, the choices are ours: `versionNumber` is the broker's connection
//! number, which grows with every connection and so orders the events of one client id;
//! `thingName` is never sent, because the emulator has no exclusive thing association.

use std::net::IpAddr;
use std::time::SystemTime;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use serde_json::json;

use super::router::Router;

/// What the two events of one connection share.
pub(super) struct Presence {
    client_id: String,
    certificate_id: String,
    session_id: String,
    ip: Option<IpAddr>,
    version: u64,
}

impl Presence {
    pub fn new(client_id: &str, certificate_id: &str, ip: Option<IpAddr>, version: u64) -> Self {
        let session: [u8; 16] = rand::random();
        Presence {
            client_id: client_id.to_owned(),
            certificate_id: certificate_id.to_owned(),
            session_id: session.iter().map(|b| format!("{b:02x}")).collect(),
            ip,
            version,
        }
    }

    pub fn connected(&self, router: &Router) {
        let mut event = self.common("connected");
        event["ipAddress"] = json!(self.ip.map(|ip| ip.to_string()));
        self.publish(router, "connected", event);
    }

    /// `reason` is AWS's `disconnectReason`, such as `CLIENT_INITIATED_DISCONNECT`.
    pub fn disconnected(&self, router: &Router, reason: &str) {
        let mut event = self.common("disconnected");
        event["clientInitiatedDisconnect"] = json!(reason == "CLIENT_INITIATED_DISCONNECT");
        event["disconnectReason"] = json!(reason);
        self.publish(router, "disconnected", event);
    }

    fn common(&self, event_type: &str) -> serde_json::Value {
        json!({
            "clientId": self.client_id,
            "timestamp": now_millis(),
            "eventType": event_type,
            "sessionIdentifier": self.session_id,
            "principalIdentifier": self.certificate_id,
            "versionNumber": self.version,
        })
    }

    fn publish(&self, router: &Router, event_type: &str, event: serde_json::Value) {
        // AWS sends no lifecycle events for client ids holding wildcard characters.
        if self.client_id.contains(['#', '+']) {
            return;
        }
        let topic = format!("$aws/events/presence/{event_type}/{}", self.client_id);
        let payload = Bytes::from(event.to_string());
        let routed = router.route(&topic, &payload, QoS::AtLeastOnce);
        super::metric::dropped(routed.dropped);
    }
}

fn now_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
