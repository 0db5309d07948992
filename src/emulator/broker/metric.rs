//! The broker's metrics, by name and bounded label, in one place so that the names stay
//! consistent with the dashboards.

use crate::emulator::policy::Action;

pub fn connection_opened() {
    metrics::gauge!("fleetsim_emulator_connections").increment(1.0);
}

pub fn connection_closed() {
    metrics::gauge!("fleetsim_emulator_connections").decrement(1.0);
}

/// `outcome`: accepted, tls_refused, timeout, protocol_error, unsupported_protocol,
/// bad_client_id, not_authorized.
pub fn connect_outcome(outcome: &'static str) {
    metrics::counter!("fleetsim_emulator_connects_total", "outcome" => outcome).increment(1);
}

/// `reason`: AWS's lifecycle disconnectReason, lowercased.
pub fn disconnect(reason: &'static str) {
    metrics::counter!("fleetsim_emulator_disconnects_total", "reason" => reason).increment(1);
}

pub fn policy_denial(action: Action) {
    let action = match action {
        Action::Connect => "connect",
        Action::Publish => "publish",
        Action::Subscribe => "subscribe",
        Action::Receive => "receive",
        Action::RetainPublish => "retain_publish",
    };
    metrics::counter!("fleetsim_emulator_policy_denials_total", "action" => action).increment(1);
}

/// `direction`: inbound (client to broker) or outbound (broker to client).
pub fn message(direction: &'static str) {
    metrics::counter!("fleetsim_emulator_messages_total", "direction" => direction).increment(1);
}

/// Messages not delivered because the receiver's queue was full.
pub fn dropped(count: usize) {
    if count > 0 {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        metrics::counter!("fleetsim_emulator_messages_dropped_total").increment(count);
    }
}

/// `kind`: decode (undecodable bytes), topic (invalid topic or filter), protocol.
pub fn malformed(kind: &'static str) {
    metrics::counter!("fleetsim_emulator_malformed_packets_total", "kind" => kind).increment(1);
}
