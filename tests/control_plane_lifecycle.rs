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

/// The SDK calls these tests repeat; a refusal comes back as AWS's error code.
struct Api<'a>(&'a aws_sdk_iot::Client);

type Answer = Result<(), String>;

fn answer<T, E: aws_sdk_iot::error::ProvideErrorMetadata>(result: Result<T, E>) -> Answer {
    result.map(|_| ()).map_err(|error| code(&error))
}

impl Api<'_> {
    async fn attach_policy(&self, policy: &str, target: &str) -> Answer {
        let call = self.0.attach_policy().policy_name(policy).target(target);
        answer(call.send().await)
    }

    async fn detach_policy(&self, policy: &str, target: &str) -> Answer {
        let call = self.0.detach_policy().policy_name(policy).target(target);
        answer(call.send().await)
    }

    async fn delete_policy(&self, policy: &str) -> Answer {
        answer(self.0.delete_policy().policy_name(policy).send().await)
    }

    async fn attach_principal(&self, thing: &str, arn: &str) -> Answer {
        let call = self
            .0
            .attach_thing_principal()
            .thing_name(thing)
            .principal(arn);
        answer(call.send().await)
    }

    async fn detach_principal(&self, thing: &str, arn: &str) -> Answer {
        let call = self
            .0
            .detach_thing_principal()
            .thing_name(thing)
            .principal(arn);
        answer(call.send().await)
    }

    async fn set_status(&self, id: &str, status: SdkStatus) -> Answer {
        let call = self
            .0
            .update_certificate()
            .certificate_id(id)
            .new_status(status);
        answer(call.send().await)
    }

    async fn delete_certificate(&self, id: &str, force: bool) -> Answer {
        let call = self.0.delete_certificate().certificate_id(id);
        answer(call.force_delete(force).send().await)
    }

    async fn delete_thing(&self, thing: &str, version: Option<i64>) -> Answer {
        let call = self.0.delete_thing().thing_name(thing);
        answer(call.set_expected_version(version).send().await)
    }

    async fn delete_template(&self) -> Answer {
        let call = self
            .0
            .delete_provisioning_template()
            .template_name(TEMPLATE);
        answer(call.send().await)
    }
}

fn refused(code: &str) -> Answer {
    Err(code.to_owned())
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
    let api = Api(client);
    let (id, arn, _) = keys_and_certificate(&target, true).await;
    api.attach_policy("fleetsim-device", &arn).await.unwrap();

    assert_eq!(
        api.delete_certificate(&id, false).await,
        refused("CertificateStateException"),
        "ACTIVE cannot be deleted"
    );

    api.set_status(&id, SdkStatus::Inactive).await.unwrap();
    target
        .emulator
        .registry()
        .ensure_thing("t1", &BTreeMap::new());
    api.attach_principal("t1", &arn).await.unwrap();
    assert_eq!(
        api.delete_certificate(&id, false).await,
        refused("DeleteConflictException"),
        "attached to a thing"
    );

    api.detach_principal("t1", &arn).await.unwrap();
    assert_eq!(
        api.delete_certificate(&id, false).await,
        refused("DeleteConflictException"),
        "policy attached"
    );

    api.delete_certificate(&id, true)
        .await
        .expect("force deletes despite the policy");
    assert!(target.emulator.registry().certificate(&id).is_none());
    assert_eq!(
        api.delete_certificate(&id, false).await,
        refused("ResourceNotFoundException")
    );
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
    let api = Api(client);
    let (_, arn, _) = keys_and_certificate(&target, false).await;
    api.attach_policy("fleetsim-device", &arn).await.unwrap();

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
    assert_eq!(
        api.delete_policy("fleetsim-device").await,
        refused("DeleteConflictException")
    );

    api.detach_policy("fleetsim-device", &arn).await.unwrap();
    api.delete_policy("fleetsim-device")
        .await
        .expect("now deletable");
    let error = client
        .get_policy()
        .policy_name("fleetsim-device")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&error), "ResourceNotFoundException");
    assert_eq!(
        api.delete_policy("fleetsim-device").await,
        refused("ResourceNotFoundException")
    );
}

#[tokio::test]
async fn delete_thing_refuses_attached_principals_and_stale_versions_and_ignores_missing_things() {
    let target = target().await;
    let client = target.control.client();
    let api = Api(client);
    let (_, arn, _) = keys_and_certificate(&target, false).await;
    target
        .emulator
        .registry()
        .ensure_thing("t1", &BTreeMap::new());
    api.attach_principal("t1", &arn).await.unwrap();

    assert_eq!(
        api.delete_thing("t1", None).await,
        refused("InvalidRequestException")
    );
    api.detach_principal("t1", &arn).await.unwrap();
    assert_eq!(
        api.delete_thing("t1", Some(7)).await,
        refused("VersionConflictException")
    );

    api.delete_thing("t1", Some(1)).await.unwrap();
    assert!(target.emulator.registry().thing("t1").is_none());
    api.delete_thing("t1", None).await.expect("missing is fine");
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
    let api = Api(client);
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

    api.delete_template().await.unwrap();
    assert_eq!(
        api.delete_template().await,
        refused("ResourceNotFoundException")
    );
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
    let api = Api(client);
    api.attach_policy("fleetsim-claim", &arn).await.unwrap();
    let mut session = target
        .connect("delayed-1", &credentials)
        .await
        .expect("connects while active");

    api.set_status(&id, SdkStatus::Revoked).await.unwrap();
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
    let api = Api(client);
    api.attach_principal("t1", &arn).await.unwrap();

    api.detach_principal("t1", &arn).await.unwrap();
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
    let api = Api(client);
    let attached = |registry: &fleetsim::emulator::registry::Registry| {
        registry
            .certificate(&id)
            .unwrap()
            .policies
            .contains("fleetsim-device")
    };

    api.attach_policy("fleetsim-device", &arn).await.unwrap();
    assert!(!attached(registry), "not yet propagated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(attached(registry));

    api.detach_policy("fleetsim-device", &arn).await.unwrap();
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
