//! The provisioning template language beyond the basics: thing types, thing
//! groups, every OverrideSettings value, thing-name rules, and a randomized
//! check that the renderer never panics and keeps its functions' laws.

use std::collections::{BTreeMap, BTreeSet};

use fleetsim::emulator::template::{Override, OverrideConflict, Template, ThingProperties};
use proptest::prelude::*;

const CERTIFICATE_ID: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn template(thing_properties: &str, overrides: &str) -> Template {
    let body = format!(
        r#"{{
          "Parameters": {{
            "SerialNumber": {{"Type": "String"}},
            "Groups": {{"Type": "String", "Default": "fleet,eu"}},
            "AWS::IoT::Certificate::Id": {{"Type": "String"}}
          }},
          "Resources": {{
            "thing": {{"Type": "AWS::IoT::Thing",
              "Properties": {{"ThingName": {{"Ref": "SerialNumber"}} {thing_properties}}},
              "OverrideSettings": {{ {overrides} }}}},
            "certificate": {{"Type": "AWS::IoT::Certificate",
              "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}}}}}
          }}
        }}"#
    );
    Template::parse(&body).expect("the test template is valid")
}

fn request(serial: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("SerialNumber".to_owned(), serial.to_owned()),
        (
            "AWS::IoT::Certificate::Id".to_owned(),
            CERTIFICATE_ID.to_owned(),
        ),
    ])
}

fn existing() -> ThingProperties {
    ThingProperties {
        attributes: [
            ("old".to_owned(), "1".to_owned()),
            ("colour".to_owned(), "red".to_owned()),
        ]
        .into(),
        thing_type: Some("sensor-v1".to_owned()),
        groups: ["legacy".to_owned()].into(),
    }
}

const FULL: &str = r#", "AttributePayload": {"colour": "blue"},
    "ThingTypeName": "sensor-v2",
    "ThingGroups": {"Fn::Split": [",", {"Ref": "Groups"}]}"#;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_new_thing_gets_the_templates_type_groups_and_attributes() {
    let plan = template(FULL, "").evaluate(&request("sn-1")).unwrap();
    let thing = plan.thing.unwrap();

    let properties = thing.resolve(None).unwrap();
    assert_eq!(properties.thing_type.as_deref(), Some("sensor-v2"));
    assert_eq!(properties.groups, set(&["eu", "fleet"]));
    assert_eq!(properties.attributes["colour"], "blue");
}

#[test]
fn do_nothing_is_the_default_and_keeps_every_existing_property() {
    let thing = template(FULL, "")
        .evaluate(&request("sn-1"))
        .unwrap()
        .thing
        .unwrap();
    assert_eq!(thing.attributes_override, Override::DoNothing);

    assert_eq!(thing.resolve(Some(&existing())).unwrap(), existing());
}

#[test]
fn replace_takes_the_templates_values() {
    let overrides =
        r#""AttributePayload": "REPLACE", "ThingTypeName": "REPLACE", "ThingGroups": "REPLACE""#;
    let thing = template(FULL, overrides)
        .evaluate(&request("sn-1"))
        .unwrap()
        .thing
        .unwrap();

    let properties = thing.resolve(Some(&existing())).unwrap();
    assert_eq!(
        properties.attributes,
        [("colour".to_owned(), "blue".to_owned())].into()
    );
    assert_eq!(properties.thing_type.as_deref(), Some("sensor-v2"));
    assert_eq!(properties.groups, set(&["eu", "fleet"]));
}

#[test]
fn merge_adds_attributes_and_groups_to_the_existing_ones() {
    let overrides = r#""AttributePayload": "MERGE", "ThingGroups": "MERGE""#;
    let thing = template(FULL, overrides)
        .evaluate(&request("sn-1"))
        .unwrap()
        .thing
        .unwrap();

    let properties = thing.resolve(Some(&existing())).unwrap();
    assert_eq!(properties.attributes["old"], "1");
    assert_eq!(
        properties.attributes["colour"], "blue",
        "the template's value wins"
    );
    assert_eq!(properties.groups, set(&["eu", "fleet", "legacy"]));
    assert_eq!(
        properties.thing_type.as_deref(),
        Some("sensor-v1"),
        "type untouched"
    );
}

#[test]
fn merge_is_refused_for_a_thing_type() {
    let body = r#"{"Resources": {"thing": {"Type": "AWS::IoT::Thing",
        "Properties": {"ThingName": "t", "ThingTypeName": "x"},
        "OverrideSettings": {"ThingTypeName": "MERGE"}}}}"#;
    let error = Template::parse(body).expect_err("MERGE of a single value");
    assert!(
        error.to_string().contains("OverrideSettings.ThingTypeName"),
        "{error}"
    );
}

#[test]
fn fail_refuses_a_change_to_an_existing_thing_but_not_a_repeat() {
    let overrides = r#""ThingTypeName": "FAIL""#;
    let thing = template(FULL, overrides)
        .evaluate(&request("sn-1"))
        .unwrap()
        .thing
        .unwrap();

    assert_eq!(
        thing.resolve(Some(&existing())),
        Err(OverrideConflict("ThingTypeName"))
    );
    let same_type = ThingProperties {
        thing_type: Some("sensor-v2".to_owned()),
        ..existing()
    };
    assert!(thing.resolve(Some(&same_type)).is_ok());
}

#[test]
fn thing_names_types_and_groups_are_validated_as_aws_does() {
    let long = "x".repeat(129);
    for serial in ["has space", "slash/no", long.as_str(), ""] {
        let error = template("", "").evaluate(&request(serial));
        assert!(error.is_err(), "{serial:?} is not a thing name");
    }
    let ok = "a:b_c-D9".to_owned() + &"x".repeat(120);
    assert!(template("", "").evaluate(&request(&ok)).is_ok());
    let bad_group = template(r#", "ThingGroups": ["ok", "not ok"]"#, "");
    let error = bad_group
        .evaluate(&request("sn-1"))
        .expect_err("a space in a group name");
    assert!(error.to_string().contains("ThingGroups[1]"), "{error}");
    let bad_type = template(r#", "ThingTypeName": "a/b""#, "");
    assert!(bad_type.evaluate(&request("sn-1")).is_err());
}

fn renderer_template() -> Template {
    let body = r#"{
      "Parameters": {
        "A": {"Type": "String"},
        "B": {"Type": "String", "Default": "b"},
        "AWS::IoT::Certificate::Id": {"Type": "String"}
      },
      "Mappings": {"M": {"k": {"v": "mapped"}}},
      "Resources": {
        "thing": {"Type": "AWS::IoT::Thing",
          "Properties": {"ThingName": "thing-1",
            "AttributePayload": {
              "joined": {"Fn::Join": ["|", [{"Ref": "A"}, {"Ref": "B"}]]},
              "first": {"Fn::Select": [0, {"Fn::Split": ["|", {"Fn::Join": ["|", [{"Ref": "A"}, "z"]]}]}]},
              "sub": {"Fn::Sub": "${A}/${B}"},
              "map": {"Fn::FindInMap": ["M", "k", "v"]}
            }}},
        "certificate": {"Type": "AWS::IoT::Certificate",
          "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}
      }
    }"#;
    Template::parse(body).expect("renderer template is valid")
}

proptest! {
    #[test]
    fn the_renderer_keeps_its_laws_for_any_parameter_values(
        a in "[a-zA-Z0-9 ${}:_-]{0,20}",
        b in proptest::option::of("[a-zA-Z0-9|]{0,10}"),
    ) {
        let mut parameters = BTreeMap::from([
            ("A".to_owned(), a.clone()),
            ("AWS::IoT::Certificate::Id".to_owned(), CERTIFICATE_ID.to_owned()),
        ]);
        if let Some(b) = &b {
            parameters.insert("B".to_owned(), b.clone());
        }
        let b = b.unwrap_or_else(|| "b".to_owned());
        let plan = renderer_template().evaluate(&parameters).expect("any strings render");
        let attributes = plan.thing.unwrap().attributes;
        prop_assert_eq!(&attributes["joined"], &format!("{a}|{b}"));
        prop_assert_eq!(&attributes["sub"], &format!("{a}/{b}"));
        prop_assert_eq!(&attributes["map"], "mapped");
        let first = if a.is_empty() { String::new() } else { a.clone() };
        prop_assert_eq!(&attributes["first"], &first);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(body in ".{0,200}") {
        let _ = Template::parse(&body);
    }
}
