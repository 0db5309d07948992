//! Hostile MQTT input against the broker, on real TLS sockets: random, truncated, oversize
//! and out-of-order packets, QoS 2, topics that are not UTF-8 or exceed AWS's limits, and
//! client ids that are empty, too long, reserved or taken. Raw TLS clients send what a real
//! MQTT client would refuse to; each case asserts what came back on the wire, the counter
//! that recorded it, and that a bystander connection kept working.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MALFORMED: &str = "fleetsim_emulator_malformed_packets_total";
const CONNECTS: &str = "fleetsim_emulator_connects_total";
const DISCONNECTS: &str = "fleetsim_emulator_disconnects_total";

/// The 3.1.1 CONNACK for an accepted connection.
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Generous on a loaded machine: every wait ends on an event long before this.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// Reads until the server closes the stream and returns everything that arrived.
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        let read = tokio::time::timeout(CLOSE_WAIT, stream.read(&mut buffer))
            .await
            .expect("server closes the connection within the wait");
        match read {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// MQTT's variable-length remaining length [MQTT-2.2.3].
fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let mut byte = u8::try_from(len % 128).expect("below 128");
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        bytes.push(byte);
        if len == 0 {
            return bytes;
        }
    }
}

/// A packet of `first` byte and `body`, with its remaining length.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    bytes.extend(remaining_length(body.len()));
    bytes.extend_from_slice(body);
    bytes
}

/// A PUBLISH with a topic of arbitrary bytes (packet id 1 when `qos` > 0).
fn publish(topic: &[u8], qos: u8, payload: &[u8]) -> Vec<u8> {
    let topic_len = u16::try_from(topic.len()).expect("topic fits a u16");
    let mut body = topic_len.to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    if qos > 0 {
        body.extend_from_slice(&[0, 1]);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// An MQTT 5 CONNECT (clean start, keep-alive 60, no properties) for `client_id`.
fn connect5(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0];
    let id_len = u16::try_from(client_id.len()).expect("id fits a u16");
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    packet(0x10, &body)
}

/// Splits what a server sent into whole packets.
fn packets(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut split = Vec::new();
    while !bytes.is_empty() {
        let (mut len, mut shift, mut header) = (0usize, 0, 1);
        while let Some(&byte) = bytes.get(header) {
            len |= usize::from(byte & 0x7F) << shift;
            shift += 7;
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let end = (header + len).min(bytes.len());
        split.push(bytes[..end].to_vec());
        bytes = &bytes[end..];
    }
    split
}

/// A connected 3.1.1 client subscribed to `#`, to prove the broker still serves others.
async fn bystander(emulator: &Emulator, device: &Credentials) -> TestClient {
    let mut client = TestClient::connect(emulator.addr(), "bystander", device).await;
    client.subscribe("#", QoS::AtLeastOnce).await;
    client
}

/// The bystander still gets its own messages, and nothing it should not have.
async fn still_served(bystander: &mut TestClient) {
    bystander
        .publish("bystander/ping", QoS::AtLeastOnce, b"still here")
        .await;
    let received = bystander.next_publish().await;
    assert_eq!(
        (received.topic.as_str(), &received.payload[..]),
        ("bystander/ping", &b"still here"[..]),
        "the bystander saw a message from the hostile connection"
    );
}

/// Sends `bytes` on a fresh raw TLS connection and returns what came back before the close.
async fn send_raw(emulator: &Emulator, device: &Credentials, bytes: &[u8]) -> Vec<u8> {
    let mut stream = raw_tls(emulator.addr(), device).await;
    stream.write_all(bytes).await.expect("write");
    read_until_closed(&mut stream).await
}

fn connected_then(client_id: &str, rest: &[u8]) -> Vec<u8> {
    let mut bytes = connect_packet(client_id, 60);
    bytes.extend_from_slice(rest);
    bytes
}

#[tokio::test]
async fn random_bytes_before_and_after_connect_close_only_their_own_connections() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_f1ee7);

    for round in 0..60 {
        let mut noise = vec![0u8; rng.random_range(1..600)];
        rng.fill(&mut noise[..]);
        let mut bytes = match round % 3 {
            0 => Vec::new(),
            1 => connect_packet(&format!("noise-{round}"), 60),
            _ => connect5(&format!("noise-{round}")),
        };
        bytes.extend_from_slice(&noise);
        let mut stream = raw_tls(emulator.addr(), &device).await;
        stream.write_all(&bytes).await.expect("write");
        // Noise may end inside a packet that looks valid so far: the client's close ends it.
        stream.shutdown().await.expect("close_notify");
        read_until_closed(&mut stream).await;
    }

    still_served(&mut bystander).await;
    wait_for(|| emulator.broker.connection_count() == 1).await;
}

#[tokio::test]
async fn a_truncated_packet_left_hanging_is_closed_at_the_keep_alive_deadline() {
    let emulator = Emulator::builder()
        .keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .start();
    let device = emulator.active_device();
    let before = counter(DISCONNECTS, "reason", "mqtt_keep_alive_timeout");
    let mut stream = raw_tls(emulator.addr(), &device).await;
    let whole = publish(b"t/truncated", 1, &[7; 100]);

    stream
        .write_all(&connected_then("truncated", &whole[..20]))
        .await
        .expect("write");

    assert_eq!(read_until_closed(&mut stream).await, CONNACK_OK);
    assert_eq!(
        counter(DISCONNECTS, "reason", "mqtt_keep_alive_timeout"),
        before + 1
    );
}

#[tokio::test]
async fn a_truncated_packet_cut_off_by_the_client_is_a_lost_connection_and_delivers_nothing() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(DISCONNECTS, "reason", "connection_lost");
    let mut stream = raw_tls(emulator.addr(), &device).await;
    let whole = publish(b"t/truncated", 1, &[7; 100]);

    stream
        .write_all(&connected_then("cut", &whole[..whole.len() - 1]))
        .await
        .expect("write");
    stream.shutdown().await.expect("close_notify");

    assert_eq!(read_until_closed(&mut stream).await, CONNACK_OK);
    wait_for(|| counter(DISCONNECTS, "reason", "connection_lost") == before + 1).await;
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn an_oversize_packet_is_refused_from_its_header_without_waiting_for_the_body() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(MALFORMED, "kind", "decode");
    // AWS's limit is 128 KiB of payload; this header announces 1 MiB and sends 16 bytes.
    let mut oversize = vec![0x32];
    oversize.extend(remaining_length(1024 * 1024));
    oversize.extend_from_slice(&[0, 1, b't', 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);

    let received = send_raw(&emulator, &device, &connected_then("big", &oversize)).await;

    assert_eq!(received, CONNACK_OK);
    assert_eq!(counter(MALFORMED, "kind", "decode"), before + 1);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn an_oversize_mqtt5_packet_gets_disconnect_packet_too_large() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut oversize = vec![0x32];
    oversize.extend(remaining_length(1024 * 1024));
    oversize.extend_from_slice(&[0, 1, b't', 0, 1, 0]);
    let mut bytes = connect5("big5");
    bytes.extend_from_slice(&oversize);

    let received = packets(&send_raw(&emulator, &device, &bytes).await);

    assert_eq!(
        received.len(),
        2,
        "CONNACK then DISCONNECT: {received:02x?}"
    );
    assert_eq!(received[0][0], 0x20);
    assert_eq!(
        &received[1][..3],
        [0xE0, received[1][1], 0x95],
        "Packet too large"
    );
}

#[tokio::test]
async fn a_remaining_length_longer_than_four_bytes_is_malformed() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let before = counter(MALFORMED, "kind", "decode");
    let bad_length = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0, 1, b't'];

    let received = send_raw(&emulator, &device, &connected_then("len", &bad_length)).await;

    assert_eq!(received, CONNACK_OK);
    assert_eq!(counter(MALFORMED, "kind", "decode"), before + 1);
}

#[tokio::test]
async fn a_publish_before_connect_is_closed_without_connack_and_delivers_nothing() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let refused = counter(CONNECTS, "outcome", "protocol_error");
    let malformed = counter(MALFORMED, "kind", "protocol");

    let received = send_raw(&emulator, &device, &publish(b"early/bird", 0, b"x")).await;

    assert_eq!(received, Vec::<u8>::new(), "no CONNACK [MQTT-3.1.0-1]");
    assert_eq!(counter(CONNECTS, "outcome", "protocol_error"), refused + 1);
    assert_eq!(counter(MALFORMED, "kind", "protocol"), malformed + 1);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_second_connect_closes_a_3_1_1_connection_as_a_protocol_violation() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let before = counter(MALFORMED, "kind", "protocol");
    let errors = counter(DISCONNECTS, "reason", "client_error");
    let twice = connected_then("twice", &connect_packet("twice", 60));

    let received = send_raw(&emulator, &device, &twice).await;

    assert_eq!(received, CONNACK_OK, "one CONNACK only [MQTT-3.1.0-2]");
    assert_eq!(counter(MALFORMED, "kind", "protocol"), before + 1);
    assert_eq!(counter(DISCONNECTS, "reason", "client_error"), errors + 1);
    assert_eq!(emulator.broker.connection_count(), 0);
}

#[tokio::test]
async fn a_second_connect_on_mqtt5_gets_disconnect_protocol_error() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bytes = connect5("twice5");
    bytes.extend(connect5("twice5"));

    let received = packets(&send_raw(&emulator, &device, &bytes).await);

    assert_eq!(
        received.len(),
        2,
        "CONNACK then DISCONNECT: {received:02x?}"
    );
    assert_eq!(&received[1][..3], [0xE0, received[1][1], 0x82]);
}

#[tokio::test]
async fn a_qos2_publish_closes_the_connection_and_reaches_no_subscriber() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(MALFORMED, "kind", "protocol");

    let qos2 = publish(b"exactly/once", 2, b"never delivered");
    let received = send_raw(&emulator, &device, &connected_then("qos2", &qos2)).await;

    assert_eq!(received, CONNACK_OK, "no PUBREC: AWS IoT has no QoS 2");
    assert_eq!(counter(MALFORMED, "kind", "protocol"), before + 1);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn qos2_flow_packets_without_a_publish_close_the_connection() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let before = counter(MALFORMED, "kind", "protocol");

    for (name, flow) in [("pubrec", 0x50), ("pubrel", 0x62), ("pubcomp", 0x70)] {
        let bytes = connected_then(name, &[flow, 0x02, 0x00, 0x01]);
        assert_eq!(
            send_raw(&emulator, &device, &bytes).await,
            CONNACK_OK,
            "{name}"
        );
    }

    assert_eq!(counter(MALFORMED, "kind", "protocol"), before + 3);
}

#[tokio::test]
async fn a_topic_that_is_not_utf8_closes_the_connection_as_undecodable() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(MALFORMED, "kind", "decode");

    let not_utf8 = publish(&[b'd', b't', b'/', 0xC3, 0x28, 0xFF], 1, b"x");
    let received = send_raw(&emulator, &device, &connected_then("utf8", &not_utf8)).await;

    assert_eq!(received, CONNACK_OK, "no PUBACK for an undecodable topic");
    assert_eq!(counter(MALFORMED, "kind", "decode"), before + 1);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn topics_over_aws_limits_close_the_connection_while_topics_at_the_limits_are_delivered() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(MALFORMED, "kind", "topic");
    let longest = "l".repeat(256);
    let deepest = "a/b/c/d/e/f/g/h";
    let refused = [
        "l".repeat(257),
        format!("{deepest}/i"),
        "nul\0here".to_owned(),
        "wild/+/card".to_owned(),
        "$sys/reserved".to_owned(),
    ];

    for topic in &refused {
        let bytes = connected_then("limits", &publish(topic.as_bytes(), 1, b"x"));
        assert_eq!(
            send_raw(&emulator, &device, &bytes).await,
            CONNACK_OK,
            "{topic:?}"
        );
    }
    for topic in [longest.as_str(), deepest] {
        bystander
            .publish(topic, QoS::AtLeastOnce, b"at limit")
            .await;
        assert_eq!(bystander.next_publish().await.topic, topic);
    }

    assert_eq!(counter(MALFORMED, "kind", "topic"), before + 5);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_subscription_over_aws_limits_closes_3_1_1_and_gets_0x8f_on_mqtt5() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let too_deep = "a/b/c/d/e/f/g/h/#";
    let before = counter(MALFORMED, "kind", "topic");
    let mut old = TestClient::connect(emulator.addr(), "deep-old", &device).await;
    let mut new = V5Client::connect(emulator.addr(), "deep-new", &device).await;

    old.client
        .subscribe(too_deep, QoS::AtLeastOnce)
        .await
        .expect("queue");
    let codes = new
        .subscribe(too_deep, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;

    old.closed().await;
    assert_eq!(
        codes,
        [rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::TopicFilterInvalid]
    );
    assert_eq!(counter(MALFORMED, "kind", "topic"), before + 1);
    new.publish(
        "still/here",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        b"ok",
    )
    .await;
    assert_eq!(
        new.next_puback().await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
}

#[tokio::test]
async fn empty_overlong_and_dollar_client_ids_get_identifier_rejected() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let mut bystander = bystander(&emulator, &device).await;
    let before = counter(CONNECTS, "outcome", "bad_client_id");
    let longest = "c".repeat(128);

    for client_id in [String::new(), "c".repeat(129), "$aws-looking".to_owned()] {
        let received = send_raw(&emulator, &device, &connect_packet(&client_id, 60)).await;
        assert_eq!(received, [0x20, 0x02, 0x00, 0x02], "{client_id:?}");
    }
    let received = packets(&send_raw(&emulator, &device, &connect5("")).await);
    assert_eq!(received[0][3], 0x85, "MQTT 5: Client Identifier not valid");
    TestClient::connect(emulator.addr(), &longest, &device).await;

    assert_eq!(counter(CONNECTS, "outcome", "bad_client_id"), before + 4);
    still_served(&mut bystander).await;
}

#[tokio::test]
async fn a_colliding_client_id_takes_over_and_the_old_connection_learns_why() {
    let emulator = Emulator::start();
    let device = emulator.active_device();
    let before = counter(DISCONNECTS, "reason", "duplicate_clientid");
    let mut old = TestClient::connect(emulator.addr(), "twin", &device).await;
    let mut old5 = V5Client::connect(emulator.addr(), "twin5", &device).await;

    let mut new = TestClient::connect(emulator.addr(), "twin", &device).await;
    let _new5 = V5Client::connect(emulator.addr(), "twin5", &device).await;

    old.closed().await;
    let closed = old5.closed().await;
    assert!(closed.contains("SessionTakenOver"), "{closed}");
    assert_eq!(
        counter(DISCONNECTS, "reason", "duplicate_clientid"),
        before + 2
    );
    new.subscribe("twin/x", QoS::AtLeastOnce).await;
    new.publish("twin/x", QoS::AtLeastOnce, b"mine").await;
    assert_eq!(new.next_publish().await.payload, &b"mine"[..]);
    assert_eq!(emulator.broker.connection_count(), 2);
}

/// Waits, polling, for a condition that an event elsewhere makes true.
async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {CLOSE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
