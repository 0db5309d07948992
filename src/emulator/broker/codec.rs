//! The broker's wire codec: rumqttc's MQTT 3.1.1 packet codec plus the checks a server needs
//! that a client codec skips. It reads the protocol level of a CONNECT before decoding it,
//! because the v4 decoder misreads an MQTT 5 CONNECT, and refuses reserved header flags.

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4};
use tokio_util::codec::{Decoder, Encoder};

/// What the broker reads from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Packet(v4::Packet),
    /// A CONNECT for another protocol level (5 is MQTT 5, 3 is MQTT 3.1), not decoded.
    UnsupportedProtocol {
        level: u8,
    },
}

/// Why a client's bytes are not an acceptable packet; always the client's fault, except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("client sent an undecodable packet: {0}")]
    Packet(mqttbytes::Error),
    #[error("client set reserved flags {flags:#06b} on packet type {packet_type} [MQTT-2.2.2-2]")]
    ReservedFlags { packet_type: u8, flags: u8 },
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<mqttbytes::Error> for CodecError {
    fn from(error: mqttbytes::Error) -> Self {
        match error {
            mqttbytes::Error::Io(io) => CodecError::Io(io),
            other => CodecError::Packet(other),
        }
    }
}

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;

#[derive(Debug, Clone)]
pub struct MqttCodec {
    inner: v4::Codec,
}

impl MqttCodec {
    /// `max_packet_size` bounds the remaining length of every packet in both directions.
    pub fn new(max_packet_size: usize) -> MqttCodec {
        MqttCodec {
            inner: v4::Codec {
                max_incoming_size: max_packet_size,
                max_outgoing_size: max_packet_size,
            },
        }
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
            match connect_level(src) {
                None => return Ok(None),
                Some(4) => {}
                Some(level) => return Ok(unsupported(src, level)),
            }
        }
        Ok(self.inner.decode(src)?.map(Inbound::Packet))
    }
}

impl Encoder<v4::Packet> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, packet: v4::Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(self.inner.encode(packet, dst)?)
    }
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

    fn decode(bytes: &[u8]) -> Result<Option<Inbound>, CodecError> {
        MqttCodec::new(1024).decode(&mut BytesMut::from(bytes))
    }

    /// CONNECT, protocol name "MQTT", `level`, clean session, keep-alive 60, client id "c".
    fn connect_bytes(level: u8) -> Vec<u8> {
        vec![
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 1, b'c',
        ]
    }

    #[test]
    fn a_level_4_connect_decodes() {
        let Ok(Some(Inbound::Packet(v4::Packet::Connect(connect)))) = decode(&connect_bytes(4))
        else {
            panic!("expected a CONNECT");
        };
        assert_eq!(connect.client_id, "c");
        assert_eq!(connect.keep_alive, 60);
    }

    #[test]
    fn a_level_5_connect_is_reported_before_decoding() {
        let inbound = decode(&connect_bytes(5)).expect("sniffing never fails");
        assert_eq!(inbound, Some(Inbound::UnsupportedProtocol { level: 5 }));
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
}
