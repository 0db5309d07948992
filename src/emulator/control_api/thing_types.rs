//! CreateThingType, DescribeThingType, ListThingTypes, DeprecateThingType and
//! DeleteThingType: the thing types a template's `ThingTypeName` may name.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use super::thing_groups::check_name;
use super::things::{page_of, page_size_named};
use crate::emulator::registry::{NewThingType, ThingTypeRecord};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CreateInput {
    thing_type_properties: Properties,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Properties {
    thing_type_description: Option<String>,
    searchable_attributes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct DeprecateInput {
    undo_deprecate: bool,
}

pub(super) fn create(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    check_name("thing type", name)?;
    let input: CreateInput = call.json()?;
    let new = NewThingType {
        description: input.thing_type_properties.thing_type_description,
        searchable_attributes: input.thing_type_properties.searchable_attributes,
    };
    let record = service.registry.create_thing_type(name, new).map_err(|e| {
        ApiError::from(e).with_resource_arn(service.registry.arn("thingtype", name))
    })?;
    Ok(json!({
        "thingTypeName": record.name,
        "thingTypeArn": record.arn,
        "thingTypeId": record.id,
    }))
}

pub(super) fn describe(service: &Service, name: &str) -> Result<Value, ApiError> {
    let record = service
        .registry
        .thing_type(name)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("thing type {name} does not exist")))?;
    let mut output = definition(&record);
    output["thingTypeId"] = json!(record.id);
    Ok(output)
}

/// Thing types in name order, optionally just one by `thingTypeName`.
pub(super) fn list(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let size = page_size_named(call, "maxResults")?;
    let types: Vec<ThingTypeRecord> = service
        .registry
        .thing_types()
        .into_iter()
        .filter(|t| {
            call.query("thingTypeName")
                .is_none_or(|name| t.name == name)
        })
        .collect();
    let names: Vec<String> = types.iter().map(|t| t.name.clone()).collect();
    let (page, next) = page_of(&names, call.query("nextToken"), size);
    let entries: Vec<Value> = types
        .iter()
        .filter(|t| page.contains(&t.name))
        .map(definition)
        .collect();
    let mut output = json!({ "thingTypes": entries });
    if let Some(token) = next {
        output["nextToken"] = json!(token);
    }
    Ok(output)
}

pub(super) fn deprecate(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let input: DeprecateInput = call.json()?;
    service
        .registry
        .deprecate_thing_type(name, input.undo_deprecate)?;
    Ok(json!({}))
}

pub(super) fn delete(service: &Service, name: &str) -> Result<Value, ApiError> {
    service.registry.delete_thing_type(name)?;
    Ok(json!({}))
}

/// The `ThingTypeDefinition` shape shared by Describe and List.
fn definition(record: &ThingTypeRecord) -> Value {
    let mut properties = json!({ "searchableAttributes": record.searchable_attributes });
    if let Some(description) = &record.description {
        properties["thingTypeDescription"] = json!(description);
    }
    let mut metadata = json!({ "deprecated": record.deprecated_at.is_some() });
    if let Some(at) = record.deprecated_at {
        metadata["deprecationDate"] = json!(epoch_seconds(at));
    }
    if let Some(at) = record.created_at {
        metadata["creationDate"] = json!(epoch_seconds(at));
    }
    json!({
        "thingTypeName": record.name,
        "thingTypeArn": record.arn,
        "thingTypeProperties": properties,
        "thingTypeMetadata": metadata,
    })
}
