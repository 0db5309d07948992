//! Lifecycle events through the real broker: an observer subscribed to
//! `$aws/events/presence/#` sees connects and disconnects with AWS's payload fields and
//! disconnect reasons.

// Shared with tests/broker.rs, which uses the rest of it.
mod broker_support;

use broker_support::*;
use fleetsim::emulator::registry::CertificateStatus;
use rumqttc::QoS;
use serde_json::Value;

async fn next_event(observer: &mut TestClient) -> (String, Value) {
    let publish = observer.next_publish().await;
    let payload = serde_json::from_slice(&publish.payload).expect("lifecycle payload is JSON");
    (publish.topic, payload)
}

#[tokio::test]
async fn a_connect_and_a_clean_disconnect_are_announced_with_aws_fields() {
    let emulator = Emulator::start();
    let mut observer =
        TestClient::connect(emulator.addr(), "observer", &emulator.active_device()).await;
    observer
        .subscribe("$aws/events/presence/#", QoS::AtLeastOnce)
        .await;
    let device = emulator.active_device();

    let client = TestClient::connect(emulator.addr(), "sensor-7", &device).await;
    let (topic, connected) = next_event(&mut observer).await;
    client.client.disconnect().await.expect("queue disconnect");
    let (disconnect_topic, disconnected) = next_event(&mut observer).await;

    assert_eq!(topic, "$aws/events/presence/connected/sensor-7");
    assert_eq!(connected["clientId"], "sensor-7");
    assert_eq!(connected["eventType"], "connected");
    assert_eq!(connected["principalIdentifier"], device.id.as_str());
    assert_eq!(connected["ipAddress"], "127.0.0.1");
    assert!(connected["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        disconnect_topic,
        "$aws/events/presence/disconnected/sensor-7"
    );
    assert_eq!(disconnected["eventType"], "disconnected");
    assert_eq!(
        disconnected["disconnectReason"],
        "CLIENT_INITIATED_DISCONNECT"
    );
    assert_eq!(disconnected["clientInitiatedDisconnect"], true);
    assert_eq!(
        disconnected["sessionIdentifier"],
        connected["sessionIdentifier"]
    );
    assert_eq!(disconnected["versionNumber"], connected["versionNumber"]);
    assert!(disconnected.get("ipAddress").is_none());
}

#[tokio::test]
async fn a_takeover_and_a_revocation_are_announced_with_their_reasons() {
    let emulator = Emulator::start();
    let mut observer =
        TestClient::connect(emulator.addr(), "observer", &emulator.active_device()).await;
    observer
        .subscribe("$aws/events/presence/disconnected/+", QoS::AtLeastOnce)
        .await;
    let first = emulator.active_device();
    let _old = TestClient::connect(emulator.addr(), "dev-1", &first).await;

    let _new = TestClient::connect(emulator.addr(), "dev-1", &emulator.active_device()).await;
    let (_, taken_over) = next_event(&mut observer).await;
    let revoked = emulator.active_device();
    let _doomed = TestClient::connect(emulator.addr(), "dev-2", &revoked).await;
    emulator
        .registry
        .set_certificate_status(&revoked.id, CertificateStatus::Revoked)
        .unwrap();
    let (topic, auth_error) = next_event(&mut observer).await;

    assert_eq!(taken_over["clientId"], "dev-1");
    assert_eq!(taken_over["principalIdentifier"], first.id.as_str());
    assert_eq!(taken_over["disconnectReason"], "DUPLICATE_CLIENTID");
    assert_eq!(taken_over["clientInitiatedDisconnect"], false);
    assert_eq!(topic, "$aws/events/presence/disconnected/dev-2");
    assert_eq!(auth_error["disconnectReason"], "AUTH_ERROR");
}
