//! The Fleet Provisioning service: answers CreateCertificateFromCsr and
//! RegisterThing requests that the broker hands over (placeholder; being
//! written).

use std::sync::Arc;

use super::registry::Registry;

/// Who sent a request: the connection's client id and the id of the
/// certificate it authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub client_id: String,
    pub certificate_id: String,
}

/// A reply to deliver on the requesting connection only, and only if that
/// connection is subscribed to `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
}

pub struct FleetProvisioning {
    pub registry: Arc<Registry>,
}

impl FleetProvisioning {
    /// Handles a PUBLISH on a Fleet Provisioning request topic. Returns
    /// `None` when `topic` is not such a topic, so the broker routes it as
    /// an ordinary message.
    pub async fn handle_publish(&self, peer: &Peer, topic: &str, payload: &[u8]) -> Option<Reply> {
        let _ = (peer, topic, payload);
        None
    }
}
