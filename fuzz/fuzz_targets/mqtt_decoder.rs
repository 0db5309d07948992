//! Fuzzes the broker's MQTT decoder (3.1.1 and 5, chosen by the CONNECT's protocol level)
//! with arbitrary client bytes. The first input byte picks a prefix: none, a valid 3.1.1
//! CONNECT or a valid MQTT 5 CONNECT, so that the fuzzer reaches the packets after CONNECT.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CONNECT_311: &[u8] = &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c'];
const CONNECT_5: &[u8] = &[
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let prefix: &[u8] = match selector % 3 {
        0 => &[],
        1 => CONNECT_311,
        _ => CONNECT_5,
    };
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(rest);
    fleetsim::emulator::broker::decode_client_stream(&bytes, 128 * 1024 + 260);
});
