//! Hostile input on the Fleet Provisioning topics, through fleetsim's own MQTT client over
//! mutual TLS against an emulator set up with the real `aws-sdk-iot`: JSON and CBOR that is
//! malformed, deeply nested or huge; CSRs that are garbage, tampered, weak or of a key type
//! AWS refuses; ownership tokens replayed from another connection; pre-provisioning hooks
//! that hang, crash, print garbage or rename the thing to a path. Each is rejected with its
//! exact `rejected` reply, counted, and leaves the connection and the registry as they were.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_iot::types::ProvisioningHook;
use fleetsim::device::mqtt::Session;
use fleetsim::emulator::EmulatorConfig;
use fleetsim::emulator::fleet_provisioning::keys::ServerKeyType;
use fleetsim::emulator::hook::{CommandHook, Hook, HookRegistry};
use fleetsim::identity::generate_key_and_csr;
use fleetsim::provisioning::{
    CreateCertificateFromCsrResponse, ErrorResponse, PayloadFormat, RegisterThingResponse,
    create_from_csr_topic, create_keys_topic, register_thing_topic_in,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use support::{TEMPLATE, Target, call, configured_emulator_with, decode, replies};

const HOOK_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:hostile-hook";
const REQUESTS: &str = "fleetsim_emulator_provisioning_requests_total";

fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("one recorder per test binary")
    })
}

/// Rejected requests of `api` so far.
fn rejected(api: &str) -> u64 {
    let prefix = format!("{REQUESTS}{{api=\"{api}\",outcome=\"rejected\"}} ");
    metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("counter value"))
}

fn config(hooks: Arc<HookRegistry>) -> EmulatorConfig {
    metrics();
    EmulatorConfig {
        certificate_validity: Duration::from_secs(600),
        server_key: ServerKeyType::EcP256,
        hooks,
        ..EmulatorConfig::default()
    }
}

async fn target() -> Target {
    configured_emulator_with(config(Arc::default())).await
}

async fn claim_session(target: &Target, client_id: &str) -> Session {
    let mut session = target.connect_claim(client_id).await;
    // One SUBSCRIBE per format: AWS allows 8 filters in one.
    for format in [PayloadFormat::Json, PayloadFormat::Cbor] {
        let mut filters = Vec::new();
        for topic in [
            create_keys_topic(format),
            create_from_csr_topic(format),
            register_thing_topic_in(TEMPLATE, format),
        ] {
            filters.extend(replies(&topic));
        }
        session.subscribe(&filters).await.expect("reply topics");
    }
    session
}

/// A request that must be rejected; returns the rejection.
async fn refused(session: &mut Session, topic: &str, payload: Vec<u8>) -> ErrorResponse {
    let format = if topic.ends_with("/cbor") {
        PayloadFormat::Cbor
    } else {
        PayloadFormat::Json
    };
    match call(session, topic, payload).await {
        Ok(body) => panic!("accepted: {}", String::from_utf8_lossy(&body)),
        Err(body) => decode(format, &body),
    }
}

async fn create_from_csr(
    session: &mut Session,
    csr_pem: &str,
) -> Result<CreateCertificateFromCsrResponse, ErrorResponse> {
    let format = PayloadFormat::Json;
    let request = serde_json::json!({ "certificateSigningRequest": csr_pem });
    let payload = serde_json::to_vec(&request).expect("json");
    call(session, &create_from_csr_topic(format), payload)
        .await
        .map(|body| decode(format, &body))
        .map_err(|body| decode(format, &body))
}

async fn register(
    session: &mut Session,
    token: &str,
    serial: &str,
) -> Result<RegisterThingResponse, ErrorResponse> {
    let format = PayloadFormat::Json;
    let request = serde_json::json!({
        "certificateOwnershipToken": token,
        "parameters": { "SerialNumber": serial },
    });
    let payload = serde_json::to_vec(&request).expect("json");
    call(session, &register_thing_topic_in(TEMPLATE, format), payload)
        .await
        .map(|body| decode(format, &body))
        .map_err(|body| decode(format, &body))
}

/// A fresh certificate and its token on `session`.
async fn token(session: &mut Session, serial: &str) -> String {
    let csr = generate_key_and_csr(serial).expect("csr");
    create_from_csr(session, &csr.csr_pem)
        .await
        .expect("a good CSR is accepted")
        .certificate_ownership_token
}

/// The session still provisions a device end to end after whatever came before.
async fn still_provisions(session: &mut Session, serial: &str) {
    let token = token(session, serial).await;
    let reply = register(session, &token, serial)
        .await
        .expect("RegisterThing on the same connection");
    assert_eq!(reply.thing_name, format!("fleetsim-{serial}"));
}

fn assert_invalid_payload(error: &ErrorResponse, format: &str, reason: &str) {
    assert_eq!(
        (error.status_code, error.error_code.as_str()),
        (400, "InvalidPayload")
    );
    let prefix = format!("payload is not valid {format} for this API: ");
    assert!(
        error.error_message.starts_with(&prefix) && error.error_message.contains(reason),
        "{error}"
    );
}

#[tokio::test]
async fn malformed_nested_and_mistyped_json_is_rejected_as_invalid_payload_and_creates_nothing() {
    let target = target().await;
    let mut session = claim_session(&target, "hostile-json").await;
    let registry = target.emulator.registry();
    let certificates = registry.certificate_count();
    let before = rejected("create_keys_and_certificate") + rejected("register_thing");
    let keys = create_keys_topic(PayloadFormat::Json);
    let register_topic = register_thing_topic_in(TEMPLATE, PayloadFormat::Json);
    let nested = format!("{{\"a\":{}", "[".repeat(100_000));
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (&keys, b"{".to_vec(), "EOF while parsing an object"),
        (&keys, nested.into_bytes(), "recursion limit exceeded"),
        (&keys, b"[1,2,3]".to_vec(), "invalid type: sequence"),
        (&keys, b"{\"a\":\"\xff\xfe\"}".to_vec(), "invalid unicode"),
        (
            &register_topic,
            b"{\"certificateOwnershipToken\":5}".to_vec(),
            "invalid type: integer `5`",
        ),
        (
            &register_topic,
            b"{\"parameters\":[\"SerialNumber\"]}".to_vec(),
            "invalid type: sequence, expected a map",
        ),
    ];

    for (topic, payload, reason) in cases {
        let error = refused(&mut session, topic, payload).await;
        assert_invalid_payload(&error, "JSON", reason);
    }

    assert_eq!(registry.certificate_count(), certificates);
    let after = rejected("create_keys_and_certificate") + rejected("register_thing");
    assert_eq!(after, before + 6);
    still_provisions(&mut session, "after-json").await;
}

#[tokio::test]
async fn malformed_and_deeply_nested_cbor_is_rejected_as_invalid_payload() {
    let target = target().await;
    let mut session = claim_session(&target, "hostile-cbor").await;
    let keys = create_keys_topic(PayloadFormat::Cbor);
    let register_topic = register_thing_topic_in(TEMPLATE, PayloadFormat::Cbor);
    // A one-entry map whose value is an array of one array of one array...
    let mut nested = vec![0xA1, 0x61, b'a'];
    nested.extend(std::iter::repeat_n(0x81, 100_000));
    nested.push(0x00);
    // A map that claims 2^60 entries and holds none.
    let mut endless = vec![0xBB];
    endless.extend((1u64 << 60).to_be_bytes());

    for (topic, payload) in [
        (&keys, vec![0xFF, 0x00]),
        (&keys, nested),
        (&keys, endless),
        (&register_topic, vec![0xA1, 0x6A]),
    ] {
        let error = refused(&mut session, topic, payload).await;
        assert_invalid_payload(&error, "CBOR", "");
    }

    still_provisions(&mut session, "after-cbor").await;
}

#[tokio::test]
async fn a_huge_serial_is_rejected_with_a_bounded_message_on_the_same_connection() {
    let target = target().await;
    let mut session = claim_session(&target, "hostile-huge").await;
    let token = token(&mut session, "huge").await;
    // 131,100 bytes is close to the longest serial one PUBLISH holds; an error that quoted it
    // whole, with its context around it, would not fit the packet size limit on the way back.
    for serial in [
        "x".repeat(131_100),
        "\u{1}".repeat(21_000),
        "\"".repeat(65_000),
    ] {
        let error = register(&mut session, &token, &serial)
            .await
            .expect_err("no thing name is that long");
        assert_eq!(
            (error.status_code, error.error_code.as_str()),
            (400, "InvalidParameters")
        );
        assert!(
            error.error_message.contains("is not a valid thing name"),
            "{error}"
        );
        assert!(
            error.error_message.len() <= 1024,
            "{} bytes",
            error.error_message.len()
        );
    }

    let reply = register(&mut session, &token, "huge")
        .await
        .expect("the token survived the refusals");
    assert_eq!(reply.thing_name, "fleetsim-huge");
}

fn ed25519_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// Flips one bit of the subject so the signature no longer verifies.
fn tampered_csr(serial: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let pem = generate_key_and_csr(serial).expect("csr").csr_pem;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = engine.decode(body).expect("base64");
    let at = der
        .windows(serial.len())
        .position(|w| w == serial.as_bytes())
        .expect("serial in the subject");
    der[at] ^= 0x01;
    let body = engine.encode(der);
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n")
}

#[tokio::test]
async fn garbage_tampered_weak_and_unsupported_csrs_are_rejected_by_name_and_issue_nothing() {
    let target = target().await;
    let mut session = claim_session(&target, "hostile-csr").await;
    let registry = target.emulator.registry();
    let certificates = registry.certificate_count();
    let before = rejected("create_certificate_from_csr");
    let claim_pem = target.claim().certificate_pem;
    let cases = [
        ("garbage", "not a csr".to_owned(), "is not valid PEM or DER"),
        ("a certificate", claim_pem, "is not valid PEM or DER"),
        (
            "binary",
            String::from_utf8_lossy(&[0x30, 0x82, 0xFF, 0xFF]).into_owned(),
            "is not valid PEM or DER",
        ),
        (
            "tampered",
            tampered_csr("tamper-1"),
            "signature does not verify",
        ),
        (
            "RSA-1024",
            include_str!("fixtures/rsa1024.csr.pem").to_owned(),
            "uses an unsupported key or extension (RSA key of 1024 bits; at least 2048 required)",
        ),
        (
            "secp256k1",
            include_str!("fixtures/secp256k1.csr.pem").to_owned(),
            "uses an unsupported key or extension (EC key on curve 1.3.132.0.10; P-256, P-384 or P-521 required)",
        ),
        (
            "Ed25519",
            ed25519_csr(),
            "uses an unsupported key or extension (PKCS_ED25519)",
        ),
    ];

    for (what, csr, reason) in cases {
        let error = create_from_csr(&mut session, &csr).await.expect_err(what);
        assert_eq!(
            (error.status_code, error.error_code.as_str()),
            (400, "InvalidCertificateSigningRequest"),
            "{what}"
        );
        let expected = format!("certificate signing request {reason}");
        assert_eq!(error.error_message, expected, "{what}");
    }

    assert_eq!(registry.certificate_count(), certificates, "nothing issued");
    assert_eq!(rejected("create_certificate_from_csr"), before + 7);
    still_provisions(&mut session, "after-csr").await;
}

#[tokio::test]
async fn an_ownership_token_replayed_from_another_connection_is_refused_and_not_burned() {
    let target = target().await;
    let mut owner = claim_session(&target, "token-owner").await;
    let mut thief = claim_session(&target, "token-thief").await;
    let stolen = token(&mut owner, "owned-1").await;

    let error = register(&mut thief, &stolen, "stolen-1")
        .await
        .expect_err("replay");
    assert_eq!(error.error_code, "InvalidCertificateOwnershipToken");
    assert_eq!(
        error.error_message,
        "Certificate ownership token was issued to another connection."
    );
    assert!(
        target
            .emulator
            .registry()
            .thing("fleetsim-stolen-1")
            .is_none()
    );

    let reply = register(&mut owner, &stolen, "owned-1")
        .await
        .expect("the owner's token still works");
    assert_eq!(reply.thing_name, "fleetsim-owned-1");
    let error = register(&mut thief, &stolen, "stolen-1")
        .await
        .expect_err("used");
    assert_eq!(
        error.error_message,
        "Certificate ownership token is unknown, used or expired."
    );
    let error = register(&mut owner, &stolen, "owned-1")
        .await
        .expect_err("used");
    assert_eq!(error.error_code, "InvalidCertificateOwnershipToken");
    still_provisions(&mut thief, "thief-own").await;
}

// ---- pre-provisioning hooks ----

fn shell(script: &str) -> Hook {
    Hook::Command(CommandHook {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
    })
}

/// An emulator whose template calls the hook registered as `hostile-hook` in the returned
/// registry, with `timeout`.
async fn hooked(timeout: Duration) -> (Target, Arc<HookRegistry>) {
    let hooks = Arc::new(HookRegistry::new(timeout));
    let target = configured_emulator_with(config(Arc::clone(&hooks))).await;
    let hook = ProvisioningHook::builder()
        .target_arn(HOOK_ARN)
        .build()
        .expect("hook");
    target
        .control
        .client()
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .pre_provisioning_hook(hook)
        .send()
        .await
        .expect("the template takes the hook");
    (target, hooks)
}

fn pid_alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn hooks_that_hang_crash_or_print_garbage_deny_with_403_and_the_token_survives() {
    let (target, hooks) = hooked(Duration::from_millis(500)).await;
    let pid_file = tempfile::NamedTempFile::new().expect("pid file");
    let pid_path = pid_file.path().display().to_string();
    let mut session = claim_session(&target, "hostile-hook").await;
    let token = token(&mut session, "hooked-1").await;
    let before = rejected("register_thing");
    let cases = [
        (
            format!("echo $$ > {pid_path}; exec sleep 60"),
            "hook did not answer within 500ms",
        ),
        (
            "kill -SEGV $$".to_owned(),
            "hook command failed: exited with signal: 11 (SIGSEGV)",
        ),
        (
            "exit 7".to_owned(),
            "hook command failed: exited with exit status: 7",
        ),
        (
            "echo '{{{'".to_owned(),
            "hook answer is not valid: key must be a string at line 1 column 2",
        ),
        (
            "head -c 3000 /dev/urandom".to_owned(),
            "hook answer is not valid",
        ),
        (
            "echo '{\"allowProvisioning\":\"yes\"}'".to_owned(),
            "hook answer is not valid: invalid type",
        ),
        (
            "echo '{\"allowProvisioning\":false}'".to_owned(),
            "hook denied provisioning",
        ),
        (
            "head -c 70000 /dev/zero | tr '\\0' ' '".to_owned(),
            "hook answer is not valid: output over 65536 bytes",
        ),
    ];

    for (script, reason) in &cases {
        hooks.register("hostile-hook", shell(script));
        let error = register(&mut session, &token, "hooked-1")
            .await
            .expect_err(script);
        assert_eq!(
            (error.status_code, error.error_code.as_str()),
            (403, "AccessDeniedException")
        );
        // Exact where the hook's output is; random bytes make serde's position vary.
        let expected = format!("pre-provisioning hook: {reason}");
        assert!(
            error.error_message.starts_with(&expected),
            "{script}: {error}"
        );
    }

    let pid = std::fs::read_to_string(pid_file.path()).expect("the hung hook wrote its pid");
    // The kill is immediate; the reaping that removes /proc/<pid> happens in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pid_alive(pid.trim()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hung hook was never killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected("register_thing"), before + 8);
    assert_eq!(target.emulator.registry().thing_count(), 0);
    hooks.register("hostile-hook", shell("echo '{\"allowProvisioning\":true}'"));
    let reply = register(&mut session, &token, "hooked-1")
        .await
        .expect("a denied request keeps its token");
    assert_eq!(reply.thing_name, "fleetsim-hooked-1");
}

#[tokio::test]
async fn a_hook_that_renames_the_thing_to_a_path_is_refused_and_cannot_swap_the_certificate() {
    let (target, hooks) = hooked(Duration::from_secs(5)).await;
    let mut session = claim_session(&target, "hostile-rename").await;
    let token = token(&mut session, "renamed-1").await;
    let registry = target.emulator.registry();

    for path in [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "nul\\u0000byte",
        "..",
        "dev 1",
    ] {
        let answer = format!(
            "{{\"allowProvisioning\":true,\"parameterOverrides\":{{\"SerialNumber\":\"{path}\"}}}}"
        );
        hooks.register("hostile-hook", shell(&format!("echo '{answer}'")));
        let error = register(&mut session, &token, "renamed-1")
            .await
            .expect_err(path);
        assert_eq!(
            (error.status_code, error.error_code.as_str()),
            (400, "InvalidParameters")
        );
        assert!(
            error.error_message.contains("is not a valid thing name"),
            "{path}: {error}"
        );
    }
    assert_eq!(registry.thing_count(), 0);

    let other = target.setup.claim_certificate_id.clone();
    let answer = format!(
        "{{\"allowProvisioning\":true,\"parameterOverrides\":{{\"AWS::IoT::Certificate::Id\":\"{other}\"}}}}"
    );
    hooks.register("hostile-hook", shell(&format!("echo '{answer}'")));
    let reply = register(&mut session, &token, "renamed-1")
        .await
        .expect("the override of the certificate id is ignored");
    let principals = registry
        .thing_principals(&reply.thing_name)
        .expect("thing exists");
    assert_eq!(principals.len(), 1);
    assert_ne!(
        principals[0], other,
        "the hook could not attach another certificate"
    );
}
