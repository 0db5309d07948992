//! The fuzz targets' entry points, fed a bounded number of random and mutated inputs in the
//! normal test suite (proptest), so that a panic on hostile input fails CI without a nightly
//! toolchain: the MQTT decoder, the IoT policy parser and evaluator, the provisioning
//! template renderer, the scenario loader, and the Fleet Provisioning payload decoder.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use fleetsim::emulator::broker::decode_client_stream;
use fleetsim::emulator::fleet_provisioning::format;
use fleetsim::emulator::policy::{Action, PolicyDocument, RequestContext, decide};
use fleetsim::emulator::template::Template;
use fleetsim::provisioning::{PayloadFormat, RegisterThingRequest};
use fleetsim::scenario::{Scenario, ScenarioError};
use proptest::prelude::*;

const CONNECT_311: &[u8] = &[
    0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
];
const CONNECT_5: &[u8] = &[
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
];

const MINIMAL: &str =
    "name: small\nfleet:\n  size: 10\narrival:\n  rate: 5/s\nrun:\n  duration: 10s\n";

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
 "Action":["iot:Connect","iot:Publish"],"Resource":["arn:aws:iot:*:*:client/${iot:ClientId}",
 "arn:aws:iot:*:*:topic/dt/${iot:Connection.Thing.ThingName}/*"],
 "Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}"#;

const TEMPLATE: &str = r#"{"Parameters":{"SerialNumber":{"Type":"String"},
 "AWS::IoT::Certificate::Id":{"Type":"String"}},"Resources":{"thing":{"Type":"AWS::IoT::Thing",
 "Properties":{"ThingName":{"Fn::Join":["-",["fleetsim",{"Ref":"SerialNumber"}]]}}},
 "certificate":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":
 {"Ref":"AWS::IoT::Certificate::Id"},"Status":"ACTIVE"}}}}"#;

/// Random text, or a valid document with random bytes spliced in at a random place.
fn mutated(valid: &'static str) -> impl Strategy<Value = String> {
    let spliced = (0..valid.len(), ".{0,40}").prop_map(move |(at, noise)| {
        let mut at = at;
        while !valid.is_char_boundary(at) {
            at -= 1;
        }
        format!("{}{noise}{}", &valid[..at], &valid[at..])
    });
    prop_oneof![".{0,200}", spliced]
}

fn evaluate_policy(document: PolicyDocument) {
    let policies = [Arc::new(document)];
    let context = RequestContext {
        thing_name: Some("dev-1"),
        ..RequestContext::new("dev-1", "c0ffee")
    };
    let resource = "arn:aws:iot:us-east-1:123456789012:topic/dt/dev-1/x";
    for action in [Action::Connect, Action::Publish, Action::Subscribe] {
        decide(&policies, action, resource, &context);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn the_mqtt_decoder_never_panics_on_any_client_bytes(
        prefix in 0..3usize,
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut stream = [&[][..], CONNECT_311, CONNECT_5][prefix].to_vec();
        stream.extend_from_slice(&bytes);
        decode_client_stream(&stream, 128 * 1024 + 260);
    }

    #[test]
    fn the_policy_parser_refuses_or_accepts_and_the_evaluator_never_panics(
        text in mutated(POLICY),
    ) {
        if let Ok(document) = PolicyDocument::parse(&text) {
            evaluate_policy(document);
        }
    }

    #[test]
    fn the_template_renderer_refuses_or_renders_any_body_and_parameters(
        body in mutated(TEMPLATE),
        serial in ".{0,80}",
    ) {
        if let Ok(template) = Template::parse(&body) {
            let parameters = BTreeMap::from([
                ("SerialNumber".to_owned(), serial),
                ("AWS::IoT::Certificate::Id".to_owned(), "ab".repeat(32)),
            ]);
            let _ = template.evaluate(&parameters);
        }
    }

    #[test]
    fn the_scenario_loader_refuses_with_a_position_or_accepts(text in mutated(MINIMAL)) {
        match Scenario::parse(&text, Path::new("random.yaml")) {
            Ok(_) => {}
            Err(ScenarioError::Invalid { line, column, field, .. }) => {
                prop_assert!(line >= 1 && column >= 1);
                prop_assert!(!field.is_empty());
            }
            Err(other) => prop_assert!(false, "parse reads no file: {other}"),
        }
    }

    /// A width over what `format!` takes once panicked the loader.
    #[test]
    fn any_serial_pattern_is_accepted_or_refused_without_panicking(
        pattern in "[a-z./-]{0,4}\\{seq(:[0-9]{1,12})?\\}[a-z]{0,3}",
        size in 1u64..10_000_000,
    ) {
        let text = MINIMAL.replace(
            "  size: 10\n",
            &format!("  size: {size}\n  serial_pattern: \"{pattern}\"\n"),
        );
        if let Ok(scenario) = Scenario::parse(&text, Path::new("serial.yaml")) {
            let serial = scenario.fleet.serial_pattern.serial(size - 1);
            prop_assert!(fleetsim::identity::store::validate_serial(&serial).is_ok(), "{serial}");
        }
    }

    #[test]
    fn provisioning_payloads_decode_or_are_refused_with_400(
        cbor in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let format = if cbor { PayloadFormat::Cbor } else { PayloadFormat::Json };
        if let Err(error) = format::decode::<RegisterThingRequest>(format, &bytes) {
            prop_assert_eq!(error.status_code, 400);
        }
    }
}
