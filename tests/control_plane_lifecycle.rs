//! The control-plane operations that delete, list and update, through the
//! real `aws-sdk-iot` client against the whole emulator, with AWS's refusals.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_iot::types::{CertificateStatus as SdkStatus, ProvisioningHook};
use fleetsim::emulator::EmulatorConfig;
use fleetsim::emulator::fleet_provisioning::keys::ServerKeyType;
use fleetsim::emulator::registry::CertificateStatus;
use fleetsim::identity::Credentials;
use support::{TEMPLATE, Target, configured_emulator_with};

fn config() -> EmulatorConfig {
    EmulatorConfig {
        certificate_validity: Duration::from_secs(600),
        server_key: ServerKeyType::EcP256,
        ..EmulatorConfig::default()
    }
}

async fn target() -> Target {
    configured_emulator_with(config()).await
}

fn code<E: aws_sdk_iot::error::ProvideErrorMetadata>(error: &E) -> String {
    error.code().unwrap_or("no code").to_owned()
}

/// CreateKeysAndCertificate through the SDK; returns (id, arn, credentials).
async fn keys_and_certificate(target: &Target, active: bool) -> (String, String, Credentials) {
    let out = target
        .control
        .client()
        .create_keys_and_certificate()
        .set_as_active(active)
        .send()
        .await
        .expect("CreateKeysAndCertificate");
    let pair = out.key_pair().expect("key pair");
    let credentials = Credentials {
        certificate_pem: out.certificate_pem().unwrap().to_owned(),
        private_key_pem: pair.private_key().unwrap().to_owned(),
    };
    assert!(
        pair.public_key()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    (
        out.certificate_id().unwrap().to_owned(),
        out.certificate_arn().unwrap().to_owned(),
        credentials,
    )
}

#[tokio::test]
async fn create_keys_and_certificate_returns_a_working_key_pair_in_the_requested_status() {
    let target = target().await;
    let (id, _, credentials) = keys_and_certificate(&target, true).await;
    let (inactive, _, _) = keys_and_certificate(&target, false).await;

    let registry = target.emulator.registry();
    assert_eq!(
        registry.certificate_status(&id),
        Some(CertificateStatus::Active)
    );
    assert_eq!(
        registry.certificate_status(&inactive),
        Some(CertificateStatus::Inactive)
    );
    assert!(credentials.key_matches_certificate().unwrap());
}

#[tokio::test]
async fn delete_certificate_follows_aws_refusals() {
    let target = target().await;
    let client = target.control.client();
    let (id, arn, _) = keys_and_certificate(&target, true).await;
    client
        .attach_policy()
        .policy_name("fleetsim-device")
        .target(&arn)
        .send()
        .await
        .unwrap();

    let error = client
        .delete_certificate()
        .certificate_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        "CertificateStateException",
        "ACTIVE cannot be deleted"
    );

    client
        .update_certificate()
        .certificate_id(&id)
        .new_status(SdkStatus::Inactive)
        .send()
        .await
        .unwrap();
    target
        .emulator
        .registry()
        .ensure_thing("t1", &BTreeMap::new());
    client
        .attach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();
    let error = client
        .delete_certificate()
        .certificate_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&error),
        "DeleteConflictException",
        "attached to a thing"
    );

    client
        .detach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();
    let error = client
        .delete_certificate()
        .certificate_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "DeleteConflictException", "policy attached");

    client
        .delete_certificate()
        .certificate_id(&id)
        .force_delete(true)
        .send()
        .await
        .expect("force deletes despite the policy");
    assert!(target.emulator.registry().certificate(&id).is_none());
    let error = client
        .delete_certificate()
        .certificate_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
}

#[tokio::test]
async fn list_certificates_pages_through_every_certificate() {
    let target = target().await;
    for _ in 0..4 {
        keys_and_certificate(&target, false).await;
    }
    let expected = target.emulator.registry().certificate_count();

    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = target
            .control
            .client()
            .list_certificates()
            .page_size(2)
            .set_marker(marker)
            .send()
            .await
            .unwrap();
        seen.extend(
            page.certificates()
                .iter()
                .map(|c| c.certificate_id().unwrap().to_owned()),
        );
        marker = page.next_marker().map(str::to_owned);
        if marker.is_none() {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), expected);
}

#[tokio::test]
async fn delete_policy_is_refused_while_attached_and_list_attached_policies_shows_why() {
    let target = target().await;
    let client = target.control.client();
    let (_, arn, _) = keys_and_certificate(&target, false).await;
    client
        .attach_policy()
        .policy_name("fleetsim-device")
        .target(&arn)
        .send()
        .await
        .unwrap();

    let attached = client
        .list_attached_policies()
        .target(&arn)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = attached
        .policies()
        .iter()
        .filter_map(|p| p.policy_name())
        .collect();
    assert_eq!(names, ["fleetsim-device"]);
    let error = client
        .delete_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "DeleteConflictException");

    client
        .detach_policy()
        .policy_name("fleetsim-device")
        .target(&arn)
        .send()
        .await
        .unwrap();
    client
        .delete_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .expect("now deletable");
    let error = client
        .get_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
    let error = client
        .delete_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
}

#[tokio::test]
async fn delete_thing_refuses_attached_principals_and_stale_versions_and_ignores_missing_things() {
    let target = target().await;
    let client = target.control.client();
    let (_, arn, _) = keys_and_certificate(&target, false).await;
    target
        .emulator
        .registry()
        .ensure_thing("t1", &BTreeMap::new());
    client
        .attach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();

    let error = client
        .delete_thing()
        .thing_name("t1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidRequestException");
    client
        .detach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();
    let error = client
        .delete_thing()
        .thing_name("t1")
        .expected_version(7)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "VersionConflictException");

    client
        .delete_thing()
        .thing_name("t1")
        .expected_version(1)
        .send()
        .await
        .unwrap();
    assert!(target.emulator.registry().thing("t1").is_none());
    client
        .delete_thing()
        .thing_name("t1")
        .send()
        .await
        .expect("missing is fine");
}

#[tokio::test]
async fn list_things_filters_by_attribute_and_pages() {
    let target = target().await;
    let registry = target.emulator.registry();
    for i in 0..5 {
        let colour = if i % 2 == 0 { "red" } else { "blue" };
        registry.ensure_thing(
            &format!("thing-{i}"),
            &[("colour".into(), colour.into())].into(),
        );
    }
    let client = target.control.client();

    let red = client
        .list_things()
        .attribute_name("colour")
        .attribute_value("red")
        .send()
        .await
        .unwrap();
    assert_eq!(red.things().len(), 3);
    let first = client.list_things().max_results(2).send().await.unwrap();
    let token = first.next_token().expect("more pages").to_owned();
    let second = client
        .list_things()
        .max_results(2)
        .next_token(token)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = second
        .things()
        .iter()
        .filter_map(|t| t.thing_name())
        .collect();
    assert_eq!(names, ["thing-2", "thing-3"]);
}

#[tokio::test]
async fn provisioning_templates_update_their_hook_and_delete() {
    let target = target().await;
    let client = target.control.client();
    let hook = ProvisioningHook::builder()
        .target_arn("arn:aws:lambda:us-east-1:123456789012:function:check")
        .payload_version("2020-04-01")
        .build()
        .unwrap();

    client
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .enabled(false)
        .description("paused")
        .pre_provisioning_hook(hook.clone())
        .send()
        .await
        .unwrap();
    let described = client
        .describe_provisioning_template()
        .template_name(TEMPLATE)
        .send()
        .await
        .unwrap();
    assert_eq!(described.enabled(), Some(false));
    assert_eq!(described.description(), Some("paused"));
    let target_arn = described.pre_provisioning_hook().map(|h| h.target_arn());
    assert_eq!(
        target_arn,
        Some("arn:aws:lambda:us-east-1:123456789012:function:check")
    );

    let error = client
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .pre_provisioning_hook(hook)
        .remove_pre_provisioning_hook(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidRequestException");
    let bad_hook = ProvisioningHook::builder()
        .target_arn("arn:aws:sns:us-east-1:1:topic")
        .build()
        .unwrap();
    let error = client
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .pre_provisioning_hook(bad_hook)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "InvalidRequestException");
    client
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .remove_pre_provisioning_hook(true)
        .send()
        .await
        .unwrap();
    let described = client
        .describe_provisioning_template()
        .template_name(TEMPLATE)
        .send()
        .await
        .unwrap();
    assert!(described.pre_provisioning_hook().is_none());

    client
        .delete_provisioning_template()
        .template_name(TEMPLATE)
        .send()
        .await
        .unwrap();
    let error = client
        .delete_provisioning_template()
        .template_name(TEMPLATE)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
    let error = client
        .update_provisioning_template()
        .template_name(TEMPLATE)
        .enabled(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
}

#[tokio::test]
async fn a_deactivated_certificate_keeps_its_connection_until_the_configured_delay() {
    let mut config = config();
    config.broker.deactivation_delay = Duration::from_millis(600);
    let target = configured_emulator_with(config).await;
    let (id, _, credentials) = keys_and_certificate(&target, true).await;
    let arn = target.emulator.registry().arn("cert", &id);
    let client = target.control.client();
    client
        .attach_policy()
        .policy_name("fleetsim-claim")
        .target(&arn)
        .send()
        .await
        .unwrap();
    let mut session = target
        .connect("delayed-1", &credentials)
        .await
        .expect("connects while active");

    client
        .update_certificate()
        .certificate_id(&id)
        .new_status(SdkStatus::Revoked)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        session.closed_reason().is_none(),
        "still open inside the delay"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(session.closed_reason().is_some(), "closed after the delay");
}

#[tokio::test]
async fn detach_thing_principal_takes_effect_after_the_propagation_delay() {
    let target = configured_emulator_with(EmulatorConfig {
        detach_propagation_delay: Duration::from_millis(300),
        ..config()
    })
    .await;
    let (id, arn, _) = keys_and_certificate(&target, false).await;
    let registry = target.emulator.registry();
    registry.ensure_thing("t1", &BTreeMap::new());
    let client = target.control.client();
    client
        .attach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();

    client
        .detach_thing_principal()
        .thing_name("t1")
        .principal(&arn)
        .send()
        .await
        .unwrap();
    assert!(registry.is_attached("t1", &id), "not yet propagated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!registry.is_attached("t1", &id));
}

#[tokio::test]
async fn attach_and_detach_policy_take_effect_after_the_policy_propagation_delay() {
    let target = configured_emulator_with(EmulatorConfig {
        policy_propagation_delay: Duration::from_millis(300),
        ..config()
    })
    .await;
    let (id, arn, _) = keys_and_certificate(&target, false).await;
    let registry = target.emulator.registry();
    let client = target.control.client();
    let attached = |registry: &fleetsim::emulator::registry::Registry| {
        registry
            .certificate(&id)
            .unwrap()
            .policies
            .contains("fleetsim-device")
    };

    client
        .attach_policy()
        .policy_name("fleetsim-device")
        .target(&arn)
        .send()
        .await
        .unwrap();
    assert!(!attached(registry), "not yet propagated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(attached(registry));

    client
        .detach_policy()
        .policy_name("fleetsim-device")
        .target(&arn)
        .send()
        .await
        .unwrap();
    assert!(
        attached(registry),
        "the detach is not yet propagated either"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!attached(registry));

    let unknown = client
        .attach_policy()
        .policy_name("no-such-policy")
        .target(&arn)
        .send()
        .await;
    assert!(unknown.is_err(), "an unknown policy is refused at once");
}
