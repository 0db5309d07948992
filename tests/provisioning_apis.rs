//! CreateKeysAndCertificate, CBOR payloads, CSR refusals, token lifetime and
//! pre-provisioning hooks, with real MQTT clients over mutual TLS against an
//! emulator configured through the real `aws-sdk-iot`.

mod support;

use std::time::Duration;

use aws_sdk_iot::types::ProvisioningHook;
use fleetsim::device::mqtt::Session;
use fleetsim::emulator::EmulatorConfig;
use fleetsim::emulator::fleet_provisioning::keys::ServerKeyType;
use fleetsim::emulator::hook::{CommandHook, Hook, HookRegistry, HookRules};
use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::{Credentials, generate_key_and_csr};
use fleetsim::provisioning::{
    CreateCertificateFromCsrResponse, CreateKeysAndCertificateResponse, ErrorResponse,
    PayloadFormat, RegisterThingResponse, create_from_csr_topic, create_keys_topic,
    register_thing_topic_in,
};
use support::{TEMPLATE, Target, call, configured_emulator_with, decode, replies};

const VALIDITY: Duration = Duration::from_secs(600);
const HOOK_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:fleet-hook";

fn config() -> EmulatorConfig {
    EmulatorConfig {
        certificate_validity: VALIDITY,
        ..EmulatorConfig::default()
    }
}

async fn claim_session(target: &Target, client_id: &str, format: PayloadFormat) -> Session {
    let mut session = target.connect_claim(client_id).await;
    let mut filters = Vec::new();
    for topic in [
        create_keys_topic(format),
        create_from_csr_topic(format),
        register_thing_topic_in(TEMPLATE, format),
    ] {
        filters.extend(replies(&topic));
    }
    session
        .subscribe(&filters)
        .await
        .expect("claim policy allows the reply topics");
    session
}

fn encode<T: serde::Serialize>(format: PayloadFormat, value: &T) -> Vec<u8> {
    fleetsim::emulator::fleet_provisioning::format::encode(format, value)
}

async fn create_keys(
    session: &mut Session,
    format: PayloadFormat,
) -> CreateKeysAndCertificateResponse {
    let body = call(session, &create_keys_topic(format), Vec::new())
        .await
        .expect("CreateKeysAndCertificate is accepted");
    decode(format, &body)
}

async fn register(
    session: &mut Session,
    format: PayloadFormat,
    token: &str,
    serial: &str,
) -> Result<RegisterThingResponse, ErrorResponse> {
    let request = serde_json::json!({
        "certificateOwnershipToken": token,
        "parameters": { "SerialNumber": serial },
    });
    call(
        session,
        &register_thing_topic_in(TEMPLATE, format),
        encode(format, &request),
    )
    .await
    .map(|body| decode(format, &body))
    .map_err(|body| decode(format, &body))
}

async fn create_from_csr(
    session: &mut Session,
    csr_pem: &str,
) -> Result<CreateCertificateFromCsrResponse, ErrorResponse> {
    let format = PayloadFormat::Json;
    let request = serde_json::json!({ "certificateSigningRequest": csr_pem });
    call(
        session,
        &create_from_csr_topic(format),
        encode(format, &request),
    )
    .await
    .map(|body| decode(format, &body))
    .map_err(|body| decode(format, &body))
}

#[tokio::test]
async fn create_keys_and_certificate_gives_an_rsa_identity_that_connects_as_its_thing() {
    let target = configured_emulator_with(config()).await;
    let mut session = claim_session(&target, "provision-rsa-1", PayloadFormat::Json).await;

    let issued = create_keys(&mut session, PayloadFormat::Json).await;
    let status = target
        .emulator
        .registry()
        .certificate_status(&issued.certificate_id);
    assert_eq!(status, Some(CertificateStatus::PendingActivation));
    assert!(
        issued
            .private_key
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    let reply = register(
        &mut session,
        PayloadFormat::Json,
        &issued.certificate_ownership_token,
        "rsa-1",
    )
    .await
    .expect("RegisterThing is accepted");
    session.disconnect().await;

    let credentials = Credentials {
        certificate_pem: issued.certificate_pem,
        private_key_pem: issued.private_key,
    };
    assert!(credentials.key_matches_certificate().unwrap());
    let device = target.connect(&reply.thing_name, &credentials).await;
    assert!(
        device.is_ok(),
        "the RSA device signs its handshake: {:?}",
        device.err()
    );
}

#[tokio::test]
async fn cbor_requests_get_cbor_replies_with_the_same_keys() {
    let target = configured_emulator_with(EmulatorConfig {
        server_key: ServerKeyType::EcP256,
        ..config()
    })
    .await;
    let mut session = claim_session(&target, "provision-cbor-1", PayloadFormat::Cbor).await;

    let body = call(
        &mut session,
        &create_keys_topic(PayloadFormat::Cbor),
        vec![0xa0],
    )
    .await
    .expect("an empty CBOR map is a valid request");
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).is_err(),
        "reply is not JSON"
    );
    let issued: CreateKeysAndCertificateResponse = decode(PayloadFormat::Cbor, &body);
    let reply = register(
        &mut session,
        PayloadFormat::Cbor,
        &issued.certificate_ownership_token,
        "cbor-1",
    )
    .await
    .expect("CBOR RegisterThing is accepted");
    assert_eq!(reply.thing_name, "fleetsim-cbor-1");

    let rejection = register(&mut session, PayloadFormat::Cbor, "", "cbor-1")
        .await
        .expect_err("an empty token is refused");
    assert_eq!(rejection.error_code, "InvalidCertificateOwnershipToken");
}

#[tokio::test]
async fn weak_unsupported_and_tampered_csrs_are_rejected_and_the_connection_stays_usable() {
    let target = configured_emulator_with(config()).await;
    let mut session = claim_session(&target, "provision-csr-1", PayloadFormat::Json).await;
    let ed25519 = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let good = generate_key_and_csr("csr-1").unwrap();
    let tampered = tamper(&good.csr_pem);
    let refused = [
        (
            "RSA-1024",
            include_str!("fixtures/rsa1024.csr.pem").to_owned(),
        ),
        (
            "secp256k1",
            include_str!("fixtures/secp256k1.csr.pem").to_owned(),
        ),
        ("Ed25519", ed25519),
        ("tampered", tampered),
        ("garbage", "not a csr".to_owned()),
    ];

    for (what, csr) in refused {
        let error = create_from_csr(&mut session, &csr).await.expect_err(what);
        assert_eq!(error.status_code, 400, "{what}: {error}");
    }

    let issued = create_from_csr(&mut session, &good.csr_pem)
        .await
        .expect("a good CSR on the same connection is accepted");
    register(
        &mut session,
        PayloadFormat::Json,
        &issued.certificate_ownership_token,
        "csr-1",
    )
    .await
    .expect("and so is RegisterThing");
}

/// Flips one bit inside the CSR's subject, so the signature no longer verifies.
fn tamper(csr_pem: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let body: String = csr_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut der = engine.decode(body).unwrap();
    let at = der.windows(5).position(|w| w == b"csr-1").unwrap();
    der[at + 4] ^= 0x01;
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        engine.encode(der)
    )
}

#[tokio::test]
async fn an_ownership_token_expires_after_the_configured_lifetime_and_cannot_be_reused() {
    let target = configured_emulator_with(EmulatorConfig {
        token_lifetime: Duration::from_millis(300),
        server_key: ServerKeyType::EcP256,
        ..config()
    })
    .await;
    let mut session = claim_session(&target, "provision-token-1", PayloadFormat::Json).await;
    let stale = create_keys(&mut session, PayloadFormat::Json).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let error = register(
        &mut session,
        PayloadFormat::Json,
        &stale.certificate_ownership_token,
        "t-1",
    )
    .await
    .expect_err("an expired token is refused");
    assert_eq!(error.error_code, "InvalidCertificateOwnershipToken");
    assert!(
        target
            .emulator
            .registry()
            .certificate(&stale.certificate_id)
            .is_none(),
        "the unclaimed certificate is deleted with its token"
    );

    let fresh = create_keys(&mut session, PayloadFormat::Json).await;
    let token = &fresh.certificate_ownership_token;
    register(&mut session, PayloadFormat::Json, token, "t-1")
        .await
        .expect("fresh token");
    let error = register(&mut session, PayloadFormat::Json, token, "t-1")
        .await
        .expect_err("a used token is refused");
    assert_eq!(error.error_code, "InvalidCertificateOwnershipToken");
}

// ---- pre-provisioning hooks ----

async fn hooked_target(hook: Hook, timeout: Duration) -> Target {
    let hooks = std::sync::Arc::new(HookRegistry::new(timeout));
    hooks.register("fleet-hook", hook);
    let target = configured_emulator_with(EmulatorConfig {
        server_key: ServerKeyType::EcP256,
        hooks,
        ..config()
    })
    .await;
    target
        .control
        .client()
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .pre_provisioning_hook(
            ProvisioningHook::builder()
                .target_arn(HOOK_ARN)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("the template takes the hook");
    target
}

/// Provisions `serial`; `Ok` is the thing name.
async fn provision(target: &Target, serial: &str) -> Result<String, ErrorResponse> {
    let client_id = format!("provision-{serial}");
    let mut session = claim_session(target, &client_id, PayloadFormat::Json).await;
    let issued = create_keys(&mut session, PayloadFormat::Json).await;
    let token = &issued.certificate_ownership_token;
    let reply = register(&mut session, PayloadFormat::Json, token, serial).await;
    reply.map(|r| r.thing_name)
}

fn rules(pattern: &str, deny: &[&str]) -> Hook {
    Hook::Rules(HookRules {
        allow_pattern: Some(pattern.to_owned()),
        deny: deny.iter().map(|s| s.to_string()).collect(),
        ..HookRules::default()
    })
}

fn shell(script: &str) -> Hook {
    Hook::Command(CommandHook {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
    })
}

#[tokio::test]
async fn built_in_rules_allow_the_serial_pattern_and_deny_the_rest_with_403() {
    let target = hooked_target(rules("sim-*", &["sim-13"]), Duration::from_secs(5)).await;

    assert_eq!(provision(&target, "sim-1").await.unwrap(), "fleetsim-sim-1");
    for serial in ["sim-13", "rogue-1"] {
        let error = provision(&target, serial).await.expect_err(serial);
        assert_eq!(error.status_code, 403, "{error}");
        assert!(
            target
                .emulator
                .registry()
                .thing(&format!("fleetsim-{serial}"))
                .is_none()
        );
    }
}

#[tokio::test]
async fn built_in_rules_override_parameters_before_the_template_runs() {
    let hook = Hook::Rules(HookRules {
        parameter_overrides: [("SerialNumber".to_owned(), "renamed".to_owned())].into(),
        ..HookRules::default()
    });
    let target = hooked_target(hook, Duration::from_secs(5)).await;

    assert_eq!(
        provision(&target, "orig-1").await.unwrap(),
        "fleetsim-renamed"
    );
}

#[tokio::test]
async fn a_command_hook_reads_the_event_and_its_answer_allows_and_overrides() {
    let script = r#"event=$(cat); case "$event" in
        *'"SerialNumber":"bad-'*) echo '{"allowProvisioning":false}' ;;
        *'"claimCertificateId"'*) echo '{"allowProvisioning":true,"parameterOverrides":{"SerialNumber":"cmd"}}' ;;
        *) echo '{"allowProvisioning":false}' ;;
    esac"#;
    let target = hooked_target(shell(script), Duration::from_secs(5)).await;

    assert_eq!(provision(&target, "ok-1").await.unwrap(), "fleetsim-cmd");
    let error = provision(&target, "bad-1")
        .await
        .expect_err("the command denies");
    assert_eq!(error.status_code, 403);
}

#[tokio::test]
async fn a_command_hook_that_times_out_fails_or_prints_garbage_denies() {
    for script in [
        "sleep 5",
        "exit 3",
        "echo not-json",
        "head -c 70000 /dev/zero | tr '\\0' x",
    ] {
        let target = hooked_target(shell(script), Duration::from_millis(300)).await;
        let error = provision(&target, "sim-1").await.expect_err(script);
        assert_eq!(error.status_code, 403, "{script}: {error}");
    }
}

#[tokio::test]
async fn a_hook_target_with_no_registered_hook_denies() {
    let target = hooked_target(rules("*", &[]), Duration::from_secs(5)).await;
    target
        .control
        .client()
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .pre_provisioning_hook(
            ProvisioningHook::builder()
                .target_arn("arn:aws:lambda:us-east-1:123456789012:function:nobody")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let error = provision(&target, "sim-1").await.expect_err("no such hook");
    assert_eq!(error.status_code, 403);
}

/// Replaces the fleet template (the claim policy covers one template name)
/// with `body`.
async fn replace_template(target: &Target, body: &str) {
    let client = target.control.client();
    client
        .delete_provisioning_template()
        .template_name(TEMPLATE)
        .send()
        .await
        .unwrap();
    client
        .create_provisioning_template()
        .template_name(TEMPLATE)
        .template_body(body)
        .enabled(true)
        .provisioning_role_arn("arn:aws:iam::123456789012:role/fleetsim-provisioning")
        .send()
        .await
        .expect("the template is valid");
}

/// A template whose thing takes its type, groups and attributes from parameters.
const CLASSED_TEMPLATE: &str = r#"{
  "Parameters": {"SerialNumber": {"Type": "String"}, "Group": {"Type": "String"},
                 "Type": {"Type": "String", "Default": "sensor"},
                 "Extra": {"Type": "String", "Default": "no"},
                 "AWS::IoT::Certificate::Id": {"Type": "String"}},
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing",
      "Properties": {"ThingName": {"Ref": "SerialNumber"}, "ThingTypeName": {"Ref": "Type"},
                     "ThingGroups": [{"Ref": "Group"}],
                     "AttributePayload": {"a": "1", "b": "2", "c": "3", "d": {"Ref": "Extra"}}},
      "OverrideSettings": {"ThingGroups": "MERGE", "ThingTypeName": "FAIL"}},
    "certificate": {"Type": "AWS::IoT::Certificate",
      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}
  }
}"#;

async fn create_classes(target: &Target, thing_type: &str, groups: &[&str]) {
    let client = target.control.client();
    client
        .create_thing_type()
        .thing_type_name(thing_type)
        .send()
        .await
        .expect("CreateThingType");
    for group in groups {
        client
            .create_thing_group()
            .thing_group_name(*group)
            .send()
            .await
            .expect("CreateThingGroup");
    }
}

async fn register_classed(
    session: &mut Session,
    serial: &str,
    parameters: serde_json::Value,
) -> Result<Vec<u8>, Vec<u8>> {
    let issued = create_keys(session, PayloadFormat::Json).await;
    let mut parameters = parameters;
    parameters["SerialNumber"] = serde_json::json!(serial);
    let request = serde_json::json!({
        "certificateOwnershipToken": issued.certificate_ownership_token,
        "parameters": parameters,
    });
    let topic = register_thing_topic_in(TEMPLATE, PayloadFormat::Json);
    call(session, &topic, serde_json::to_vec(&request).unwrap()).await
}

#[tokio::test]
async fn register_thing_sets_thing_type_and_groups_and_merges_them_on_reprovisioning() {
    let target = configured_emulator_with(EmulatorConfig {
        server_key: ServerKeyType::EcP256,
        ..config()
    })
    .await;
    replace_template(&target, CLASSED_TEMPLATE).await;
    create_classes(&target, "sensor", &["eu", "beta"]).await;
    let mut session = claim_session(&target, "provision-typed", PayloadFormat::Json).await;

    for group in ["eu", "beta"] {
        register_classed(
            &mut session,
            "typed-1",
            serde_json::json!({ "Group": group }),
        )
        .await
        .expect("RegisterThing is accepted");
    }

    let thing = target
        .emulator
        .registry()
        .thing("typed-1")
        .expect("thing created");
    assert_eq!(thing.thing_type.as_deref(), Some("sensor"));
    let groups: Vec<&str> = thing.groups.iter().map(String::as_str).collect();
    assert_eq!(groups, ["beta", "eu"], "MERGE adds the second group");
    assert_eq!(thing.version, 2, "created at 1, changed once");
}

#[tokio::test]
async fn register_thing_refuses_missing_or_deprecated_types_missing_groups_and_extra_attributes() {
    let target = configured_emulator_with(EmulatorConfig {
        server_key: ServerKeyType::EcP256,
        ..config()
    })
    .await;
    replace_template(&target, CLASSED_TEMPLATE).await;
    create_classes(&target, "sensor", &["eu"]).await;
    create_classes(&target, "retired", &[]).await;
    target
        .control
        .client()
        .deprecate_thing_type()
        .thing_type_name("retired")
        .send()
        .await
        .unwrap();
    let mut session = claim_session(&target, "provision-classes", PayloadFormat::Json).await;
    let cases = [
        (
            "no-type",
            serde_json::json!({"Group": "eu", "Type": "camera"}),
            404,
            "thing type camera",
        ),
        (
            "no-group",
            serde_json::json!({"Group": "us"}),
            404,
            "thing group us",
        ),
        (
            "deprecated",
            serde_json::json!({"Group": "eu", "Type": "retired"}),
            400,
            "deprecated",
        ),
    ];

    for (serial, parameters, status, words) in cases {
        let body = register_classed(&mut session, serial, parameters)
            .await
            .expect_err("RegisterThing is refused");
        let error: ErrorResponse = decode(PayloadFormat::Json, &body);
        assert_eq!(error.status_code, status, "{serial}: {error}");
        assert!(error.to_string().contains(words), "{serial}: {error}");
        assert!(
            target.emulator.registry().thing(serial).is_none(),
            "{serial}: nothing is created by a refused request"
        );
    }
    register_classed(&mut session, "typed-ok", serde_json::json!({"Group": "eu"}))
        .await
        .expect("the same request with existing classes is accepted");
}

#[tokio::test]
async fn a_thing_without_a_type_takes_at_most_three_attributes() {
    let target = configured_emulator_with(EmulatorConfig {
        server_key: ServerKeyType::EcP256,
        ..config()
    })
    .await;
    let untyped = CLASSED_TEMPLATE
        .replace(r#""ThingTypeName": {"Ref": "Type"},"#, "")
        .replace(r#", "d": {"Ref": "Extra"}"#, "");
    let four = CLASSED_TEMPLATE.replace(r#""ThingTypeName": {"Ref": "Type"},"#, "");
    create_classes(&target, "sensor", &["eu"]).await;
    let mut session = claim_session(&target, "provision-attributes", PayloadFormat::Json).await;

    replace_template(&target, &four).await;
    let body = register_classed(&mut session, "four", serde_json::json!({"Group": "eu"}))
        .await
        .expect_err("four attributes without a type");
    let error: ErrorResponse = decode(PayloadFormat::Json, &body);
    assert_eq!(error.status_code, 400, "{error}");
    assert!(error.to_string().contains("at most 3"), "{error}");

    replace_template(&target, &untyped).await;
    register_classed(&mut session, "three", serde_json::json!({"Group": "eu"}))
        .await
        .expect("three attributes without a type are accepted");
}
