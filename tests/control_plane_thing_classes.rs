//! Thing types and thing groups through the real `aws-sdk-iot` client: the
//! lifecycle AWS enforces (deprecate before delete, no delete while in use,
//! parents before children) and group membership as the registry keeps it.

mod support;

use std::time::Duration;

use aws_sdk_iot::error::ProvideErrorMetadata;
use aws_sdk_iot::types::{AttributePayload, ThingGroupProperties, ThingTypeProperties};
use fleetsim::emulator::EmulatorConfig;
use fleetsim::emulator::fleet_provisioning::keys::ServerKeyType;
use support::{Target, configured_emulator_with};

async fn target() -> Target {
    configured_emulator_with(EmulatorConfig {
        certificate_validity: Duration::from_secs(600),
        server_key: ServerKeyType::EcP256,
        ..EmulatorConfig::default()
    })
    .await
}

fn code<T, E: ProvideErrorMetadata>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "succeeded".to_owned(),
        Err(error) => error.code().unwrap_or("no code").to_owned(),
    }
}

#[tokio::test]
async fn a_thing_type_is_deleted_only_when_deprecated_and_unused() {
    let target = target().await;
    let client = target.control.client();
    let properties = ThingTypeProperties::builder()
        .thing_type_description("temperature sensors")
        .searchable_attributes("site")
        .build();
    let created = client
        .create_thing_type()
        .thing_type_name("sensor")
        .thing_type_properties(properties.clone())
        .send()
        .await
        .expect("CreateThingType");
    target
        .emulator
        .registry()
        .ensure_thing("dev-1", &Default::default());
    let typed = fleetsim::emulator::registry::ThingProperties {
        thing_type: Some("sensor".into()),
        ..Default::default()
    };
    target
        .emulator
        .registry()
        .set_thing_properties("dev-1", &typed)
        .unwrap();

    let again = client
        .create_thing_type()
        .thing_type_name("sensor")
        .thing_type_properties(properties)
        .send()
        .await
        .expect("an identical CreateThingType succeeds");
    let different = client
        .create_thing_type()
        .thing_type_name("sensor")
        .send()
        .await;
    let described = client
        .describe_thing_type()
        .thing_type_name("sensor")
        .send()
        .await
        .unwrap();
    let undeprecated = client
        .delete_thing_type()
        .thing_type_name("sensor")
        .send()
        .await;
    client
        .deprecate_thing_type()
        .thing_type_name("sensor")
        .send()
        .await
        .unwrap();
    let in_use = client
        .delete_thing_type()
        .thing_type_name("sensor")
        .send()
        .await;
    let listed = client
        .list_things()
        .thing_type_name("sensor")
        .send()
        .await
        .unwrap();

    assert_eq!(again.thing_type_id(), created.thing_type_id());
    assert_eq!(code(different), "ResourceAlreadyExistsException");
    assert_eq!(
        described
            .thing_type_properties()
            .unwrap()
            .thing_type_description(),
        Some("temperature sensors")
    );
    assert!(!described.thing_type_metadata().unwrap().deprecated());
    assert_eq!(code(undeprecated), "DeleteConflictException");
    assert_eq!(code(in_use), "DeleteConflictException");
    assert_eq!(listed.things().len(), 1, "ListThings filters by the type");

    target
        .emulator
        .registry()
        .set_thing_properties("dev-1", &Default::default())
        .unwrap();
    client
        .delete_thing_type()
        .thing_type_name("sensor")
        .send()
        .await
        .expect("a deprecated, unused type is deleted");
    let gone = client
        .describe_thing_type()
        .thing_type_name("sensor")
        .send()
        .await;
    assert_eq!(code(gone), "ResourceNotFoundException");
    let types = client.list_thing_types().send().await.unwrap();
    assert!(types.thing_types().is_empty());
}

#[tokio::test]
async fn thing_groups_nest_hold_things_and_go_children_first() {
    let target = target().await;
    let client = target.control.client();
    client
        .create_thing_group()
        .thing_group_name("fleet")
        .send()
        .await
        .unwrap();
    let payload = AttributePayload::builder()
        .attributes("region", "eu")
        .build();
    client
        .create_thing_group()
        .thing_group_name("fleet-eu")
        .parent_group_name("fleet")
        .thing_group_properties(
            ThingGroupProperties::builder()
                .attribute_payload(payload)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let orphan = client
        .create_thing_group()
        .thing_group_name("x")
        .parent_group_name("missing")
        .send()
        .await;
    target
        .emulator
        .registry()
        .ensure_thing("dev-1", &Default::default());

    client
        .add_thing_to_thing_group()
        .thing_group_name("fleet-eu")
        .thing_name("dev-1")
        .send()
        .await
        .expect("AddThingToThingGroup");
    let described = client
        .describe_thing_group()
        .thing_group_name("fleet-eu")
        .send()
        .await
        .unwrap();
    let members = client
        .list_things_in_thing_group()
        .thing_group_name("fleet-eu")
        .send()
        .await
        .unwrap();
    let of_thing = client
        .list_thing_groups_for_thing()
        .thing_name("dev-1")
        .send()
        .await
        .unwrap();
    let children = client
        .list_thing_groups()
        .parent_group("fleet")
        .send()
        .await
        .unwrap();
    let parent_first = client
        .delete_thing_group()
        .thing_group_name("fleet")
        .send()
        .await;

    assert_eq!(code(orphan), "ResourceNotFoundException");
    let metadata = described.thing_group_metadata().unwrap();
    assert_eq!(metadata.parent_group_name(), Some("fleet"));
    let chain: Vec<_> = metadata
        .root_to_parent_thing_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    assert_eq!(chain, ["fleet"]);
    assert_eq!(members.things(), ["dev-1"]);
    let groups: Vec<_> = of_thing
        .thing_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    assert_eq!(groups, ["fleet-eu"]);
    let names: Vec<_> = children
        .thing_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    assert_eq!(names, ["fleet-eu"]);
    assert_eq!(code(parent_first), "DeleteConflictException");

    client
        .delete_thing_group()
        .thing_group_name("fleet-eu")
        .send()
        .await
        .expect("a leaf group is deleted");
    let thing = target.emulator.registry().thing("dev-1").unwrap();
    assert!(thing.groups.is_empty(), "its things leave it");
    client
        .delete_thing_group()
        .thing_group_name("fleet-eu")
        .send()
        .await
        .expect("deleting a missing group succeeds, as on AWS");
}

#[tokio::test]
async fn a_thing_leaves_a_group_by_arn() {
    let target = target().await;
    let client = target.control.client();
    let group = client
        .create_thing_group()
        .thing_group_name("beta")
        .send()
        .await
        .unwrap();
    let (thing, _) = target
        .emulator
        .registry()
        .ensure_thing("dev-2", &Default::default());
    client
        .add_thing_to_thing_group()
        .thing_group_arn(group.thing_group_arn().unwrap())
        .thing_arn(&thing.arn)
        .send()
        .await
        .unwrap();

    client
        .remove_thing_from_thing_group()
        .thing_group_arn(group.thing_group_arn().unwrap())
        .thing_arn(&thing.arn)
        .send()
        .await
        .expect("RemoveThingFromThingGroup");

    let members = client
        .list_things_in_thing_group()
        .thing_group_name("beta")
        .send()
        .await
        .unwrap();
    assert!(members.things().is_empty());
    let missing = client
        .add_thing_to_thing_group()
        .thing_group_name("beta")
        .thing_name("nobody")
        .send()
        .await;
    assert_eq!(code(missing), "ResourceNotFoundException");
}
