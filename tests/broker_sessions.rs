//! Persistent sessions, retained messages and Last Will, through real rumqttc clients of both
//! protocol versions and raw TLS sockets where a client must vanish without a DISCONNECT.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use bytes::BytesMut;
use fleetsim::emulator::registry::CertificateStatus;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Allows every action, `iot:RetainPublish` included.
const ALLOW_EVERYTHING: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

fn retaining_device(emulator: &Emulator) -> Credentials {
    emulator
        .registry
        .create_policy("everything", ALLOW_EVERYTHING)
        .expect("policy");
    emulator.device(CertificateStatus::Active, "everything")
}

fn persistent_v5(options: &mut rumqttc::v5::MqttOptions) {
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(3600));
}

/// Publishes with the retain flag at QoS 1 and waits for the PUBACK, after which the broker
/// has stored (or deleted) the message.
async fn publish_retained(client: &mut TestClient, topic: &str, payload: &[u8]) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
        .await
        .expect("queue publish");
    loop {
        match client.next_packet().await {
            Ok(Packet::PubAck(_)) => return,
            Ok(_) => {}
            Err(error) => panic!("retained publish refused: {error}"),
        }
    }
}

#[tokio::test]
async fn a_persistent_3_1_1_session_receives_what_was_published_while_it_was_offline() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let offline = |options: &mut rumqttc::MqttOptions| {
        options.set_clean_session(false);
    };
    let mut sleeper = TestClient::start_with(emulator.addr(), "sleeper", &device, offline);
    assert!(!sleeper.connack().await.session_present);
    sleeper.subscribe("inbox/sleeper", QoS::AtLeastOnce).await;
    sleeper.client.disconnect().await.expect("disconnect");
    sleeper.closed().await;
    let publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;

    publisher
        .publish("inbox/sleeper", QoS::AtLeastOnce, b"while you were out")
        .await;
    wait_until(|| emulator.broker.parked_session_count() == 1).await;
    let mut sleeper = TestClient::start_with(emulator.addr(), "sleeper", &device, offline);

    assert!(sleeper.connack().await.session_present);
    let received = sleeper.next_publish().await;
    assert_eq!(&received.payload[..], b"while you were out");
}

#[tokio::test]
async fn a_persistent_mqtt5_session_receives_a_3_1_1_publish_sent_while_it_was_offline() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut sleeper = V5Client::start_with(emulator.addr(), "sleeper5", &device, persistent_v5);
    assert!(!sleeper.connack().await.session_present);
    sleeper.subscribe("inbox/5", Qos5::AtLeastOnce).await;
    sleeper.client.disconnect().await.expect("disconnect");
    sleeper.closed().await;
    wait_until(|| emulator.broker.parked_session_count() == 1).await;
    let publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;

    publisher
        .publish("inbox/5", QoS::AtLeastOnce, b"queued")
        .await;
    let mut sleeper = V5Client::start_with(emulator.addr(), "sleeper5", &device, persistent_v5);

    assert!(sleeper.connack().await.session_present);
    assert_eq!(&sleeper.next_publish().await.payload[..], b"queued");
}

#[tokio::test]
async fn a_clean_start_discards_the_stored_session() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut sleeper = V5Client::start_with(emulator.addr(), "fresh", &device, persistent_v5);
    sleeper.connack().await;
    sleeper.subscribe("inbox/fresh", Qos5::AtLeastOnce).await;
    sleeper.client.disconnect().await.expect("disconnect");
    sleeper.closed().await;
    wait_until(|| emulator.broker.parked_session_count() == 1).await;
    let publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;
    publisher
        .publish("inbox/fresh", QoS::AtLeastOnce, b"lost")
        .await;

    let mut sleeper = V5Client::start_with(emulator.addr(), "fresh", &device, |_| {});

    assert!(!sleeper.connack().await.session_present);
    assert!(sleeper.quiet_for(Duration::from_millis(300)).await);
    assert_eq!(emulator.broker.parked_session_count(), 0);
}

#[tokio::test]
async fn a_session_is_forgotten_once_its_expiry_has_passed() {
    let emulator = Emulator::builder()
        .session_expiry(Duration::from_millis(200))
        .start();
    let device = emulator.active_device();
    let offline = |options: &mut rumqttc::MqttOptions| {
        options.set_clean_session(false);
    };
    let mut sleeper = TestClient::start_with(emulator.addr(), "expiring", &device, offline);
    sleeper.connack().await;
    sleeper.subscribe("inbox/expiring", QoS::AtLeastOnce).await;
    sleeper.client.disconnect().await.expect("disconnect");
    sleeper.closed().await;
    wait_until(|| emulator.broker.parked_session_count() == 1).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut sleeper = TestClient::start_with(emulator.addr(), "expiring", &device, offline);

    assert!(!sleeper.connack().await.session_present);
}

#[tokio::test]
async fn a_retained_message_reaches_an_exact_subscriber_but_not_a_wildcard_one() {
    let emulator = Emulator::start();
    let device = retaining_device(&emulator);
    let mut publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;
    publish_retained(&mut publisher, "status/dev-1", b"online").await;

    let mut exact = V5Client::connect(emulator.addr(), "exact", &device).await;
    let mut wildcard = TestClient::connect(emulator.addr(), "wildcard", &device).await;
    exact.subscribe("status/dev-1", Qos5::AtLeastOnce).await;
    wildcard.subscribe("status/+", QoS::AtLeastOnce).await;

    let received = exact.next_publish().await;
    assert_eq!(
        (&received.payload[..], received.retain),
        (&b"online"[..], true)
    );
    assert!(wildcard.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_zero_byte_retained_publish_deletes_the_retained_message() {
    let emulator = Emulator::start();
    let device = retaining_device(&emulator);
    let mut publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;
    publish_retained(&mut publisher, "status/gone", b"here").await;
    assert_eq!(emulator.broker.retained_count(), 1);

    publish_retained(&mut publisher, "status/gone", b"").await;

    assert_eq!(emulator.broker.retained_count(), 0);
    let mut late = TestClient::connect(emulator.addr(), "late", &device).await;
    late.subscribe("status/gone", QoS::AtLeastOnce).await;
    assert!(late.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_retained_publish_to_a_dollar_topic_is_refused() {
    let emulator = Emulator::start();
    let device = retaining_device(&emulator);
    let client = TestClient::connect(emulator.addr(), "dollar", &device).await;
    let mut client = client;

    client
        .client
        .publish(
            "$aws/things/x/shadow/update",
            QoS::AtLeastOnce,
            true,
            b"{}".to_vec(),
        )
        .await
        .expect("queue publish");

    client.closed().await;
    assert_eq!(emulator.broker.retained_count(), 0);
}

#[tokio::test]
async fn a_retained_publish_needs_iot_retain_publish() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut old = TestClient::connect(emulator.addr(), "old", &device).await;
    let mut new = V5Client::connect(emulator.addr(), "new", &device).await;

    old.client
        .publish("status/x", QoS::AtLeastOnce, true, b"x".to_vec())
        .await
        .expect("queue publish");
    new.client
        .publish("status/y", Qos5::AtLeastOnce, true, b"y".to_vec())
        .await
        .expect("queue publish");

    old.closed().await;
    assert_eq!(
        new.next_puback().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
    );
    assert_eq!(emulator.broker.retained_count(), 0);
}

/// A 3.1.1 CONNECT with a QoS 1 will on `topic`.
fn connect_with_will(client_id: &str, topic: &str) -> Vec<u8> {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = 60;
    connect.last_will = Some(v4::LastWill::new(topic, "gone", QoS::AtLeastOnce, false));
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).expect("encode connect");
    bytes.to_vec()
}

#[tokio::test]
async fn the_will_is_sent_when_a_client_vanishes_without_disconnect() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut watcher = TestClient::connect(emulator.addr(), "watcher", &device).await;
    watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
    let mut stream = raw_tls(emulator.addr(), &device).await;
    stream
        .write_all(&connect_with_will("mortal", "wills/mortal"))
        .await
        .expect("connect");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("connack");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    drop(stream);

    let will = watcher.next_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/mortal", &b"gone"[..])
    );
}

#[tokio::test]
async fn the_will_is_not_sent_after_a_clean_disconnect() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut watcher = TestClient::connect(emulator.addr(), "watcher", &device).await;
    watcher.subscribe("wills/+", QoS::AtLeastOnce).await;
    let mut stream = raw_tls(emulator.addr(), &device).await;
    stream
        .write_all(&connect_with_will("polite", "wills/polite"))
        .await
        .expect("connect");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("connack");

    stream.write_all(&[0xE0, 0x00]).await.expect("disconnect");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;

    assert!(watcher.quiet_for(Duration::from_millis(500)).await);
}

#[tokio::test]
async fn an_mqtt5_will_is_sent_when_another_connection_takes_over_the_client_id() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut watcher = V5Client::connect(emulator.addr(), "watcher", &device).await;
    watcher.subscribe("wills/#", Qos5::AtLeastOnce).await;
    let will = rumqttc::v5::mqttbytes::v5::LastWill::new(
        "wills/twin",
        "taken over",
        Qos5::AtLeastOnce,
        false,
        None,
    );
    let mut first = V5Client::start_with(emulator.addr(), "twin", &device, |options| {
        options.set_last_will(will);
    });
    first.connack().await;

    let _second = V5Client::connect(emulator.addr(), "twin", &device).await;

    let received = watcher.next_publish().await;
    assert_eq!(&received.payload[..], b"taken over");
}

/// Polls a broker condition that becomes true shortly after a client's action.
async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
