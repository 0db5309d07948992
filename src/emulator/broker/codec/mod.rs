//! The broker's wire codec: rumqttc's MQTT 3.1.1 and MQTT 5 packet codecs behind one
//! decoder, plus the checks a server needs that a client codec skips. It reads the protocol
//! level of a CONNECT before decoding it (the v4 decoder misreads an MQTT 5 CONNECT), keeps
//! that version for the rest of the connection, and translates every packet to the broker's
//! own [`Request`] / [`Reply`] so nothing past this module depends on the version.

mod v4;
mod v5;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::v5::mqttbytes as mqttbytes5;
use tokio_util::codec::{Decoder, Encoder};

use super::packet::{Protocol, Reply, Request};

/// What the broker reads from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Request(Request),
    /// A CONNECT for a protocol level other than 4 (3.1.1) or 5, not decoded.
    UnsupportedProtocol {
        level: u8,
    },
}

/// Why a client's bytes are not an acceptable packet; always the client's fault, except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("client sent an undecodable packet: {0}")]
    Packet(mqttbytes::Error),
    #[error("client sent an undecodable mqtt 5 packet: {0}")]
    Packet5(mqttbytes5::Error),
    #[error("client set reserved flags {flags:#06b} on packet type {packet_type} [MQTT-2.2.2-2]")]
    ReservedFlags { packet_type: u8, flags: u8 },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// Whether the client exceeded the packet size limit (MQTT 5 reason 0x95).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            CodecError::Packet(mqttbytes::Error::PayloadSizeLimitExceeded(_))
                | CodecError::Packet5(mqttbytes5::Error::PayloadSizeLimitExceeded { .. })
        )
    }
}

impl From<mqttbytes::Error> for CodecError {
    fn from(error: mqttbytes::Error) -> Self {
        match error {
            mqttbytes::Error::Io(io) => CodecError::Io(io),
            other => CodecError::Packet(other),
        }
    }
}

impl From<mqttbytes5::Error> for CodecError {
    fn from(error: mqttbytes5::Error) -> Self {
        match error {
            mqttbytes5::Error::Io(io) => CodecError::Io(io),
            other => CodecError::Packet5(other),
        }
    }
}

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const DISCONNECT: u8 = 14;

#[derive(Debug, Clone)]
pub struct MqttCodec {
    /// Set by the CONNECT; before it, packets are read as 3.1.1 so a stray one is refused.
    protocol: Option<Protocol>,
    v4: mqttbytes::v4::Codec,
    v5: mqttbytes5::v5::Codec,
}

impl MqttCodec {
    /// `max_packet_size` bounds the remaining length of every packet in both directions.
    pub fn new(max_packet_size: usize) -> MqttCodec {
        let max5 = u32::try_from(max_packet_size).unwrap_or(u32::MAX);
        MqttCodec {
            protocol: None,
            v4: mqttbytes::v4::Codec {
                max_incoming_size: max_packet_size,
                max_outgoing_size: max_packet_size,
            },
            v5: mqttbytes5::v5::Codec {
                max_incoming_size: Some(max5),
                max_outgoing_size: Some(max5),
            },
        }
    }

    /// The version fixed by the CONNECT, if one has been read.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    fn decode_as(
        &mut self,
        protocol: Protocol,
        src: &mut BytesMut,
    ) -> Result<Option<Inbound>, CodecError> {
        let request = match protocol {
            Protocol::V311 => self.v4.decode(src)?.map(v4::request),
            Protocol::V5 => self.v5.decode(src)?.map(v5::request),
        };
        Ok(request.map(Inbound::Request))
    }
}

impl Decoder for MqttCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        check_flags(first)?;
        if first >> 4 == CONNECT {
            let protocol = match connect_level(src) {
                None => return Ok(None),
                Some(4) => Protocol::V311,
                Some(5) => Protocol::V5,
                Some(level) => return Ok(unsupported(src, level)),
            };
            self.protocol = Some(protocol);
            return self.decode_as(protocol, src);
        }
        let protocol = self.protocol.unwrap_or(Protocol::V311);
        if protocol == Protocol::V5 && first >> 4 == DISCONNECT && src.get(1) == Some(&0) {
            // rumqttc's v5 reader wants a reason code, but a normal DISCONNECT may omit it
            // [MQTT-3.14.2.1].
            let _ = src.split_to(2);
            return Ok(Some(Inbound::Request(Request::Disconnect {
                with_will: false,
                session_expiry: None,
            })));
        }
        self.decode_as(protocol, src)
    }
}

impl Encoder<Reply> for MqttCodec {
    type Error = CodecError;

    /// A reply 3.1.1 cannot express (DISCONNECT) writes nothing.
    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self.protocol.unwrap_or(Protocol::V311) {
            Protocol::V311 => match v4::packet(reply) {
                Some(packet) => Ok(self.v4.encode(packet, dst)?),
                None => Ok(()),
            },
            Protocol::V5 => match reply {
                Reply::Disconnect(code) => {
                    v5::write_disconnect(code, dst);
                    Ok(())
                }
                reply => Ok(self.v5.encode(v5::packet(reply), dst)?),
            },
        }
    }
}

/// Decodes `bytes` as one client's stream, packet by packet, until they run out or a packet
/// is refused, and returns how many packets were read. It never panics, whatever the bytes:
/// the entry point of the decoder's fuzz target and randomized tests.
pub fn decode_client_stream(bytes: &[u8], max_packet_size: usize) -> usize {
    let mut codec = MqttCodec::new(max_packet_size);
    let mut buffer = BytesMut::from(bytes);
    let mut packets = 0;
    while let Ok(Some(_)) = codec.decode(&mut buffer) {
        packets += 1;
    }
    packets
}

/// Fixed-header flags: PUBLISH carries its own; PUBREL, SUBSCRIBE and UNSUBSCRIBE must carry
/// 0b0010 and every other packet 0 [MQTT-2.2.2-1].
fn check_flags(first: u8) -> Result<(), CodecError> {
    let (packet_type, flags) = (first >> 4, first & 0x0F);
    let expected = match packet_type {
        PUBLISH => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags == expected {
        Ok(())
    } else {
        Err(CodecError::ReservedFlags { packet_type, flags })
    }
}

/// The protocol level byte of a CONNECT, once enough bytes have arrived. A protocol name
/// longer than `MQIsdp` is left for the decoder to refuse.
fn connect_level(src: &[u8]) -> Option<u8> {
    let header_len = 1 + remaining_length_bytes(&src[1..])?;
    let name_len = usize::from(u16::from_be_bytes([
        *src.get(header_len)?,
        *src.get(header_len + 1)?,
    ]));
    if name_len > "MQIsdp".len() {
        return Some(4);
    }
    src.get(header_len + 2 + name_len).copied()
}

/// How many bytes the remaining-length field takes, once complete.
fn remaining_length_bytes(src: &[u8]) -> Option<usize> {
    let end = src.iter().take(4).position(|byte| byte & 0x80 == 0)?;
    Some(end + 1)
}

/// Consumes the whole buffer: the connection is refused and closed after this.
fn unsupported(src: &mut BytesMut, level: u8) -> Option<Inbound> {
    src.clear();
    Some(Inbound::UnsupportedProtocol { level })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::broker::packet::Reason;

    fn decode(bytes: &[u8]) -> Result<Option<Inbound>, CodecError> {
        MqttCodec::new(1024).decode(&mut BytesMut::from(bytes))
    }

    /// CONNECT, protocol name "MQTT", `level`, clean session, keep-alive 60, client id "c".
    fn connect_bytes(level: u8) -> Vec<u8> {
        vec![
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 1, b'c',
        ]
    }

    /// The same CONNECT in MQTT 5: an empty property block after the keep-alive.
    fn connect5_bytes() -> Vec<u8> {
        vec![
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
        ]
    }

    fn request(inbound: Result<Option<Inbound>, CodecError>) -> Request {
        match inbound {
            Ok(Some(Inbound::Request(request))) => request,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn a_level_4_connect_decodes_as_mqtt_3_1_1() {
        let Request::Connect(connect) = request(decode(&connect_bytes(4))) else {
            panic!("expected a CONNECT");
        };
        assert_eq!(connect.protocol, Protocol::V311);
        assert_eq!((connect.client_id.as_str(), connect.keep_alive), ("c", 60));
    }

    #[test]
    fn a_level_5_connect_decodes_as_mqtt_5_and_fixes_the_version() {
        let mut codec = MqttCodec::new(1024);
        let mut bytes = BytesMut::from(&connect5_bytes()[..]);
        let Request::Connect(connect) = request(codec.decode(&mut bytes)) else {
            panic!("expected a CONNECT");
        };
        assert_eq!(connect.protocol, Protocol::V5);
        assert_eq!(codec.protocol(), Some(Protocol::V5));
        let mut disconnect = BytesMut::from(&[0xE0, 0x00][..]);
        let expected = Request::Disconnect {
            with_will: false,
            session_expiry: None,
        };
        assert_eq!(request(codec.decode(&mut disconnect)), expected);
    }

    #[test]
    fn a_level_3_connect_is_reported_before_decoding() {
        let inbound = decode(&connect_bytes(3)).expect("sniffing never fails");
        assert_eq!(inbound, Some(Inbound::UnsupportedProtocol { level: 3 }));
    }

    #[test]
    fn a_disconnect_reply_writes_nothing_on_3_1_1_and_a_reason_on_5() {
        let mut codec = MqttCodec::new(1024);
        let mut out = BytesMut::new();
        codec
            .encode(Reply::Disconnect(Reason::NotAuthorized), &mut out)
            .expect("encode");
        assert!(out.is_empty());
        codec
            .decode(&mut BytesMut::from(&connect5_bytes()[..]))
            .expect("connect");
        codec
            .encode(Reply::Disconnect(Reason::NotAuthorized), &mut out)
            .expect("encode");
        assert_eq!(&out[..], &[0xE0, 2, 0x87, 0]);
    }

    #[test]
    fn a_partial_connect_waits_for_more_bytes() {
        assert!(matches!(decode(&connect_bytes(4)[..6]), Ok(None)));
        assert!(matches!(decode(&[0x10]), Ok(None)));
    }

    #[test]
    fn reserved_flags_are_refused() {
        let error = decode(&[0xC1, 0x00]).expect_err("PINGREQ with a flag set");
        assert!(matches!(
            error,
            CodecError::ReservedFlags {
                packet_type: 12,
                flags: 1
            }
        ));
        let error = decode(&[0x80, 0x05, 0, 1, 0, 1, b'a']).expect_err("SUBSCRIBE without 0b0010");
        assert!(matches!(
            error,
            CodecError::ReservedFlags { packet_type: 8, .. }
        ));
    }

    #[test]
    fn an_invalid_packet_type_is_a_packet_error() {
        let error = decode(&[0xF0, 0x00]).expect_err("type 15 is reserved");
        assert!(matches!(error, CodecError::Packet(_)));
    }

    #[test]
    fn a_packet_over_the_size_limit_is_refused_before_it_arrives() {
        let error = decode(&[0x30, 0xFF, 0xFF, 0x03]).expect_err("65535-byte publish");
        assert!(matches!(
            error,
            CodecError::Packet(mqttbytes::Error::PayloadSizeLimitExceeded(_))
        ));
    }

    use proptest::prelude::*;

    /// Feeds arbitrary bytes, and arbitrary bytes behind a valid CONNECT of either version,
    /// to the decoder: it must return a packet, an error or "need more", and never panic.
    fn decode_all(prefix: &[u8], tail: &[u8]) {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(tail);
        let packets = decode_client_stream(&bytes, 4096);
        assert!(
            packets <= bytes.len(),
            "every packet takes at least one byte"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_all(&[], &bytes);
            decode_all(&connect_bytes(4), &bytes);
            decode_all(&connect5_bytes(), &bytes);
        }

        #[test]
        fn mutated_packets_never_panic_the_decoder(
            index in 0usize..16,
            value in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            for mut packet in [connect_bytes(4), connect5_bytes()] {
                let at = index % packet.len();
                packet[at] = value;
                decode_all(&packet, &tail);
            }
        }
    }
}
