//! Fleet Provisioning against the emulator, with real MQTT clients over
//! mutual TLS and the emulator configured through the real `aws-sdk-iot`.

mod support;

use std::time::Duration;

use fleetsim::device::mqtt::Session;
use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::{Credentials, generate_key_and_csr};
use fleetsim::observe::FailureReason;
use fleetsim::provisioning::{
    CreateCertificateFromCsrResponse, ErrorResponse, RegisterThingResponse, create_from_csr,
    register_thing_accepted, register_thing_rejected, register_thing_topic,
};
use support::{TEMPLATE, Target, configured_emulator};

const VALIDITY: Duration = Duration::from_secs(600);

fn reply_filters() -> Vec<String> {
    vec![
        create_from_csr::ACCEPTED.to_owned(),
        create_from_csr::REJECTED.to_owned(),
        register_thing_accepted(TEMPLATE),
        register_thing_rejected(TEMPLATE),
    ]
}

async fn claim_session(target: &Target, client_id: &str) -> Session {
    let mut session = target.connect_claim(client_id).await;
    session
        .subscribe(&reply_filters())
        .await
        .expect("claim policy allows the reply topics");
    session
}

/// CreateCertificateFromCsr; returns the issued credentials and the token.
async fn create_certificate(
    session: &mut Session,
    serial: &str,
) -> (Credentials, CreateCertificateFromCsrResponse) {
    let key = generate_key_and_csr(serial).unwrap();
    let request = serde_json::json!({ "certificateSigningRequest": key.csr_pem });
    let reply = session
        .request(
            create_from_csr::REQUEST,
            serde_json::to_vec(&request).unwrap(),
            create_from_csr::ACCEPTED,
            create_from_csr::REJECTED,
        )
        .await
        .expect("the service answers")
        .expect("a valid CSR is accepted");
    let reply: CreateCertificateFromCsrResponse = serde_json::from_slice(&reply).unwrap();
    let credentials = Credentials {
        certificate_pem: reply.certificate_pem.clone(),
        private_key_pem: key.private_key_pem,
    };
    (credentials, reply)
}

/// RegisterThing with `token`; `Ok` holds the accepted reply, `Err` the rejection.
async fn register(
    session: &mut Session,
    token: &str,
    serial: &str,
) -> Result<RegisterThingResponse, ErrorResponse> {
    let request = serde_json::json!({
        "certificateOwnershipToken": token,
        "parameters": { "SerialNumber": serial },
    });
    let reply = session
        .request(
            &register_thing_topic(TEMPLATE),
            serde_json::to_vec(&request).unwrap(),
            &register_thing_accepted(TEMPLATE),
            &register_thing_rejected(TEMPLATE),
        )
        .await
        .expect("the service answers");
    match reply {
        Ok(body) => Ok(serde_json::from_slice(&body).unwrap()),
        Err(body) => Err(serde_json::from_slice(&body).unwrap()),
    }
}

/// Provisions one device end to end and returns its thing name and identity.
async fn provision(target: &Target, serial: &str) -> (String, Credentials) {
    let mut session = claim_session(target, &format!("provision-{serial}")).await;
    let (credentials, reply) = create_certificate(&mut session, serial).await;
    let registered = register(&mut session, &reply.certificate_ownership_token, serial)
        .await
        .expect("a fresh token registers");
    session.disconnect().await;
    (registered.thing_name, credentials)
}

#[tokio::test]
async fn provisioning_by_claim_creates_an_active_attached_certificate() {
    let target = configured_emulator(VALIDITY).await;
    let (thing, credentials) = provision(&target, "SN-1").await;
    assert_eq!(thing, "fleetsim-SN-1");
    let registry = target.emulator.registry();
    let id = credentials.info().unwrap().id;
    let record = registry
        .certificate(&id)
        .expect("the certificate is registered");
    assert_eq!(record.status, CertificateStatus::Active);
    assert!(record.things.contains(&thing));
    assert!(record.policies.contains("fleetsim-device"));
    assert_eq!(registry.thing(&thing).unwrap().attributes["serial"], "SN-1");
    let mut device = target
        .connect(&thing, &credentials)
        .await
        .expect("the device connects as itself");
    device
        .publish(
            &format!("fleetsim/{thing}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn replies_go_only_to_the_requesting_connection() {
    let target = configured_emulator(VALIDITY).await;
    let mut requester = claim_session(&target, "provision-A").await;
    let mut eavesdropper = claim_session(&target, "provision-B").await;
    let (_, reply) = create_certificate(&mut requester, "A").await;
    assert!(!reply.certificate_pem.is_empty());
    let overheard = eavesdropper
        .next_message(Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        overheard, None,
        "a connection with the same subscriptions hears nothing"
    );
    let (_, own) = create_certificate(&mut eavesdropper, "B").await;
    assert_ne!(
        own.certificate_id, reply.certificate_id,
        "B never receives A's certificate"
    );
    assert_ne!(
        own.certificate_ownership_token,
        reply.certificate_ownership_token
    );
}

#[tokio::test]
async fn empty_unknown_and_foreign_tokens_are_rejected_and_create_nothing() {
    let target = configured_emulator(VALIDITY).await;
    let mut owner = claim_session(&target, "provision-owner").await;
    let mut thief = claim_session(&target, "provision-thief").await;
    let (credentials, reply) = create_certificate(&mut owner, "OWNER").await;
    let token = reply.certificate_ownership_token;
    for bad in ["", "bm90LWEtdG9rZW4=", token.as_str()] {
        let rejected = register(&mut thief, bad, "THIEF")
            .await
            .expect_err("refused");
        assert_eq!(rejected.status_code, 400, "{rejected}");
        assert_eq!(rejected.error_code, "InvalidCertificateOwnershipToken");
    }
    let registry = target.emulator.registry();
    assert_eq!(registry.thing_count(), 0, "no thing was created");
    let id = credentials.info().unwrap().id;
    assert_eq!(
        registry.certificate_status(&id),
        Some(CertificateStatus::PendingActivation)
    );
    let registered = register(&mut owner, &token, "OWNER")
        .await
        .expect("the owner's token still works");
    assert_eq!(registered.thing_name, "fleetsim-OWNER");
    let reused = register(&mut owner, &token, "OWNER")
        .await
        .expect_err("a token is single-use");
    assert_eq!(reused.error_code, "InvalidCertificateOwnershipToken");
}

#[tokio::test]
async fn a_device_cannot_publish_outside_its_own_topics() {
    let target = configured_emulator(VALIDITY).await;
    let (thing, credentials) = provision(&target, "SN-7").await;
    let mut device = target.connect(&thing, &credentials).await.unwrap();
    device
        .publish(
            &format!("fleetsim/{thing}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            b"ok".to_vec(),
        )
        .await
        .unwrap();
    let denied = device
        .publish(
            "fleetsim/fleetsim-SN-8/telemetry",
            rumqttc::QoS::AtLeastOnce,
            b"no".to_vec(),
        )
        .await
        .expect_err("the broker closes the connection on a denied publish");
    assert_ne!(
        denied.reason,
        FailureReason::Timeout,
        "closed, not ignored: {denied}"
    );
    let intruder = target.connect("fleetsim-SN-8", &credentials).await;
    assert!(intruder.is_err(), "nor connect as another thing");
}

#[tokio::test]
async fn a_device_identity_cannot_use_the_claim_path_of_another_template() {
    let target = configured_emulator(VALIDITY).await;
    let mut session = target.connect_claim("provision-x").await;
    let denied = session
        .subscribe(&["$aws/provisioning-templates/other/provision/json/accepted"])
        .await;
    assert!(denied.is_err(), "the claim policy names one template only");
}

#[tokio::test]
async fn a_revoked_certificate_is_closed_and_then_refused_at_the_handshake() {
    let target = configured_emulator(VALIDITY).await;
    let (thing, credentials) = provision(&target, "SN-9").await;
    let mut live = target.connect(&thing, &credentials).await.unwrap();
    let id = credentials.info().unwrap().id;
    target
        .control
        .retire_certificate(&thing, &id)
        .await
        .expect("detach and revoke through aws-sdk-iot");
    let summary = target.control.describe_certificate(&id).await.unwrap();
    assert_eq!(summary.status, "REVOKED");
    let mut closed = false;
    for _ in 0..50 {
        if live.closed_reason().is_some() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "revocation closes the live connection");
    let refused = target
        .connect(&thing, &credentials)
        .await
        .expect_err("revoked is refused");
    assert_eq!(refused.reason, FailureReason::TlsRefused, "{refused}");
    assert!(
        target
            .control
            .list_thing_principals(&thing)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_unknown_certificate_is_refused_at_the_handshake() {
    let target = configured_emulator(VALIDITY).await;
    let stranger = fleetsim::emulator::ca::CertificateAuthority::generate("stranger").unwrap();
    let (issued, key) = stranger.issue_client("stranger", VALIDITY).unwrap();
    let credentials = Credentials {
        certificate_pem: issued.pem,
        private_key_pem: key,
    };
    let refused = target
        .connect("stranger", &credentials)
        .await
        .expect_err("refused");
    assert_eq!(refused.reason, FailureReason::TlsRefused, "{refused}");
    // Issued by the emulator's own CA but never registered: also refused.
    let (unregistered, key) = target
        .emulator
        .ca()
        .issue_client("ghost", VALIDITY)
        .unwrap();
    let credentials = Credentials {
        certificate_pem: unregistered.pem,
        private_key_pem: key,
    };
    let refused = target
        .connect("ghost", &credentials)
        .await
        .expect_err("refused");
    assert_eq!(refused.reason, FailureReason::TlsRefused, "{refused}");
}

#[tokio::test]
async fn the_claim_certificate_outlives_short_device_certificates() {
    // Device certificates last 3 s here, as on a compressed clock; the claim
    // comes from the control plane, which issues until 2049 as AWS does, so
    // devices arriving late in a long run can still provision.
    let target = configured_emulator(Duration::from_secs(3)).await;
    let claim = target.claim().info().unwrap();
    let year = Duration::from_secs(365 * 86_400);
    assert!(claim.not_after > std::time::SystemTime::now() + year);
    let (_, device) = provision(&target, "SN-LATE").await;
    let lifetime = device
        .info()
        .unwrap()
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        lifetime <= Duration::from_secs(3),
        "devices keep the compressed validity"
    );
}
