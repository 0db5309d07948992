//! Micro-benchmarks of the broker's per-packet work, with the standard
//! library's clock and medians: topic matching (one filter, and the
//! subscription index with a fleet's worth of filters), IoT policy
//! evaluation with policy variables, and MQTT PUBLISH encoding (the
//! device's codec) and decoding (the broker's codec).

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use serde::Serialize;

use crate::emulator::broker::decode_client_stream;
use crate::emulator::policy::{Action, PolicyDocument, RequestContext, is_allowed};
use crate::emulator::topic::{SubscriptionIndex, matches};

/// Rounds per micro-benchmark; the median round is reported.
const ROUNDS: usize = 11;

/// The device policy in `policies/`, as `setup` renders it.
const DEVICE_POLICY: &str = include_str!("../../policies/device-policy.json");

/// The median cost of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct Micro {
    pub name: &'static str,
    pub ns_per_op: f64,
    pub ops_per_round: u64,
}

/// Every micro-benchmark with `ops` operations per round.
pub fn run_all(ops: u64) -> Vec<Micro> {
    vec![
        measure("topic_match_one_filter", ops, topic_match()),
        measure("subscription_index_10k_filters", ops, index_match()),
        measure("policy_publish_allowed", ops, policy_check()),
        measure("publish_encode_128b", ops, publish_encode()),
        measure("connect_and_publish_decode_128b", ops, publish_decode()),
    ]
}

/// Runs `op` `ops` times per round and reports the median round.
fn measure(name: &'static str, ops: u64, mut op: impl FnMut() -> usize) -> Micro {
    let mut sink = 0usize;
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ops {
                sink = sink.wrapping_add(op());
            }
            started.elapsed().as_nanos() as f64 / ops as f64
        })
        .collect();
    std::hint::black_box(sink);
    Micro {
        name,
        ns_per_op: super::median(&mut rounds),
        ops_per_round: ops,
    }
}

const TOPIC: &str = "fleetsim/bench-0004711/telemetry";

fn topic_match() -> impl FnMut() -> usize {
    || usize::from(matches(std::hint::black_box("fleetsim/+/telemetry"), TOPIC))
}

fn index_match() -> impl FnMut() -> usize {
    let mut index = SubscriptionIndex::new();
    for i in 0..10_000u64 {
        index.insert(&format!("fleetsim/bench-{i:07}/#"), i, QoS::AtLeastOnce);
    }
    index.insert("fleetsim/+/telemetry", 10_000, QoS::AtMostOnce);
    move || index.matches(std::hint::black_box(TOPIC)).len()
}

fn policy_check() -> impl FnMut() -> usize {
    let rendered = DEVICE_POLICY
        .replace("{{region}}", crate::emulator::REGION)
        .replace("{{account}}", crate::emulator::ACCOUNT_ID)
        .replace("{{template}}", "fleetsim-fleet");
    let policies = vec![Arc::new(
        PolicyDocument::parse(&rendered).expect("invariant: the shipped device policy parses"),
    )];
    let resource = format!(
        "arn:aws:iot:{}:{}:topic/{TOPIC}",
        crate::emulator::REGION,
        crate::emulator::ACCOUNT_ID
    );
    move || {
        let mut context = RequestContext::new("bench-0004711", "certificate-id");
        context.thing_name = Some("bench-0004711");
        usize::from(is_allowed(&policies, Action::Publish, &resource, &context))
    }
}

fn sample_publish() -> Publish {
    let mut publish = Publish::new(TOPIC, QoS::AtLeastOnce, vec![7u8; 128]);
    publish.pkid = 42;
    publish
}

fn publish_encode() -> impl FnMut() -> usize {
    let packet = Packet::Publish(sample_publish());
    let mut buffer = BytesMut::with_capacity(512);
    move || {
        buffer.clear();
        write(&packet, &mut buffer);
        buffer.len()
    }
}

fn publish_decode() -> impl FnMut() -> usize {
    // A CONNECT first: the broker's codec reads the protocol level from it.
    let mut stream = BytesMut::new();
    let connect = rumqttc::mqttbytes::v4::Connect::new("bench-0004711");
    write(&Packet::Connect(connect), &mut stream);
    write(&Packet::Publish(sample_publish()), &mut stream);
    let bytes = stream.freeze();
    // Two packets per call; counted as one decode of each.
    move || decode_client_stream(std::hint::black_box(&bytes), 4096)
}

fn write(packet: &Packet, buffer: &mut BytesMut) {
    let written = match packet {
        Packet::Publish(publish) => publish.write(buffer),
        Packet::Connect(connect) => connect.write(buffer),
        _ => unreachable!("only PUBLISH and CONNECT are encoded here"),
    };
    written.expect("invariant: a small packet encodes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_micro_benchmark_does_its_work() {
        assert_eq!(topic_match()(), 1);
        assert_eq!(index_match()(), 2);
        assert_eq!(policy_check()(), 1);
        assert!(publish_encode()() > 128);
        assert_eq!(publish_decode()(), 2);
    }
}
