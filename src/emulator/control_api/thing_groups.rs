//! Static thing groups: CreateThingGroup, DescribeThingGroup, ListThingGroups,
//! DeleteThingGroup, AddThingToThingGroup, RemoveThingFromThingGroup,
//! ListThingsInThingGroup and ListThingGroupsForThing. Dynamic groups, which
//! need fleet indexing, are not served.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use super::things::{page_of, page_size_named};
use crate::emulator::registry::{NewThingGroup, ThingGroupRecord};

/// Thing, thing type and thing group names share AWS's pattern.
const MAX_NAME_CHARS: usize = 128;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateInput {
    parent_group_name: Option<String>,
    thing_group_properties: Properties,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Properties {
    thing_group_description: Option<String>,
    attribute_payload: AttributePayload,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AttributePayload {
    attributes: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MembershipInput {
    thing_group_name: Option<String>,
    thing_group_arn: Option<String>,
    thing_name: Option<String>,
    thing_arn: Option<String>,
}

/// `^[a-zA-Z0-9:_-]+$`, 1 to 128 characters.
pub(super) fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-');
    if name.chars().count() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        return Err(ApiError::InvalidRequest(format!(
            "{kind} name {name} must be 1 to {MAX_NAME_CHARS} of a-z, A-Z, 0-9, ':', '_' and '-'"
        )));
    }
    Ok(())
}

pub(super) fn create(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    check_name("thing group", name)?;
    let input: CreateInput = call.json()?;
    let new = NewThingGroup {
        description: input.thing_group_properties.thing_group_description,
        attributes: input.thing_group_properties.attribute_payload.attributes,
        parent: input.parent_group_name,
    };
    let record = service
        .registry
        .create_thing_group(name, new)
        .map_err(|e| {
            ApiError::from(e).with_resource_arn(service.registry.arn("thinggroup", name))
        })?;
    Ok(json!({
        "thingGroupName": record.name,
        "thingGroupArn": record.arn,
        "thingGroupId": record.id,
    }))
}

pub(super) fn describe(service: &Service, name: &str) -> Result<Value, ApiError> {
    let record = service
        .registry
        .thing_group(name)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("thing group {name} does not exist")))?;
    let ancestors: Vec<Value> = service
        .registry
        .thing_group_ancestors(name)
        .iter()
        .map(name_and_arn)
        .collect();
    let mut properties = json!({ "attributePayload": { "attributes": record.attributes } });
    if let Some(description) = &record.description {
        properties["thingGroupDescription"] = json!(description);
    }
    let mut metadata = json!({ "rootToParentThingGroups": ancestors });
    if let Some(parent) = &record.parent {
        metadata["parentGroupName"] = json!(parent);
    }
    if let Some(at) = record.created_at {
        metadata["creationDate"] = json!(epoch_seconds(at));
    }
    Ok(json!({
        "thingGroupName": record.name,
        "thingGroupId": record.id,
        "thingGroupArn": record.arn,
        "version": record.version,
        "thingGroupProperties": properties,
        "thingGroupMetadata": metadata,
    }))
}

/// Groups in name order, filtered by `parentGroup` and `namePrefixFilter`.
pub(super) fn list(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let size = page_size_named(call, "maxResults")?;
    let groups: Vec<ThingGroupRecord> = service
        .registry
        .thing_groups()
        .into_iter()
        .filter(|g| {
            call.query("parentGroup")
                .is_none_or(|parent| g.parent.as_deref() == Some(parent))
        })
        .filter(|g| {
            call.query("namePrefixFilter")
                .is_none_or(|prefix| g.name.starts_with(prefix))
        })
        .collect();
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let (page, next) = page_of(&names, call.query("nextToken"), size);
    let entries: Vec<Value> = groups
        .iter()
        .filter(|g| page.contains(&g.name))
        .map(name_and_arn)
        .collect();
    Ok(with_token(json!({ "thingGroups": entries }), next))
}

pub(super) fn delete(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let expected = call.expected_version()?;
    service.registry.delete_thing_group(name, expected)?;
    Ok(json!({}))
}

pub(super) fn add_thing(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let (thing, group) = membership(call)?;
    service.registry.add_thing_to_group(&thing, &group)?;
    Ok(json!({}))
}

pub(super) fn remove_thing(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let (thing, group) = membership(call)?;
    service.registry.remove_thing_from_group(&thing, &group)?;
    Ok(json!({}))
}

pub(super) fn things_in(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let size = page_size_named(call, "maxResults")?;
    let things = service.registry.things_in_group(name)?;
    let (page, next) = page_of(&things, call.query("nextToken"), size);
    Ok(with_token(json!({ "things": page }), next))
}

pub(super) fn groups_of(service: &Service, call: &Call, thing: &str) -> Result<Value, ApiError> {
    let size = page_size_named(call, "maxResults")?;
    let record = service
        .registry
        .thing(thing)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("thing {thing} does not exist")))?;
    let names: Vec<String> = record.groups.into_iter().collect();
    let (page, next) = page_of(&names, call.query("nextToken"), size);
    let entries: Vec<Value> = page
        .iter()
        .map(|name| json!({ "groupName": name, "groupArn": service.registry.arn("thinggroup", name) }))
        .collect();
    Ok(with_token(json!({ "thingGroups": entries }), next))
}

/// The thing and group of Add/RemoveThingFromThingGroup, by name or by ARN.
fn membership(call: &Call) -> Result<(String, String), ApiError> {
    let input: MembershipInput = call.json()?;
    let group = input
        .thing_group_name
        .or_else(|| {
            input
                .thing_group_arn
                .as_deref()
                .and_then(arn_name)
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            ApiError::InvalidRequest("thingGroupName or thingGroupArn is required".into())
        })?;
    let thing = input
        .thing_name
        .or_else(|| {
            input
                .thing_arn
                .as_deref()
                .and_then(arn_name)
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::InvalidRequest("thingName or thingArn is required".into()))?;
    Ok((thing, group))
}

/// The name after the resource kind in `arn:aws:iot:<region>:<account>:<kind>/<name>`.
fn arn_name(arn: &str) -> Option<&str> {
    arn.split_once('/').map(|(_, name)| name)
}

fn name_and_arn(record: &ThingGroupRecord) -> Value {
    json!({ "groupName": record.name, "groupArn": record.arn })
}

fn with_token(mut output: Value, next: Option<&str>) -> Value {
    if let Some(token) = next {
        output["nextToken"] = json!(token);
    }
    output
}
