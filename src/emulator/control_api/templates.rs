//! CreateProvisioningTemplate and DescribeProvisioningTemplate.
//!
//! A template body is parsed before it is stored, so a template that Fleet
//! Provisioning could not evaluate is refused at creation, as AWS does.
//! Only fleet-provisioning templates are kept; pre-provisioning hooks are
//! configured on the emulator itself rather than through this API.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use crate::emulator::registry::TemplateRecord;
use crate::emulator::template::Template;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    template_name: Option<String>,
    #[serde(default)]
    description: String,
    template_body: Option<String>,
    #[serde(default)]
    enabled: bool,
    provisioning_role_arn: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) fn create(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let input: CreateInput = call.json()?;
    let name = required(input.template_name, "templateName")?;
    check_template_name(&name)?;
    let body = required(input.template_body, "templateBody")?;
    let role = required(input.provisioning_role_arn, "provisioningRoleArn")?;
    check_kind(input.kind.as_deref())?;
    Template::parse(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("template {name} is invalid: {e}")))?;
    let record = service
        .registry
        .create_template(&name, &input.description, &body, input.enabled, &role)
        .map_err(|e| {
            ApiError::from(e).with_resource_arn(service.registry.arn("provisioningtemplate", &name))
        })?;
    Ok(json!({
        "templateArn": record.arn,
        "templateName": record.name,
        "defaultVersionId": 1,
    }))
}

pub(super) fn describe(service: &Service, name: &str) -> Result<Value, ApiError> {
    let record = service.registry.template(name).ok_or_else(|| {
        ApiError::ResourceNotFound(format!("provisioning template {name} does not exist"))
    })?;
    Ok(description(&record))
}

fn description(record: &TemplateRecord) -> Value {
    json!({
        "templateArn": record.arn,
        "templateName": record.name,
        "description": record.description,
        "creationDate": epoch_seconds(record.created_at),
        "lastModifiedDate": epoch_seconds(record.last_modified),
        "defaultVersionId": 1,
        "templateBody": record.body,
        "enabled": record.enabled,
        "provisioningRoleArn": record.provisioning_role_arn,
        "type": "FLEET_PROVISIONING",
    })
}

fn required(value: Option<String>, field: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::InvalidRequest(format!("{field} is required")))
}

/// Template names follow the model's `^[0-9A-Za-z_-]+$`, 1 to 36 characters.
fn check_template_name(name: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.len() <= 36 && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "template name {name} must be 1-36 characters of [0-9A-Za-z_-]"
        )))
    }
}

fn check_kind(kind: Option<&str>) -> Result<(), ApiError> {
    match kind {
        None | Some("FLEET_PROVISIONING") => Ok(()),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "template type {other} is not supported by the emulator"
        ))),
    }
}
