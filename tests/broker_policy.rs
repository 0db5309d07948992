//! The policy variables and condition keys added for the broker: thing attributes and type,
//! certificate subject and issuer fields, `iot:ConnectAttributes` with the `ForAllValues:` /
//! `ForAnyValue:` qualifiers, `iot:LastWillTopic`, and the wildcard/literal rules of
//! aws-iot-facts §3.4. First against the evaluator, then through the broker with real clients.

mod broker_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use broker_support::*;
use bytes::BytesMut;
use fleetsim::emulator::policy::{
    Action, CertificateFields, PolicyDocument, RequestContext, is_allowed,
};
use fleetsim::emulator::registry::{CertificateStatus, ThingProperties};
use rumqttc::QoS;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ARN: &str = "arn:aws:iot:us-east-1:123456789012";

fn policy(statements: &str) -> Vec<Arc<PolicyDocument>> {
    let json = format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#);
    vec![Arc::new(
        PolicyDocument::parse(&json).expect("test policy parses"),
    )]
}

fn allows(
    policies: &[Arc<PolicyDocument>],
    action: Action,
    resource: &str,
    context: &RequestContext,
) -> bool {
    is_allowed(policies, action, &format!("{ARN}:{resource}"), context)
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_thing_attribute_variable_takes_the_attached_things_value() {
    let policies = policy(&format!(
        r#"{{"Effect":"Allow","Action":"iot:Publish",
            "Resource":"{ARN}:topic/fleet/${{iot:Connection.Thing.Attributes[fleet]}}/*"}}"#
    ));
    let north = attributes(&[("fleet", "north")]);
    let attached = RequestContext {
        thing_name: Some("dev-1"),
        thing_attributes: Some(&north),
        ..RequestContext::new("dev-1", "c")
    };
    let detached = RequestContext {
        thing_attributes: Some(&north),
        ..RequestContext::new("dev-1", "c")
    };
    let without = attributes(&[("colour", "red")]);
    let other_attributes = RequestContext {
        thing_attributes: Some(&without),
        ..attached
    };

    assert!(allows(
        &policies,
        Action::Publish,
        "topic/fleet/north/t",
        &attached
    ));
    assert!(!allows(
        &policies,
        Action::Publish,
        "topic/fleet/south/t",
        &attached
    ));
    assert!(!allows(
        &policies,
        Action::Publish,
        "topic/fleet/north/t",
        &detached
    ));
    assert!(!allows(
        &policies,
        Action::Publish,
        "topic/fleet/north/t",
        &other_attributes
    ));
}

#[test]
fn the_thing_type_name_resolves_only_for_an_attached_thing() {
    let policies = policy(
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"StringEquals":{"iot:Connection.Thing.ThingTypeName":"sensor"}}}"#,
    );
    let sensor = RequestContext {
        thing_name: Some("dev-1"),
        thing_type_name: Some("sensor"),
        ..RequestContext::new("dev-1", "c")
    };
    let detached = RequestContext {
        thing_name: None,
        ..sensor
    };
    let camera = RequestContext {
        thing_type_name: Some("camera"),
        ..sensor
    };

    assert!(allows(&policies, Action::Connect, "client/dev-1", &sensor));
    assert!(!allows(
        &policies,
        Action::Connect,
        "client/dev-1",
        &detached
    ));
    assert!(!allows(&policies, Action::Connect, "client/dev-1", &camera));
}

/// A self-signed certificate with a full subject and two DNS alternative names.
fn certificate_fields() -> CertificateFields {
    let mut params =
        rcgen::CertificateParams::new(vec!["a.example".to_owned(), "b.example".to_owned()])
            .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dev-1");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Acme");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "ops+dev");
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = params.self_signed(&key).expect("certificate");
    CertificateFields::from_der(certificate.der()).expect("fields")
}

#[test]
fn certificate_subject_issuer_and_alternative_names_resolve() {
    let fields = certificate_fields();
    let context = RequestContext {
        certificate: Some(&fields),
        ..RequestContext::new("dev-1", "c")
    };
    let condition = |key: &str, value: &str| {
        policy(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
                "Condition":{{"StringEquals":{{"{key}":"{value}"}}}}}}"#
        ))
    };
    let connects = |key: &str, value: &str| {
        allows(
            &condition(key, value),
            Action::Connect,
            "client/dev-1",
            &context,
        )
    };

    assert!(connects("iot:Certificate.Subject.CommonName", "dev-1"));
    assert!(connects("iot:Certificate.Subject.Organization", "Acme"));
    assert!(connects("iot:Certificate.Issuer.CommonName", "dev-1"));
    assert!(!connects("iot:Certificate.Subject.CommonName", "dev-2"));
    assert!(connects(
        "iot:Certificate.Subject.AlternativeName.DNSName",
        "a.example"
    ));
    assert!(connects(
        "iot:Certificate.Subject.AlternativeName.DNSName.1",
        "b.example"
    ));
    assert!(
        !connects(
            "iot:Certificate.Subject.AlternativeName.DNSName.2",
            "b.example"
        ),
        "an index past the last value leaves the variable unresolved"
    );
    assert!(
        !connects("iot:Certificate.Subject.OrganizationalUnit", "ops+dev"),
        "a value with a wildcard character is never substituted"
    );
}

#[test]
fn a_certificate_list_variable_works_with_set_qualifiers() {
    let fields = certificate_fields();
    let context = RequestContext {
        certificate: Some(&fields),
        ..RequestContext::new("dev-1", "c")
    };
    let qualified = |qualifier: &str, values: &str| {
        let policies = policy(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
                "Condition":{{"{qualifier}:StringEquals":
                    {{"iot:Certificate.Subject.AlternativeName.DNSName.List":{values}}}}}}}"#
        ));
        allows(&policies, Action::Connect, "client/dev-1", &context)
    };

    assert!(qualified("ForAnyValue", r#"["b.example"]"#));
    assert!(!qualified("ForAllValues", r#"["b.example"]"#));
    assert!(qualified(
        "ForAllValues",
        r#"["a.example","b.example","c.example"]"#
    ));
}

#[test]
fn connect_attributes_follow_iam_set_semantics() {
    let persistent_only = policy(
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"ForAnyValue:StringEquals":{"iot:ConnectAttributes":"PersistentConnect"}}}"#,
    );
    let no_will = policy(
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"ForAllValues:StringEquals":{"iot:ConnectAttributes":["PersistentConnect"]}}}"#,
    );
    let with = |attributes: &'static [&'static str]| RequestContext {
        connect_attributes: attributes,
        ..RequestContext::new("dev-1", "c")
    };
    let connects = |policies: &[Arc<PolicyDocument>], attributes| {
        allows(policies, Action::Connect, "client/dev-1", &with(attributes))
    };

    assert!(connects(&persistent_only, &["PersistentConnect"]));
    assert!(connects(
        &persistent_only,
        &["PersistentConnect", "LastWill"]
    ));
    assert!(!connects(&persistent_only, &[]));
    assert!(connects(&no_will, &["PersistentConnect"]));
    assert!(connects(&no_will, &[]), "ForAllValues holds for no values");
    assert!(!connects(&no_will, &["PersistentConnect", "LastWill"]));
}

#[test]
fn a_set_qualifier_on_bool_is_refused() {
    let refused = PolicyDocument::parse(
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"ForAnyValue:Bool":{"iot:Connection.Thing.IsAttached":"true"}}}}"#,
    );
    assert!(refused.is_err());
}

#[test]
fn the_last_will_topic_condition_compares_the_registered_will() {
    let policies = policy(
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"StringLike":{"iot:LastWillTopic":"wills/${iot:ClientId}"}}}"#,
    );
    let will = |topic| RequestContext {
        last_will_topic: topic,
        ..RequestContext::new("dev-1", "c")
    };

    assert!(allows(
        &policies,
        Action::Connect,
        "client/dev-1",
        &will(Some("wills/dev-1"))
    ));
    assert!(!allows(
        &policies,
        Action::Connect,
        "client/dev-1",
        &will(Some("wills/dev-2"))
    ));
    assert!(!allows(
        &policies,
        Action::Connect,
        "client/dev-1",
        &will(None)
    ));
}

#[test]
fn a_subscribe_grant_compares_the_filter_as_a_literal_string() {
    // aws-iot-facts §3.4: `*` crosses levels; `+` and `#` are plain characters.
    let policies = policy(&format!(
        r#"{{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{ARN}:topicfilter/a/*"}},
           {{"Effect":"Deny","Action":"iot:Subscribe","Resource":"{ARN}:topicfilter/a/restricted/*"}},
           {{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{ARN}:topicfilter/b/+"}}"#
    ));
    let context = RequestContext::new("dev-1", "c");
    let subscribes = |filter: &str| {
        allows(
            &policies,
            Action::Subscribe,
            &format!("topicfilter/{filter}"),
            &context,
        )
    };

    assert!(
        subscribes("a/#"),
        "the deny on a/restricted/* does not name `a/#`"
    );
    assert!(!subscribes("a/restricted/x"));
    assert!(subscribes("b/+"));
    assert!(!subscribes("b/x"), "`+` in a policy is not a wildcard");
}

#[test]
fn a_client_id_of_plus_matches_a_literal_plus_in_a_filter_grant() {
    // The documented caveat: ${iot:ClientId} = "+" turns my/${iot:ClientId}/topic into my/+/topic.
    let policies = policy(&format!(
        r#"{{"Effect":"Allow","Action":"iot:Subscribe",
            "Resource":"{ARN}:topicfilter/my/${{iot:ClientId}}/topic"}}"#
    ));
    let plus = RequestContext::new("+", "c");

    assert!(allows(
        &policies,
        Action::Subscribe,
        "topicfilter/my/+/topic",
        &plus
    ));
    assert!(!allows(
        &policies,
        Action::Subscribe,
        "topicfilter/my/dev-1/topic",
        &plus
    ));
}

// ---- through the broker ----

fn device_with(emulator: &Emulator, name: &str, statements: &str) -> Credentials {
    let json = format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#);
    emulator
        .registry
        .create_policy(name, &json)
        .expect("policy");
    emulator.device(CertificateStatus::Active, name)
}

const CONNECT_ANY: &str = r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}"#;

#[tokio::test]
async fn the_broker_resolves_thing_attributes_of_the_attached_thing() {
    let emulator = Emulator::start();
    let statement = format!(
        r#"{CONNECT_ANY},{{"Effect":"Allow","Action":"iot:Publish",
            "Resource":"{ARN}:topic/fleet/${{iot:Connection.Thing.Attributes[fleet]}}/*"}}"#
    );
    let device = device_with(&emulator, "by-fleet", &statement);
    emulator
        .registry
        .ensure_thing("dev-1", &attributes(&[("fleet", "north")]));
    emulator
        .registry
        .attach_thing_principal("dev-1", &device.id)
        .expect("attach");
    let mut client = V5Client::connect(emulator.addr(), "dev-1", &device).await;

    client
        .publish("fleet/north/t", Qos5::AtLeastOnce, b"x")
        .await;
    assert_eq!(client.next_puback().await, PubAckReason::Success);
    client
        .publish("fleet/south/t", Qos5::AtLeastOnce, b"x")
        .await;
    assert_eq!(client.next_puback().await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn the_broker_resolves_the_thing_type_of_the_attached_thing() {
    let emulator = Emulator::start();
    let statement = format!(
        r#"{CONNECT_ANY},{{"Effect":"Allow","Action":"iot:Publish",
            "Resource":"{ARN}:topic/kind/${{iot:Connection.Thing.ThingTypeName}}"}}"#
    );
    let device = device_with(&emulator, "by-type", &statement);
    emulator
        .registry
        .create_thing_type("sensor", Default::default())
        .expect("thing type");
    emulator.registry.ensure_thing("dev-2", &attributes(&[]));
    let typed = ThingProperties {
        thing_type: Some("sensor".into()),
        ..Default::default()
    };
    emulator
        .registry
        .set_thing_properties("dev-2", &typed)
        .expect("typed");
    emulator
        .registry
        .attach_thing_principal("dev-2", &device.id)
        .expect("attach");
    let mut client = V5Client::connect(emulator.addr(), "dev-2", &device).await;

    client.publish("kind/sensor", Qos5::AtLeastOnce, b"x").await;
    assert_eq!(client.next_puback().await, PubAckReason::Success);
    client.publish("kind/camera", Qos5::AtLeastOnce, b"x").await;
    assert_eq!(client.next_puback().await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn the_broker_resolves_the_certificate_common_name() {
    let emulator = Emulator::start();
    // The fixture's devices have the subject CN "test device".
    let statement = format!(
        r#"{CONNECT_ANY},{{"Effect":"Allow","Action":"iot:Publish",
            "Resource":"{ARN}:topic/cn/${{iot:Certificate.Subject.CommonName}}"}}"#
    );
    let device = device_with(&emulator, "by-cn", &statement);
    let mut client = V5Client::connect(emulator.addr(), "cn-client", &device).await;

    client
        .publish("cn/test device", Qos5::AtLeastOnce, b"x")
        .await;
    assert_eq!(client.next_puback().await, PubAckReason::Success);
    client.publish("cn/other", Qos5::AtLeastOnce, b"x").await;
    assert_eq!(client.next_puback().await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn the_broker_lets_only_persistent_sessions_connect_when_the_policy_says_so() {
    let emulator = Emulator::start();
    let device = device_with(
        &emulator,
        "persistent-only",
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"ForAnyValue:StringEquals":{"iot:ConnectAttributes":"PersistentConnect"}}}"#,
    );

    let mut clean = V5Client::start_with(emulator.addr(), "clean", &device, |_| {});
    let mut persistent = V5Client::start_with(emulator.addr(), "kept", &device, |options| {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(600));
    });

    let refused = clean
        .next_packet()
        .await
        .expect_err("clean session refused");
    assert!(refused.contains("NotAuthorized"), "{refused}");
    assert_eq!(persistent.connack().await.code, ConnectReturnCode::Success);
    let mut v311 = TestClient::start_with(emulator.addr(), "kept-311", &device, |options| {
        options.set_clean_session(false);
    });
    assert_eq!(
        v311.connack().await.code,
        rumqttc::ConnectReturnCode::Success
    );
}

/// A 3.1.1 CONNECT with a will on `topic`.
fn connect_with_will(client_id: &str, topic: &str) -> Vec<u8> {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = 60;
    connect.last_will = Some(v4::LastWill::new(topic, "bye", QoS::AtMostOnce, false));
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).expect("encode connect");
    bytes.to_vec()
}

/// Sends a CONNECT with a will and returns everything received until the server closes
/// or the wait ends.
async fn connect_raw_with_will(emulator: &Emulator, device: &Credentials, topic: &str) -> Vec<u8> {
    let mut stream = raw_tls(emulator.addr(), device).await;
    stream
        .write_all(&connect_with_will("dev-1", topic))
        .await
        .expect("connect");
    let mut received = [0u8; 4];
    match tokio::time::timeout(WAIT, stream.read(&mut received)).await {
        Ok(Ok(n)) => received[..n].to_vec(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn the_broker_checks_the_last_will_topic_at_connect() {
    let emulator = Emulator::start();
    let device = device_with(
        &emulator,
        "own-will",
        r#"{"Effect":"Allow","Action":"iot:Connect","Resource":"*",
            "Condition":{"StringLike":{"iot:LastWillTopic":"wills/${iot:ClientId}"}}}"#,
    );

    let own = connect_raw_with_will(&emulator, &device, "wills/dev-1").await;
    let foreign = connect_raw_with_will(&emulator, &device, "wills/dev-2").await;

    assert_eq!(own, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(foreign, [] as [u8; 0], "3.1.1: closed without CONNACK");
}
