//! MQTT 5 beside MQTT 3.1.1 on the same listener, with real rumqttc clients of both versions:
//! cross-version delivery, the CONNACK limits, reason codes for policy denials and QoS 2.

mod broker_support;

use broker_support::*;
use fleetsim::emulator::registry::CertificateStatus;
use rumqttc::QoS;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Filter, PubAckReason, SubscribeReasonCode};

/// Allows everything except publishing to and subscribing on `secret/...`.
const NO_SECRETS: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":["iot:Connect","iot:Publish","iot:Subscribe","iot:Receive"],"Resource":"*"},
  {"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/secret/*"},
  {"Effect":"Deny","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/secret/*"}]}"#;

fn no_secrets_device(emulator: &Emulator) -> Credentials {
    emulator
        .registry
        .create_policy("no-secrets", NO_SECRETS)
        .expect("policy");
    emulator.device(CertificateStatus::Active, "no-secrets")
}

#[tokio::test]
async fn a_3_1_1_publisher_reaches_an_mqtt5_subscriber_and_back() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut old = TestClient::connect(emulator.addr(), "old", &device).await;
    let mut new = V5Client::connect(emulator.addr(), "new", &device).await;
    old.subscribe("to/old", QoS::AtLeastOnce).await;
    let codes = new.subscribe("to/new", Qos5::AtLeastOnce).await;
    assert_eq!(codes, [SubscribeReasonCode::Success(Qos5::AtLeastOnce)]);

    old.publish("to/new", QoS::AtLeastOnce, b"from 3.1.1").await;
    let received = new.next_publish().await;
    assert_eq!(
        (&received.topic[..], &received.payload[..], received.qos),
        (&b"to/new"[..], &b"from 3.1.1"[..], Qos5::AtLeastOnce)
    );

    new.publish("to/old", Qos5::AtLeastOnce, b"from 5").await;
    let received = old.next_publish().await;
    assert_eq!(
        (received.topic.as_str(), &received.payload[..], received.qos),
        ("to/old", &b"from 5"[..], QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn the_mqtt5_connack_announces_iot_core_limits() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = V5Client::start_with(emulator.addr(), "limits", &device, |_| {});

    let ack = client.connack().await;

    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!ack.session_present);
    let properties = ack.properties.expect("MQTT 5 CONNACK properties");
    assert_eq!(properties.max_qos, Some(1));
    assert_eq!(properties.receive_max, Some(100));
    assert_eq!(properties.topic_alias_max, Some(8));
    assert_eq!(properties.subscription_identifiers_available, Some(0));
    assert_eq!(properties.max_packet_size, Some(128 * 1024 + 260 + 5));
}

#[tokio::test]
async fn a_denied_mqtt5_publish_gets_not_authorized_and_the_connection_stays() {
    let emulator = Emulator::start();
    let device = no_secrets_device(&emulator);
    let mut client = V5Client::connect(emulator.addr(), "v5-denied", &device).await;
    let denials = counter(
        "fleetsim_emulator_policy_denials_total",
        "action",
        "publish",
    );

    client
        .publish("secret/plans", Qos5::AtLeastOnce, b"x")
        .await;
    assert_eq!(client.next_puback().await, PubAckReason::NotAuthorized);

    client.publish("public/news", Qos5::AtLeastOnce, b"x").await;
    assert_eq!(client.next_puback().await, PubAckReason::Success);
    let after = counter(
        "fleetsim_emulator_policy_denials_total",
        "action",
        "publish",
    );
    assert!(after > denials, "the denial is counted");
}

#[tokio::test]
async fn a_denied_mqtt5_subscribe_gets_not_authorized_for_that_filter_only() {
    let emulator = Emulator::start();
    let device = no_secrets_device(&emulator);
    let mut client = V5Client::connect(emulator.addr(), "v5-sub", &device).await;

    client
        .client
        .subscribe_many([
            Filter::new("public/+", Qos5::AtLeastOnce),
            Filter::new("secret/+", Qos5::AtLeastOnce),
            // Valid MQTT, but deeper than AWS's seven slashes.
            Filter::new("a/b/c/d/e/f/g/h/i", Qos5::AtMostOnce),
        ])
        .await
        .expect("queue subscribe");
    let codes = loop {
        match client.next_packet().await {
            Ok(rumqttc::v5::mqttbytes::v5::Packet::SubAck(ack)) => break ack.return_codes,
            Ok(_) => {}
            Err(error) => panic!("subscribe failed: {error}"),
        }
    };

    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(Qos5::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized,
            SubscribeReasonCode::TopicFilterInvalid,
        ]
    );
    client
        .publish("public/x", Qos5::AtMostOnce, b"still here")
        .await;
    assert_eq!(&client.next_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn a_denied_3_1_1_subscribe_still_closes_the_connection() {
    let emulator = Emulator::start();
    let device = no_secrets_device(&emulator);
    let mut client = TestClient::connect(emulator.addr(), "v4-sub", &device).await;

    client
        .client
        .subscribe("secret/+", QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");

    client.closed().await;
}

#[tokio::test]
async fn a_qos2_publish_closes_3_1_1_and_disconnects_mqtt5_with_qos_not_supported() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut old = TestClient::connect(emulator.addr(), "old-q2", &device).await;
    let mut new = V5Client::connect(emulator.addr(), "new-q2", &device).await;

    old.publish("t", QoS::ExactlyOnce, b"x").await;
    new.publish("t", Qos5::ExactlyOnce, b"x").await;

    old.closed().await;
    let closed = new.closed().await;
    assert!(closed.contains("reason_code: QoSNotSupported"), "{closed}");
}

#[tokio::test]
async fn a_qos2_subscription_is_granted_qos1_on_mqtt5_too() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = V5Client::connect(emulator.addr(), "v5-q2-sub", &device).await;

    let codes = client.subscribe("t/#", Qos5::ExactlyOnce).await;

    assert_eq!(codes, [SubscribeReasonCode::Success(Qos5::AtLeastOnce)]);
}

#[tokio::test]
async fn an_mqtt5_connect_denied_by_policy_gets_connack_not_authorized() {
    let emulator = Emulator::start();
    emulator
        .registry
        .create_policy(
            "no-connect",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*"}]}"#,
        )
        .expect("policy");
    let device = emulator.device(CertificateStatus::Active, "no-connect");
    let mut client = V5Client::start_with(emulator.addr(), "v5-refused", &device, |_| {});

    let error = client.next_packet().await.expect_err("refused");

    assert!(error.contains("NotAuthorized"), "{error}");
}

#[tokio::test]
async fn a_second_mqtt5_connection_with_the_same_client_id_tells_the_first_session_taken_over() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut first = V5Client::connect(emulator.addr(), "twin", &device).await;

    let _second = V5Client::connect(emulator.addr(), "twin", &device).await;

    let closed = first.closed().await;
    assert!(closed.contains("reason_code: SessionTakenOver"), "{closed}");
}

#[tokio::test]
async fn a_revoked_certificate_gets_disconnect_administrative_action_on_mqtt5() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = V5Client::connect(emulator.addr(), "revoked", &device).await;

    emulator
        .registry
        .set_certificate_status(&device.id, CertificateStatus::Revoked)
        .expect("revoke");

    let closed = client.closed().await;
    assert!(
        closed.contains("reason_code: AdministrativeAction"),
        "{closed}"
    );
}

#[tokio::test]
async fn a_subscription_identifier_is_refused_as_iot_core_does() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = V5Client::connect(emulator.addr(), "sub-id", &device).await;
    let properties = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };

    client
        .client
        .subscribe_with_properties("t", Qos5::AtLeastOnce, properties)
        .await
        .expect("queue subscribe");

    let codes = loop {
        match client.next_packet().await {
            Ok(rumqttc::v5::mqttbytes::v5::Packet::SubAck(ack)) => break ack.return_codes,
            Ok(_) => {}
            Err(error) => panic!("subscribe failed: {error}"),
        }
    };
    assert_eq!(codes, [SubscribeReasonCode::SubscriptionIdNotSupported]);
}
