//! The repository's policies and provisioning template, rendered the way `setup` renders
//! them, evaluated by the emulator's policy engine and template evaluator.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetsim::emulator::policy::{
    Action, Decision, PolicyDocument, PolicyError, RequestContext, decide, is_allowed,
};
use fleetsim::emulator::template::{
    CERTIFICATE_ID_PARAMETER, CertificatePlan, Override, Plan, PolicyPlan, Template, TemplateError,
    ThingPlan,
};
use proptest::prelude::*;

const ARN: &str = "arn:aws:iot:us-east-1:123456789012";

fn render(file: &str, placeholders: &[(&str, &str)]) -> String {
    let path = format!("{}/policies/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("repository file is readable");
    placeholders.iter().fold(text, |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    })
}

fn repository_policy(file: &str) -> Arc<PolicyDocument> {
    let json = render(
        file,
        &[
            ("region", "us-east-1"),
            ("account", "123456789012"),
            ("template", "fleetsim-fleet"),
        ],
    );
    Arc::new(PolicyDocument::parse(&json).expect("repository policy parses"))
}

fn policy(json: &str) -> Arc<PolicyDocument> {
    Arc::new(PolicyDocument::parse(json).expect("test policy parses"))
}

fn device(client_id: &str) -> RequestContext<'_> {
    RequestContext {
        thing_name: Some(client_id),
        ..RequestContext::new(client_id, "c0ffee")
    }
}

fn detached(client_id: &str) -> RequestContext<'_> {
    RequestContext::new(client_id, "c0ffee")
}

fn allowed(
    policy: &Arc<PolicyDocument>,
    action: Action,
    resource: &str,
    context: &RequestContext,
) -> bool {
    is_allowed(
        std::slice::from_ref(policy),
        action,
        &format!("{ARN}:{resource}"),
        context,
    )
}

const PROVISIONING_TOPICS: [&str; 4] = [
    "$aws/certificates/create-from-csr/json",
    "$aws/certificates/create-from-csr/json/accepted",
    "$aws/provisioning-templates/fleetsim-fleet/provision/json",
    "$aws/provisioning-templates/fleetsim-fleet/provision/json/rejected",
];

#[test]
fn device_policy_lets_an_attached_device_connect_as_its_thing_name() {
    let policy = repository_policy("device-policy.json");
    assert!(allowed(
        &policy,
        Action::Connect,
        "client/fleetsim-SN1",
        &device("fleetsim-SN1")
    ));
}

#[test]
fn device_policy_refuses_a_client_id_its_certificate_is_not_attached_to() {
    let policy = repository_policy("device-policy.json");
    let other = detached("fleetsim-SN2");
    assert!(!allowed(
        &policy,
        Action::Connect,
        "client/fleetsim-SN2",
        &other
    ));
}

#[test]
fn device_policy_refuses_a_device_whose_certificate_is_not_attached() {
    let policy = repository_policy("device-policy.json");
    let context = detached("fleetsim-SN1");
    assert!(!allowed(
        &policy,
        Action::Connect,
        "client/fleetsim-SN1",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/fleetsim/fleetsim-SN1/telemetry",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/fleetsim/fleetsim-SN1/#",
        &context
    ));
}

#[test]
fn device_policy_grants_the_devices_own_topics() {
    let policy = repository_policy("device-policy.json");
    let context = device("fleetsim-SN1");
    for action in [Action::Publish, Action::Receive] {
        assert!(allowed(
            &policy,
            action,
            "topic/fleetsim/fleetsim-SN1/telemetry",
            &context
        ));
        assert!(allowed(
            &policy,
            action,
            "topic/fleetsim/fleetsim-SN1/a/b/c",
            &context
        ));
    }
    assert!(allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/fleetsim/fleetsim-SN1/#",
        &context
    ));
    assert!(allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/fleetsim/fleetsim-SN1/+/x",
        &context
    ));
}

#[test]
fn device_policy_refuses_another_devices_topics() {
    let policy = repository_policy("device-policy.json");
    let context = device("fleetsim-SN1");
    for action in [Action::Publish, Action::Receive] {
        assert!(!allowed(
            &policy,
            action,
            "topic/fleetsim/fleetsim-SN2/telemetry",
            &context
        ));
        assert!(!allowed(
            &policy,
            action,
            "topic/fleetsim/fleetsim-SN1",
            &context
        ));
    }
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/fleetsim/fleetsim-SN2/#",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/fleetsim/+/telemetry",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/#",
        &context
    ));
}

#[test]
fn device_policy_grants_the_provisioning_topics_for_rotation() {
    let policy = repository_policy("device-policy.json");
    let context = device("fleetsim-SN1");
    for topic in PROVISIONING_TOPICS {
        assert!(
            allowed(
                &policy,
                Action::Publish,
                &format!("topic/{topic}"),
                &context
            ),
            "{topic}"
        );
        assert!(
            allowed(
                &policy,
                Action::Receive,
                &format!("topic/{topic}"),
                &context
            ),
            "{topic}"
        );
        let filter = format!("topicfilter/{topic}");
        assert!(
            allowed(&policy, Action::Subscribe, &filter, &context),
            "{topic}"
        );
    }
}

#[test]
fn device_policy_does_not_grant_retained_publishes() {
    let policy = repository_policy("device-policy.json");
    let topic = "topic/fleetsim/fleetsim-SN1/telemetry";
    assert!(!allowed(
        &policy,
        Action::RetainPublish,
        topic,
        &device("fleetsim-SN1")
    ));
}

#[test]
fn claim_policy_lets_any_client_id_connect() {
    let policy = repository_policy("claim-policy.json");
    assert!(allowed(
        &policy,
        Action::Connect,
        "client/claim-7",
        &detached("claim-7")
    ));
}

#[test]
fn claim_policy_grants_only_the_provisioning_topics() {
    let policy = repository_policy("claim-policy.json");
    let context = detached("claim-7");
    for topic in PROVISIONING_TOPICS {
        assert!(
            allowed(
                &policy,
                Action::Publish,
                &format!("topic/{topic}"),
                &context
            ),
            "{topic}"
        );
        let filter = format!("topicfilter/{topic}");
        assert!(
            allowed(&policy, Action::Subscribe, &filter, &context),
            "{topic}"
        );
    }
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/fleetsim/claim-7/telemetry",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/#",
        &context
    ));
    assert!(
        allowed(
            &policy,
            Action::Publish,
            "topic/$aws/certificates/create/json",
            &context
        ),
        "CreateKeysAndCertificate is allowed for method: create_keys"
    );
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/$aws/things/claim-7/shadow/update",
        &context
    ));
    let other_template = "topic/$aws/provisioning-templates/other/provision/json";
    assert!(!allowed(&policy, Action::Publish, other_template, &context));
}

#[test]
fn a_policy_grants_nothing_in_another_account() {
    let policy = repository_policy("claim-policy.json");
    let foreign = "arn:aws:iot:us-east-1:999999999999:client/claim-7";
    assert!(!is_allowed(
        &[policy],
        Action::Connect,
        foreign,
        &detached("claim-7")
    ));
}

#[test]
fn no_policy_means_deny() {
    let resource = format!("{ARN}:client/a");
    assert_eq!(
        decide(&[], Action::Connect, &resource, &detached("a")),
        Decision::ImplicitlyDenied
    );
}

#[test]
fn a_deny_in_any_policy_overrides_an_allow_in_another() {
    let device_policy = repository_policy("device-policy.json");
    let deny = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"iot:Publish",
            "Resource":"arn:aws:iot:*:*:topic/fleetsim/*/secret"}}"#,
    );
    let both = [device_policy, deny];
    let context = device("fleetsim-SN1");
    let secret = format!("{ARN}:topic/fleetsim/fleetsim-SN1/secret");
    let plain = format!("{ARN}:topic/fleetsim/fleetsim-SN1/plain");
    assert_eq!(
        decide(&both, Action::Publish, &secret, &context),
        Decision::ExplicitlyDenied
    );
    assert_eq!(
        decide(&both, Action::Publish, &plain, &context),
        Decision::Allowed
    );
}

#[test]
fn not_resource_applies_to_everything_outside_its_list() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Receive","Resource":"*"},
            {"Effect":"Deny","Action":"iot:Receive","NotResource":"arn:aws:iot:*:*:topic/public/*"}]}"#,
    );
    let context = detached("c");
    assert!(allowed(
        &policy,
        Action::Receive,
        "topic/public/news",
        &context
    ));
    assert!(!allowed(
        &policy,
        Action::Receive,
        "topic/private/news",
        &context
    ));
}

#[test]
fn action_globs_match_action_names_case_insensitively() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"IOT:pub*","Resource":"*"}}"#,
    );
    let context = detached("c");
    assert!(allowed(&policy, Action::Publish, "topic/a", &context));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/a",
        &context
    ));
}

#[test]
fn iot_star_names_every_action() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":["iot:*"],"Resource":["*"]}}"#,
    );
    let context = detached("c");
    for action in [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::RetainPublish,
    ] {
        assert!(allowed(&policy, action, "anything", &context), "{action:?}");
    }
}

#[test]
fn client_id_variable_pins_resources_to_the_connecting_client() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Subscribe",
            "Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/my/${iot:ClientId}/topic"}}"#,
    );
    assert!(allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/my/a/topic",
        &detached("a")
    ));
    assert!(!allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/my/b/topic",
        &detached("a")
    ));
    // The documented hazard: a client named `+` is granted the wildcard filter literally.
    assert!(allowed(
        &policy,
        Action::Subscribe,
        "topicfilter/my/+/topic",
        &detached("+")
    ));
}

#[test]
fn a_deny_naming_an_unresolved_thing_variable_still_denies() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Publish","Resource":"*"},
            {"Effect":"Deny","Action":"iot:Publish",
             "Resource":"arn:aws:iot:*:*:topic/locked/${iot:Connection.Thing.ThingName}"}]}"#,
    );
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/locked/x",
        &detached("x")
    ));
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/open",
        &detached("x")
    ));
    assert!(allowed(
        &policy,
        Action::Publish,
        "topic/open",
        &device("x")
    ));
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/locked/x",
        &device("x")
    ));
}

#[test]
fn string_conditions_compare_the_client_id() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*",
             "Condition":{"StringLike":{"iot:ClientId":["fleetsim-*","probe-?"]},
                          "StringNotEquals":{"iot:ClientId":"fleetsim-banned"}}},
            {"Effect":"Allow","Action":"iot:Publish","Resource":"*",
             "Condition":{"StringEquals":{"iot:ClientId":"${iot:Connection.Thing.ThingName}"}}}]}"#,
    );
    let connect = |client: &str| {
        allowed(
            &policy,
            Action::Connect,
            &format!("client/{client}"),
            &detached(client),
        )
    };
    assert!(connect("fleetsim-SN1"));
    assert!(connect("probe-1"));
    assert!(!connect("probe-12"));
    assert!(!connect("fleetsim-banned"));
    assert!(!connect("other"));
    assert!(allowed(&policy, Action::Publish, "topic/t", &device("a")));
    let mismatched = RequestContext {
        thing_name: Some("b"),
        ..RequestContext::new("a", "c")
    };
    assert!(!allowed(&policy, Action::Publish, "topic/t", &mismatched));
}

#[test]
fn string_equals_treats_stars_literally() {
    let policy = policy(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"StringEquals":{"iot:ClientId":"dev-*"}}}}"#,
    );
    assert!(allowed(
        &policy,
        Action::Connect,
        "client/dev-*",
        &detached("dev-*")
    ));
    assert!(!allowed(
        &policy,
        Action::Connect,
        "client/dev-1",
        &detached("dev-1")
    ));
}

fn malformed(json: &str) -> (Option<usize>, String, String) {
    match PolicyDocument::parse(json) {
        Err(PolicyError::Malformed {
            statement,
            field,
            reason,
        }) => (statement, field, reason),
        other => panic!("expected a malformed-policy error, got {other:?}"),
    }
}

#[test]
fn an_unknown_condition_operator_is_refused_with_its_location() {
    let (statement, field, _) = malformed(
        r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*"},
            {"Effect":"Allow","Action":"iot:Connect","Resource":"*",
             "Condition":{"DateGreaterThan":{"aws:CurrentTime":"2020-01-01T00:00:00Z"}}}]}"#,
    );
    assert_eq!(
        (statement, field.as_str()),
        (Some(1), "Condition.DateGreaterThan")
    );
}

#[test]
fn an_unknown_condition_key_is_refused_with_its_location() {
    let (statement, field, _) = malformed(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"StringEquals":{"aws:SourceIp":"10.0.0.1"}}}}"#,
    );
    assert_eq!(
        (statement, field.as_str()),
        (Some(0), "Condition.StringEquals.aws:SourceIp")
    );
}

#[test]
fn malformed_statements_name_the_offending_field() {
    let cases = [
        (
            r#"{"Statement":{"Action":"iot:Connect","Resource":"*"}}"#,
            "Effect",
        ),
        (
            r#"{"Statement":{"Effect":"Permit","Action":"iot:Connect","Resource":"*"}}"#,
            "Effect",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#,
            "Action",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}}"#,
            "Action[0]",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect"}}"#,
            "Resource",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":["*","topic/a"]}}"#,
            "Resource[1]",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:${iot:Nope}"}}"#,
            "Resource[0]",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*","NotResource":"*"}}"#,
            "NotResource",
        ),
        (
            r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Principal":"*"}}"#,
            "Principal",
        ),
    ];
    for (json, expected) in cases {
        let (statement, field, _) = malformed(json);
        assert_eq!((statement, field.as_str()), (Some(0), expected), "{json}");
    }
}

#[test]
fn malformed_documents_name_the_offending_field() {
    assert_eq!(malformed(r#"{"Version":"2012-10-17"}"#).1, "Statement");
    assert_eq!(
        malformed(r#"{"Version":"1999","Statement":[]}"#).1,
        "Version"
    );
    assert_eq!(malformed(r#"{"Statement":[]}"#).1, "Statement");
    assert!(matches!(
        PolicyDocument::parse("{"),
        Err(PolicyError::Json(_))
    ));
}

#[test]
fn error_messages_say_where_the_fault_is() {
    let error = PolicyDocument::parse(
        r#"{"Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"x"}]}"#,
    )
    .expect_err("a resource that is not an ARN is refused");
    assert!(
        error.to_string().contains("Statement[0].Resource[0]"),
        "{error}"
    );
}

/// A valid policy padded with whitespace and with a resource sized so the document has
/// exactly `chars` non-whitespace characters.
fn policy_of_size(chars: usize) -> String {
    let skeleton = r#"{"Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:"}}"#;
    let padding = "a".repeat(chars - skeleton.len());
    format!(
        "  {}\n",
        skeleton
            .replace("arn:", &format!("arn:{padding}"))
            .replace(',', ",\n    ")
    )
}

#[test]
fn a_policy_may_have_2048_non_whitespace_characters_but_not_more() {
    assert!(PolicyDocument::parse(&policy_of_size(2048)).is_ok());
    let error = PolicyDocument::parse(&policy_of_size(2049)).expect_err("over the limit");
    assert!(
        matches!(
            error,
            PolicyError::TooLarge {
                chars: 2049,
                max: 2048
            }
        ),
        "{error}"
    );
}

proptest! {
    #[test]
    fn a_device_reaches_any_topic_under_its_own_prefix(
        serial in "[A-Z0-9]{1,8}",
        rest in "[a-z0-9/+#$]{0,40}",
    ) {
        let policy = repository_policy("device-policy.json");
        let thing = format!("fleetsim-{serial}");
        let (topic, filter) = (
            format!("topic/fleetsim/{thing}/{rest}"),
            format!("topicfilter/fleetsim/{thing}/{rest}"),
        );
        prop_assert!(allowed(&policy, Action::Publish, &topic, &device(&thing)));
        prop_assert!(allowed(&policy, Action::Subscribe, &filter, &device(&thing)));
    }

    #[test]
    fn a_device_never_reaches_another_devices_topics(
        own in "[A-Z0-9]{1,8}",
        other in "[A-Z0-9]{1,8}",
        rest in "[a-z0-9/+#$]{0,40}",
    ) {
        prop_assume!(own != other);
        let policy = repository_policy("device-policy.json");
        let thing = format!("fleetsim-{own}");
        let topic = format!("topic/fleetsim/fleetsim-{other}/{rest}");
        prop_assert!(!allowed(&policy, Action::Publish, &topic, &device(&thing)));
        prop_assert!(!allowed(&policy, Action::Receive, &topic, &device(&thing)));
    }
}

// ---- provisioning templates ----

const CERTIFICATE_ID: &str = "3f1c4b2a9d8e7f6051a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8";

fn repository_template() -> Template {
    let body = render(
        "provisioning-template.json",
        &[("device_policy", "fleetsim-device"), ("prefix", "fleetsim")],
    );
    Template::parse(&body).expect("repository template parses")
}

fn parameters(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with_certificate(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut all = parameters(pairs);
    all.insert(CERTIFICATE_ID_PARAMETER.into(), CERTIFICATE_ID.into());
    all
}

/// A template with the canonical certificate resource plus `extra` resources and sections.
fn template(parameters: &str, resources: &str, rest: &str) -> Result<Template, TemplateError> {
    Template::parse(&format!(
        r#"{{"Parameters": {{"AWS::IoT::Certificate::Id": {{"Type": "String"}} {parameters}}},
            "Resources": {{
              "certificate": {{"Type": "AWS::IoT::Certificate",
                "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}}}}}
              {resources}}}
            {rest}}}"#
    ))
}

fn thing_name_of(template: &Template, request: &BTreeMap<String, String>) -> String {
    let plan = template.evaluate(request).expect("template evaluates");
    plan.thing.expect("template declares a thing").name
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn repository_template_provisions_the_serial_numbers_thing() {
    let plan = repository_template()
        .evaluate(&with_certificate(&[("SerialNumber", "SN1")]))
        .expect("template evaluates");
    let expected = Plan {
        thing: Some(ThingPlan {
            name: "fleetsim-SN1".into(),
            attributes: parameters(&[("serial", "SN1")]),
            attributes_override: Override::Replace,
            thing_type: None,
            thing_type_override: Override::DoNothing,
            groups: None,
            groups_override: Override::DoNothing,
        }),
        certificate: Some(CertificatePlan {
            certificate_id: CERTIFICATE_ID.into(),
            status: "ACTIVE".into(),
        }),
        policies: vec![PolicyPlan::Named("fleetsim-device".into())],
        device_configuration: parameters(&[("telemetryTopicRoot", "fleetsim")]),
    };
    assert_eq!(plan, expected);
}

#[test]
fn a_missing_parameter_is_the_requests_fault_and_names_where_it_is_needed() {
    let error = repository_template()
        .evaluate(&with_certificate(&[]))
        .expect_err("SerialNumber is required");
    assert!(error.is_request_fault());
    let TemplateError::MissingParameter { name, at } = &error else {
        panic!("expected a missing parameter, got {error:?}");
    };
    assert_eq!(name, "SerialNumber");
    assert!(
        at.starts_with("Resources.thing.Properties.ThingName"),
        "{at}"
    );
}

#[test]
fn a_missing_certificate_id_is_reported() {
    let error = repository_template()
        .evaluate(&parameters(&[("SerialNumber", "SN1")]))
        .expect_err("the certificate id is required");
    assert!(
        matches!(&error, TemplateError::MissingParameter { name, .. } if name == CERTIFICATE_ID_PARAMETER),
        "{error:?}"
    );
}

#[test]
fn a_parameter_default_applies_when_the_request_omits_it() {
    let template = template(
        r#","Line": {"Type": "String", "Default": "main"}"#,
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Sub": "dev-${Line}"}}}"#,
        "",
    )
    .expect("template parses");
    assert_eq!(thing_name_of(&template, &with_certificate(&[])), "dev-main");
    assert_eq!(
        thing_name_of(&template, &with_certificate(&[("Line", "b")])),
        "dev-b"
    );
}

#[test]
fn sub_expands_parameters_local_variables_and_escapes() {
    let template = template(
        r#","Serial": {"Type": "String"}"#,
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName":
             {"Fn::Sub": ["${Prefix}-${Serial}", {"Prefix": {"Ref": "Serial"}}]}}}"#,
        r#","DeviceConfiguration": {"literal": {"Fn::Sub": "${!Serial}/${Serial}"}}"#,
    )
    .expect("template parses");
    let plan = template
        .evaluate(&with_certificate(&[("Serial", "x1")]))
        .expect("evaluates");
    assert_eq!(plan.thing.expect("a thing").name, "x1-x1");
    assert_eq!(plan.device_configuration["literal"], "${Serial}/x1");
}

#[test]
fn split_and_select_pick_a_part_of_a_parameter() {
    let template = template(
        r#","Serial": {"Type": "String"}"#,
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName":
             {"Fn::Select": ["1", {"Fn::Split": [":", {"Ref": "Serial"}]}]}}}"#,
        "",
    )
    .expect("template parses");
    assert_eq!(
        thing_name_of(&template, &with_certificate(&[("Serial", "acme:SN7:x")])),
        "SN7"
    );
    let error = template
        .evaluate(&with_certificate(&[("Serial", "nocolon")]))
        .expect_err("index 1 is out of range");
    assert!(
        matches!(error, TemplateError::Evaluation { .. }),
        "{error:?}"
    );
}

#[test]
fn find_in_map_reads_the_mappings_section() {
    let template = template(
        r#","Region": {"Type": "String"}"#,
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t1",
             "AttributePayload": {"site": {"Fn::FindInMap": ["Sites", {"Ref": "Region"}, "name"]}}}}"#,
        r#","Mappings": {"Sites": {"eu": {"name": "dublin"}, "us": {"name": "ohio"}}}"#,
    )
    .expect("template parses");
    let plan = template
        .evaluate(&with_certificate(&[("Region", "eu")]))
        .expect("evaluates");
    assert_eq!(plan.thing.expect("a thing").attributes["site"], "dublin");
    let error = template
        .evaluate(&with_certificate(&[("Region", "ap")]))
        .expect_err("no such mapping key");
    assert!(error.to_string().contains("Sites.ap.name"), "{error}");
}

#[test]
fn functions_inside_mappings_are_refused() {
    let error = template("", "", r#","Mappings": {"M": {"a": {"b": {"Ref": "X"}}}}"#)
        .expect_err("mappings are plain data");
    assert!(
        matches!(&error, TemplateError::Malformed { at, .. } if at == "Mappings.M.a.b"),
        "{error:?}"
    );
}

#[test]
fn an_unknown_function_is_refused_when_the_template_is_parsed() {
    let error = template(
        "",
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::GetAtt": ["a", "b"]}}}"#,
        "",
    )
    .expect_err("Fn::GetAtt is not supported");
    let TemplateError::UnknownFunction { function, at } = &error else {
        panic!("expected an unknown function, got {error:?}");
    };
    assert_eq!(function, "Fn::GetAtt");
    assert_eq!(at, "Resources.thing.Properties.ThingName.Fn::GetAtt");
}

#[test]
fn a_reference_to_an_undeclared_parameter_is_refused_when_parsed() {
    let error = template(
        "",
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Nope"}}}"#,
        "",
    )
    .expect_err("Nope is not declared");
    assert!(
        error
            .to_string()
            .contains("`Nope` is not a declared parameter"),
        "{error}"
    );
}

#[test]
fn a_sub_naming_an_undeclared_parameter_is_refused_when_parsed() {
    let error = template(
        "",
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName":
             {"Fn::Sub": ["${Local}-${Nope}", {"Local": "x"}]}}}"#,
        "",
    )
    .expect_err("Nope is not declared");
    assert!(
        error
            .to_string()
            .contains("`Nope` is not a declared parameter"),
        "{error}"
    );
}

#[test]
fn an_unsupported_resource_type_names_the_resource() {
    let error = template(
        "",
        r#","queue": {"Type": "AWS::SQS::Queue", "Properties": {}}"#,
        "",
    )
    .expect_err("only IoT resources");
    assert!(
        matches!(&error, TemplateError::UnsupportedResourceType { resource, kind }
            if resource == "queue" && kind == "AWS::SQS::Queue"),
        "{error:?}"
    );
}

#[test]
fn certificates_from_a_csr_or_pem_are_refused() {
    for field in ["CertificateSigningRequest", "CertificatePem"] {
        let resources = format!(
            r#","other": {{"Type": "AWS::IoT::Certificate", "Properties": {{"{field}": "x"}}}}"#
        );
        let error =
            template("", &resources, "").expect_err("fleet provisioning uses CertificateId");
        assert!(
            error.to_string().contains("may only use CertificateId"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("Resources.other.Properties.{field}")),
            "{error}"
        );
    }
}

#[test]
fn two_things_in_one_template_are_refused() {
    let error = template(
        "",
        r#","a": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "a"}},
           "b": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "b"}}"#,
        "",
    )
    .expect_err("one thing per template");
    assert!(
        error.to_string().contains("at most one AWS::IoT::Thing"),
        "{error}"
    );
}

fn certificate_status(status: &str) -> Result<Plan, TemplateError> {
    let body = format!(
        r#"{{"Parameters": {{"AWS::IoT::Certificate::Id": {{"Type": "String"}}}},
            "Resources": {{"certificate": {{"Type": "AWS::IoT::Certificate",
              "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}} {status}}}}}}}}}"#
    );
    Template::parse(&body)
        .expect("template parses")
        .evaluate(&with_certificate(&[]))
}

#[test]
fn certificate_status_is_case_insensitive_and_defaults_to_active() {
    let status = |field: &str| {
        certificate_status(field)
            .expect("evaluates")
            .certificate
            .expect("a certificate")
            .status
    };
    assert_eq!(status(r#","Status": "Active""#), "ACTIVE");
    assert_eq!(status(r#","Status": "inactive""#), "INACTIVE");
    assert_eq!(status(""), "ACTIVE");
    let error = certificate_status(r#","Status": "REVOKED""#).expect_err("not a template status");
    assert!(
        error
            .to_string()
            .contains("Resources.certificate.Properties.Status"),
        "{error}"
    );
}

#[test]
fn a_certificate_id_that_is_not_64_hex_digits_is_refused() {
    let error = repository_template()
        .evaluate(&parameters(&[
            ("SerialNumber", "SN1"),
            (CERTIFICATE_ID_PARAMETER, "abc"),
        ]))
        .expect_err("abc is not a certificate id");
    assert!(error.to_string().contains("CertificateId"), "{error}");
}

fn policy_resource(properties: &str) -> Result<Plan, TemplateError> {
    template(
        r#","Serial": {"Type": "String", "Default": "SN1"}"#,
        &format!(r#","policy": {{"Type": "AWS::IoT::Policy", "Properties": {properties}}}"#),
        "",
    )?
    .evaluate(&with_certificate(&[]))
}

#[test]
fn a_policy_document_object_is_named_after_its_sha256() {
    let plan = policy_resource(
        r#"{"PolicyDocument": {"Version": "2012-10-17", "Statement": {"Effect": "Allow",
            "Action": "iot:Publish", "Resource": {"Fn::Sub": "arn:aws:iot:*:*:topic/${Serial}"}}}}"#,
    )
    .expect("evaluates");
    // Compact JSON with keys in sorted order, so key order in the template does not matter.
    let document = concat!(
        r#"{"Statement":{"Action":"iot:Publish","Effect":"Allow","#,
        r#""Resource":"arn:aws:iot:*:*:topic/SN1"},"Version":"2012-10-17"}"#
    );
    let expected = PolicyPlan::Document {
        name: sha256_hex(document),
        document: document.into(),
    };
    assert_eq!(plan.policies, vec![expected]);
}

#[test]
fn a_policy_document_string_is_kept_verbatim_and_may_be_named() {
    let document = r#"{"Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}}"#;
    let escaped = serde_json::to_string(document).expect("a string serialises");
    let plan = policy_resource(&format!(r#"{{"PolicyDocument": {escaped}}}"#)).expect("evaluates");
    let hashed = PolicyPlan::Document {
        name: sha256_hex(document),
        document: document.into(),
    };
    assert_eq!(plan.policies, vec![hashed]);
    let plan = policy_resource(&format!(
        r#"{{"PolicyName": "mine", "PolicyDocument": {escaped}}}"#
    ))
    .expect("evaluates");
    let named = PolicyPlan::Document {
        name: "mine".into(),
        document: document.into(),
    };
    assert_eq!(plan.policies, vec![named]);
}

#[test]
fn a_malformed_policy_document_fails_evaluation() {
    let error = policy_resource(r#"{"PolicyDocument": {"Statement": {"Effect": "Maybe"}}}"#)
        .expect_err("the policy engine refuses it");
    let message = error.to_string();
    assert!(
        message.contains("Resources.policy.Properties.PolicyDocument"),
        "{message}"
    );
    assert!(message.contains("Statement[0].Effect"), "{message}");
}

#[test]
fn device_configuration_is_flat_text() {
    let template = template(
        r#","Serial": {"Type": "String"}"#,
        "",
        r#","DeviceConfiguration": {"port": 8883, "debug": false, "id": {"Ref": "Serial"}}"#,
    )
    .expect("template parses");
    let plan = template
        .evaluate(&with_certificate(&[("Serial", "s")]))
        .expect("evaluates");
    let expected = parameters(&[("port", "8883"), ("debug", "false"), ("id", "s")]);
    assert_eq!(plan.device_configuration, expected);
}

#[test]
fn nested_device_configuration_is_refused() {
    let error = template(
        "",
        "",
        r#","DeviceConfiguration": {"mqtt": {"port": "8883", "tls": "on"}}"#,
    )
    .expect_err("nested objects are not supported");
    assert!(
        matches!(&error, TemplateError::Malformed { at, .. } if at == "DeviceConfiguration.mqtt"),
        "{error:?}"
    );
}

#[test]
fn a_template_body_over_10240_characters_is_refused() {
    let padding = " ".repeat(10240);
    let error =
        Template::parse(&format!("{{\"Resources\": {{}}}}{padding}")).expect_err("too large");
    assert!(
        matches!(error, TemplateError::TooLarge { max: 10240, .. }),
        "{error:?}"
    );
}

#[test]
fn unknown_template_sections_and_properties_are_refused() {
    let error = template("", "", r#","Conditions": {}"#).expect_err("no Conditions section");
    assert!(
        matches!(&error, TemplateError::Malformed { at, .. } if at == "Conditions"),
        "{error:?}"
    );
    let error = template(
        "",
        r#","thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "BillingGroup": "g"}}"#,
        "",
    )
    .expect_err("billing groups are not modelled");
    assert!(
        matches!(&error, TemplateError::Malformed { at, .. } if at == "Resources.thing.Properties.BillingGroup"),
        "{error:?}"
    );
}

#[test]
fn an_invalid_thing_name_is_refused() {
    let error = repository_template()
        .evaluate(&with_certificate(&[("SerialNumber", "has space")]))
        .expect_err("spaces are not allowed in thing names");
    assert!(
        error.to_string().contains("not a valid thing name"),
        "{error}"
    );
}
