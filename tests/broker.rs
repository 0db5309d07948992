//! The broker against real rumqttc clients and raw TLS sockets on 127.0.0.1, with
//! certificates issued at test time.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use fleetsim::emulator::ca::CertificateAuthority;
use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::tls::{KeyExchange, client_config_with};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const REFUSALS: &str = "fleetsim_emulator_handshake_refusals_total";
const HANDSHAKES: &str = fleetsim::emulator::tls::HANDSHAKES;

/// Reads until the server closes the stream; returns whatever arrived first.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("server closes within the wait");
        match read {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn qos0_and_qos1_messages_reach_exact_and_wildcard_subscribers() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut exact = TestClient::connect(emulator.addr(), "exact", &device).await;
    let mut plus = TestClient::connect(emulator.addr(), "plus", &device).await;
    let mut hash = TestClient::connect(emulator.addr(), "hash", &device).await;
    exact.subscribe("dt/dev-1/temp", QoS::AtLeastOnce).await;
    plus.subscribe("dt/+/temp", QoS::AtMostOnce).await;
    hash.subscribe("dt/#", QoS::AtLeastOnce).await;
    let publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;

    publisher
        .publish("dt/dev-1/temp", QoS::AtLeastOnce, b"21.5")
        .await;

    let received = exact.next_publish().await;
    assert_eq!(
        (received.topic.as_str(), &received.payload[..]),
        ("dt/dev-1/temp", &b"21.5"[..])
    );
    assert_eq!(received.qos, QoS::AtLeastOnce);
    let received = plus.next_publish().await;
    assert_eq!(
        received.qos,
        QoS::AtMostOnce,
        "capped by the subscription's QoS"
    );
    assert_eq!(hash.next_publish().await.payload, &b"21.5"[..]);

    publisher
        .publish("dt/dev-1/humidity", QoS::AtMostOnce, b"40")
        .await;
    let received = hash.next_publish().await;
    assert_eq!(
        (received.topic.as_str(), received.qos),
        ("dt/dev-1/humidity", QoS::AtMostOnce)
    );
    assert!(
        exact.quiet_for(Duration::from_millis(300)).await,
        "exact filter must not match"
    );
    assert!(
        plus.quiet_for(Duration::from_millis(300)).await,
        "plus filter must not match"
    );
}

#[tokio::test]
async fn dollar_aws_topics_reach_their_subscribers_but_not_a_bare_hash_subscriber() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut shadow = TestClient::connect(emulator.addr(), "shadow", &device).await;
    let mut everything = TestClient::connect(emulator.addr(), "everything", &device).await;
    shadow
        .subscribe("$aws/things/+/shadow/update", QoS::AtLeastOnce)
        .await;
    everything.subscribe("#", QoS::AtLeastOnce).await;
    let publisher = TestClient::connect(emulator.addr(), "publisher", &device).await;

    publisher
        .publish("$aws/things/dev-1/shadow/update", QoS::AtLeastOnce, b"{}")
        .await;

    let received = shadow.next_publish().await;
    assert_eq!(received.topic, "$aws/things/dev-1/shadow/update");
    assert!(
        everything.quiet_for(Duration::from_millis(300)).await,
        "# must skip $ topics"
    );
}

#[tokio::test]
async fn an_unknown_certificate_is_refused_at_the_handshake_and_counted() {
    let emulator = Emulator::start();
    let stranger = emulator.unregistered_device();
    let before = counter(REFUSALS, "reason", "unknown_certificate");

    let mut client = TestClient::start(emulator.addr(), "stranger", &stranger);

    let error = client.next_packet().await.expect_err("connection refused");
    assert!(!error.is_empty());
    assert_eq!(
        counter(REFUSALS, "reason", "unknown_certificate"),
        before + 1
    );
    assert_eq!(emulator.broker.connection_count(), 0);
}

#[tokio::test]
async fn completed_handshakes_are_counted_by_the_key_exchange_negotiated() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    for key_exchange in KeyExchange::ALL {
        let group = key_exchange.label();
        let before = counter(HANDSHAKES, "group", group);
        let config = client_config_with(emulator.ca.root_pem(), &device.identity(), key_exchange)
            .expect("device configuration");

        let mut stream = raw_tls_with(emulator.addr(), config).await;
        stream
            .write_all(&connect_packet(&format!("kx-{group}"), 60))
            .await
            .expect("connect");
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await.expect("connack");

        // A CONNACK means the server finished the handshake, and counted it.
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "{group}");
        assert_eq!(counter(HANDSHAKES, "group", group), before + 1, "{group}");
    }
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused_as_untrusted() {
    let emulator = Emulator::start();
    let other_ca = CertificateAuthority::generate("someone else").expect("other root");
    let forged = Credentials::issued_by(&other_ca, emulator.ca.root_der().clone());
    let before = counter(REFUSALS, "reason", "untrusted_certificate");

    let mut client = TestClient::start(emulator.addr(), "forged", &forged);

    client.next_packet().await.expect_err("connection refused");
    assert_eq!(
        counter(REFUSALS, "reason", "untrusted_certificate"),
        before + 1
    );
}

#[tokio::test]
async fn a_revoked_certificate_loses_its_live_connection_and_cannot_reconnect() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut live = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    live.subscribe("cmd/dev-1", QoS::AtLeastOnce).await;
    let before = counter(REFUSALS, "reason", "certificate_revoked");

    emulator
        .registry
        .set_certificate_status(&device.id, CertificateStatus::Revoked)
        .expect("revoke");

    live.closed().await;
    let mut again = TestClient::start(emulator.addr(), "dev-1", &device);
    again
        .next_packet()
        .await
        .expect_err("revoked certificate refused");
    assert_eq!(
        counter(REFUSALS, "reason", "certificate_revoked"),
        before + 1
    );
}

#[tokio::test]
async fn an_inactive_certificate_is_refused_with_its_own_reason() {
    let emulator = Emulator::start();
    let device = emulator.device(CertificateStatus::Inactive, "allow-all");
    let before = counter(REFUSALS, "reason", "certificate_inactive");

    let mut client = TestClient::start(emulator.addr(), "dev-1", &device);

    client
        .next_packet()
        .await
        .expect_err("inactive certificate refused");
    assert_eq!(
        counter(REFUSALS, "reason", "certificate_inactive"),
        before + 1
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_drops_the_first() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut first = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    first.subscribe("cmd/dev-1", QoS::AtLeastOnce).await;

    let mut second = TestClient::connect(emulator.addr(), "dev-1", &device).await;

    first.closed().await;
    second.subscribe("cmd/dev-1", QoS::AtLeastOnce).await;
    second
        .publish("cmd/dev-1", QoS::AtLeastOnce, b"still here")
        .await;
    assert_eq!(second.next_publish().await.payload, &b"still here"[..]);
    assert_eq!(emulator.broker.connection_count(), 1);
}

#[tokio::test]
async fn random_bytes_after_the_handshake_close_only_that_connection() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = TestClient::connect(emulator.addr(), "bystander", &device).await;
    bystander.subscribe("echo", QoS::AtLeastOnce).await;
    let before = counter(
        "fleetsim_emulator_malformed_packets_total",
        "kind",
        "decode",
    );
    let mut garbage = raw_tls(emulator.addr(), &device).await;
    garbage
        .write_all(&connect_packet("garbage", 60))
        .await
        .expect("connect");

    garbage
        .write_all(&[0xF3, 0x07, 0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01, 0x02])
        .await
        .expect("write");

    let received = read_until_closed(&mut garbage).await;
    assert_eq!(
        received,
        [0x20, 0x02, 0x00, 0x00],
        "only the CONNACK came back"
    );
    assert_eq!(
        counter(
            "fleetsim_emulator_malformed_packets_total",
            "kind",
            "decode"
        ),
        before + 1
    );
    bystander.publish("echo", QoS::AtLeastOnce, b"fine").await;
    assert_eq!(bystander.next_publish().await.payload, &b"fine"[..]);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_one_and_a_half_keep_alives() {
    let emulator = Emulator::builder()
        .keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .start();
    let device = emulator.active_device();
    let mut silent = raw_tls(emulator.addr(), &device).await;
    silent
        .write_all(&connect_packet("silent", 1))
        .await
        .expect("connect");
    let connected = Instant::now();

    let received = read_until_closed(&mut silent).await;

    assert_eq!(received, [0x20, 0x02, 0x00, 0x00]);
    assert!(
        connected.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        connected.elapsed()
    );
}

#[tokio::test]
async fn an_mqtt31_connect_is_answered_with_unacceptable_protocol_version() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut stream = raw_tls(emulator.addr(), &device).await;
    let mut connect = vec![0x10, 15, 0, 6];
    connect.extend_from_slice(b"MQIsdp");
    connect.extend_from_slice(&[3, 0x02, 0, 60, 0, 1, b'c']);

    stream.write_all(&connect).await.expect("connect");

    let received = read_until_closed(&mut stream).await;
    assert_eq!(received, [0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn a_client_id_starting_with_dollar_is_refused_with_identifier_rejected() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut stream = raw_tls(emulator.addr(), &device).await;

    stream
        .write_all(&connect_packet("$reserved", 60))
        .await
        .expect("connect");

    assert_eq!(
        read_until_closed(&mut stream).await,
        [0x20, 0x02, 0x00, 0x02]
    );
}

#[tokio::test]
async fn a_qos2_subscription_is_granted_qos1() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = TestClient::connect(emulator.addr(), "dev-1", &device).await;

    client
        .client
        .subscribe("a/b", QoS::ExactlyOnce)
        .await
        .expect("queue");

    match client.next_packet().await {
        Ok(rumqttc::Packet::SubAck(ack)) => assert_eq!(
            ack.return_codes,
            [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_every_connection() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut client = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    let addr = emulator.addr();

    emulator.broker.shutdown().await;

    client.closed().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

// The tests below depend on the policy engine (merged from the `policy` branch); with the
// skeleton's placeholder, which allows everything, they fail.

const PUBLISH_ONLY_UNDER_ALLOWED: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Receive"],"Resource":"*"},
  {"Effect":"Allow","Action":"iot:Publish",
   "Resource":"arn:aws:iot:us-east-1:123456789012:topic/allowed/*"}]}"#;

#[tokio::test]
async fn a_publish_denied_by_policy_closes_the_connection() {
    let emulator = Emulator::start();
    emulator
        .registry
        .create_policy("publish-allowed", PUBLISH_ONLY_UNDER_ALLOWED)
        .expect("policy");
    let device = emulator.device(CertificateStatus::Active, "publish-allowed");
    let mut client = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    client.subscribe("allowed/#", QoS::AtLeastOnce).await;
    let denials = counter(
        "fleetsim_emulator_policy_denials_total",
        "action",
        "publish",
    );
    client.publish("allowed/x", QoS::AtLeastOnce, b"ok").await;
    assert_eq!(client.next_publish().await.payload, &b"ok"[..]);

    client.publish("forbidden/x", QoS::AtLeastOnce, b"no").await;

    client.closed().await;
    let after = counter(
        "fleetsim_emulator_policy_denials_total",
        "action",
        "publish",
    );
    assert_eq!(after, denials + 1);
}

const CONNECT_ONLY_AS_GOOD: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":"iot:Connect",
   "Resource":"arn:aws:iot:us-east-1:123456789012:client/good-*"}]}"#;

#[tokio::test]
async fn a_connect_denied_by_policy_is_closed_without_connack() {
    let emulator = Emulator::start();
    emulator
        .registry
        .create_policy("connect-good", CONNECT_ONLY_AS_GOOD)
        .expect("policy");
    let device = emulator.device(CertificateStatus::Active, "connect-good");
    TestClient::connect(emulator.addr(), "good-1", &device).await;
    let mut stream = raw_tls(emulator.addr(), &device).await;

    stream
        .write_all(&connect_packet("bad-1", 60))
        .await
        .expect("connect");

    assert_eq!(read_until_closed(&mut stream).await, Vec::<u8>::new());
}

const RECEIVE_ONLY_PUBLIC: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":["iot:Connect","iot:Subscribe","iot:Publish"],"Resource":"*"},
  {"Effect":"Allow","Action":"iot:Receive",
   "Resource":"arn:aws:iot:us-east-1:123456789012:topic/public/*"}]}"#;

#[tokio::test]
async fn receive_is_checked_per_delivery_so_a_wildcard_subscription_gets_only_allowed_topics() {
    let emulator = Emulator::start();
    emulator
        .registry
        .create_policy("receive-public", RECEIVE_ONLY_PUBLIC)
        .expect("policy");
    let device = emulator.device(CertificateStatus::Active, "receive-public");
    let mut client = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    client.subscribe("#", QoS::AtLeastOnce).await;

    client
        .publish("private/x", QoS::AtLeastOnce, b"secret")
        .await;
    client.publish("public/x", QoS::AtLeastOnce, b"hello").await;

    let received = client.next_publish().await;
    assert_eq!(
        (received.topic.as_str(), &received.payload[..]),
        ("public/x", &b"hello"[..])
    );
}

const SUBSCRIBE_ONLY_CMD: &str = r#"{"Version":"2012-10-17","Statement":[
  {"Effect":"Allow","Action":["iot:Connect","iot:Receive"],"Resource":"*"},
  {"Effect":"Allow","Action":"iot:Subscribe",
   "Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/cmd/*"}]}"#;

#[tokio::test]
async fn a_subscribe_denied_by_policy_closes_the_connection() {
    let emulator = Emulator::start();
    emulator
        .registry
        .create_policy("subscribe-cmd", SUBSCRIBE_ONLY_CMD)
        .expect("policy");
    let device = emulator.device(CertificateStatus::Active, "subscribe-cmd");
    let mut client = TestClient::connect(emulator.addr(), "dev-1", &device).await;
    client.subscribe("cmd/dev-1", QoS::AtLeastOnce).await;

    client
        .client
        .subscribe("#", QoS::AtLeastOnce)
        .await
        .expect("queue");

    client.closed().await;
}
