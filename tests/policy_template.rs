//! The repository's policies and provisioning template, rendered the way `setup` renders
//! them, evaluated by the emulator's policy engine and template evaluator.

use std::sync::Arc;

use fleetsim::emulator::policy::{
    Action, Decision, PolicyDocument, PolicyError, RequestContext, decide, is_allowed,
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
        client_id,
        thing_name: Some(client_id),
        certificate_id: "c0ffee",
    }
}

fn detached(client_id: &str) -> RequestContext<'_> {
    RequestContext {
        client_id,
        thing_name: None,
        certificate_id: "c0ffee",
    }
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
    assert!(!allowed(
        &policy,
        Action::Publish,
        "topic/$aws/certificates/create/json",
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
        client_id: "a",
        thing_name: Some("b"),
        certificate_id: "c",
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
            "Condition":{"StringEquals":{"iot:ConnectAttributes":"LastWill"}}}}"#,
    );
    assert_eq!(
        (statement, field.as_str()),
        (Some(0), "Condition.StringEquals.iot:ConnectAttributes")
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
