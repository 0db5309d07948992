//! The provisioning role through `aws-sdk-iam`, which the emulator does not
//! serve: the SDK's own replay client answers with recorded IAM responses,
//! and every request the SDK sent is checked against the exact one
//! expected (URI, content type, form body). The IoT side of setup and
//! cleanup runs against an in-process emulator.

use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
use aws_smithy_types::body::SdkBody;
use fleetsim::control::ControlPlane;
use fleetsim::emulator::{Emulator, EmulatorConfig};
use fleetsim::target::{
    self, AMAZON_ROOT_CA_1, AwsAccess, CleanupRequest, Prefix, ProvisioningRole, SetupRequest,
    TRUST_POLICY,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

const IAM: &str = "https://iam.amazonaws.com/";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/loadtest-provisioning";
const MANAGED: &str = "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration";
const XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";

/// What the AWS query protocol leaves unencoded in a form value.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn form(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

/// The request the SDK must send: an IAM query action with these parameters.
fn request(action: &str, parameters: &[(&str, &str)]) -> axum::http::Request<SdkBody> {
    let mut body = format!("Action={action}&Version=2010-05-08");
    for (name, value) in parameters {
        body.push_str(&format!("&{name}={}", form(value)));
    }
    axum::http::Request::builder()
        .method("POST")
        .uri(IAM)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(SdkBody::from(body))
        .unwrap()
}

fn response(status: u16, xml: String) -> axum::http::Response<SdkBody> {
    axum::http::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(SdkBody::from(xml))
        .unwrap()
}

fn role_xml(tags: &str) -> String {
    format!(
        "<Role><Path>/</Path><RoleName>loadtest-provisioning</RoleName>\
         <RoleId>AROAEXAMPLEROLEID0001</RoleId><Arn>{ROLE_ARN}</Arn>\
         <CreateDate>2026-12-04T19:00:00Z</CreateDate><Tags>{tags}</Tags></Role>"
    )
}

fn ok(action: &str, result: &str) -> axum::http::Response<SdkBody> {
    response(
        200,
        format!(
            "<{action}Response xmlns=\"{XMLNS}\"><{action}Result>{result}</{action}Result>\
             <ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata></{action}Response>"
        ),
    )
}

fn no_such_entity() -> axum::http::Response<SdkBody> {
    response(
        404,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>NoSuchEntity</Code>\
             <Message>The role with name loadtest-provisioning cannot be found.</Message></Error>\
             <RequestId>req-2</RequestId></ErrorResponse>"
        ),
    )
}

const OUR_TAG: &str = "<member><Key>fleetsim:prefix</Key><Value>loadtest</Value></member>";

fn get_role() -> axum::http::Request<SdkBody> {
    request("GetRole", &[("RoleName", "loadtest-provisioning")])
}

fn create_role() -> axum::http::Request<SdkBody> {
    request(
        "CreateRole",
        &[
            ("RoleName", "loadtest-provisioning"),
            ("AssumeRolePolicyDocument", TRUST_POLICY),
            (
                "Description",
                "AWS IoT provisions fleetsim's devices with this role",
            ),
            ("Tags.member.1.Key", "fleetsim:prefix"),
            ("Tags.member.1.Value", "loadtest"),
        ],
    )
}

fn role_policy(action: &str) -> axum::http::Request<SdkBody> {
    request(
        action,
        &[
            ("RoleName", "loadtest-provisioning"),
            ("PolicyArn", MANAGED),
        ],
    )
}

fn iam(events: Vec<ReplayEvent>) -> (ProvisioningRole, StaticReplayClient) {
    let replay = StaticReplayClient::new(events);
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .http_client(replay.clone())
        .build();
    (
        ProvisioningRole::new(aws_sdk_iam::Client::from_conf(config)),
        replay,
    )
}

fn prefix() -> Prefix {
    Prefix::new("loadtest").unwrap()
}

#[tokio::test]
async fn a_missing_role_is_created_with_the_trust_policy_its_tag_and_the_managed_policy() {
    let (role, replay) = iam(vec![
        ReplayEvent::new(get_role(), no_such_entity()),
        ReplayEvent::new(create_role(), ok("CreateRole", &role_xml(OUR_TAG))),
        ReplayEvent::new(role_policy("AttachRolePolicy"), ok("AttachRolePolicy", "")),
    ]);

    assert_eq!(role.find(&prefix()).await.unwrap(), None);
    let arn = role.create(&prefix()).await.unwrap();

    assert_eq!(arn, ROLE_ARN);
    replay.assert_requests_match(&[]);
}

#[tokio::test]
async fn setup_without_a_role_arn_creates_the_role_and_the_template_uses_it() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let control = ControlPlane::for_endpoint(&emulator.control_url(), "us-east-1");
    let (role, replay) = iam(vec![
        ReplayEvent::new(get_role(), no_such_entity()),
        ReplayEvent::new(create_role(), ok("CreateRole", &role_xml(OUR_TAG))),
        ReplayEvent::new(role_policy("AttachRolePolicy"), ok("AttachRolePolicy", "")),
    ]);
    let certs = tempfile::tempdir().unwrap();
    let request = SetupRequest {
        prefix: prefix(),
        target_name: "aws".into(),
        certs_dir: certs.path().to_owned(),
        access: AwsAccess::default(),
        account_id: None,
        role_arn: None,
        hook_arn: None,
        data_endpoint: None,
        root_ca: None,
        policies_dir: None,
    };

    let planned = target::plan_setup(&request, &control, Some(&role), "us-east-1")
        .await
        .unwrap();
    let config = target::setup(&request, &control, Some(&role), &planned)
        .await
        .unwrap();

    assert!(
        planned
            .plan
            .render()
            .contains("+ create IAM role loadtest-provisioning with AWSIoTThingsRegistration")
    );
    replay.assert_requests_match(&[]);
    assert!(config.role_created);
    assert_eq!(config.provisioning_role_arn, ROLE_ARN);
    assert_eq!(config.account_id, "123456789012");
    let template = control
        .client()
        .describe_provisioning_template()
        .template_name("loadtest-fleet")
        .send()
        .await
        .unwrap();
    assert_eq!(template.provisioning_role_arn(), Some(ROLE_ARN));
    let root = std::fs::read_to_string(&config.root_ca).unwrap();
    assert_eq!(root, AMAZON_ROOT_CA_1);
}

#[tokio::test]
async fn cleanup_deletes_the_role_fleetsim_tagged_after_detaching_its_policy() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let control = ControlPlane::for_endpoint(&emulator.control_url(), "us-east-1");
    let (role, replay) = iam(vec![
        ReplayEvent::new(get_role(), ok("GetRole", &role_xml(OUR_TAG))),
        ReplayEvent::new(role_policy("DetachRolePolicy"), ok("DetachRolePolicy", "")),
        ReplayEvent::new(
            request("DeleteRole", &[("RoleName", "loadtest-provisioning")]),
            ok("DeleteRole", ""),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let request = CleanupRequest {
        prefix: prefix(),
        target_dir: dir.path().join("aws"),
    };

    let found = target::plan_cleanup(&request, &control, Some(&role))
        .await
        .unwrap();
    target::cleanup(&control, Some(&role), &found)
        .await
        .unwrap();

    assert!(
        found
            .plan
            .render()
            .contains(&format!("- delete IAM role {ROLE_ARN}"))
    );
    replay.assert_requests_match(&[]);
}

#[tokio::test]
async fn a_role_without_the_prefix_tag_is_left_alone() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let control = ControlPlane::for_endpoint(&emulator.control_url(), "us-east-1");
    let someone_elses = "<member><Key>team</Key><Value>iot</Value></member>";
    let (role, replay) = iam(vec![ReplayEvent::new(
        get_role(),
        ok("GetRole", &role_xml(someone_elses)),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let request = CleanupRequest {
        prefix: prefix(),
        target_dir: dir.path().join("aws"),
    };

    let found = target::plan_cleanup(&request, &control, Some(&role))
        .await
        .unwrap();
    target::cleanup(&control, Some(&role), &found)
        .await
        .unwrap();

    assert_eq!(found.plan.deletes(), 0);
    replay.assert_requests_match(&[]);
}

#[tokio::test]
async fn deleting_a_role_that_is_already_gone_succeeds() {
    let (role, replay) = iam(vec![
        ReplayEvent::new(role_policy("DetachRolePolicy"), no_such_entity()),
        ReplayEvent::new(
            request("DeleteRole", &[("RoleName", "loadtest-provisioning")]),
            no_such_entity(),
        ),
    ]);

    role.delete(&prefix(), ROLE_ARN).await.unwrap();

    replay.assert_requests_match(&[]);
}
