//! CreateProvisioningTemplate, DescribeProvisioningTemplate,
//! UpdateProvisioningTemplate and DeleteProvisioningTemplate.
//!
//! A template body is parsed before it is stored, so a template that Fleet
//! Provisioning could not evaluate is refused at creation, as AWS does.
//! Only fleet-provisioning templates are kept. A `preProvisioningHook` must
//! name a Lambda function ARN; the emulator runs the hook registered under
//! that function's name (see `emulator::hook`).

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use crate::emulator::registry::{ProvisioningHookConfig, TemplateRecord, TemplateUpdate};
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
    pre_provisioning_hook: Option<HookInput>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookInput {
    target_arn: Option<String>,
    payload_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    description: Option<String>,
    enabled: Option<bool>,
    default_version_id: Option<i64>,
    provisioning_role_arn: Option<String>,
    pre_provisioning_hook: Option<HookInput>,
    #[serde(default)]
    remove_pre_provisioning_hook: bool,
}

/// The payload version AWS documents for the hook event.
const DEFAULT_PAYLOAD_VERSION: &str = "2020-04-01";

pub(super) fn create(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let input: CreateInput = call.json()?;
    let name = required(input.template_name, "templateName")?;
    check_template_name(&name)?;
    let body = required(input.template_body, "templateBody")?;
    let role = required(input.provisioning_role_arn, "provisioningRoleArn")?;
    check_kind(input.kind.as_deref())?;
    let hook = input.pre_provisioning_hook.map(hook_config).transpose()?;
    Template::parse(&body)
        .map_err(|e| ApiError::InvalidRequest(format!("template {name} is invalid: {e}")))?;
    let record = service
        .registry
        .create_template(&name, &input.description, &body, input.enabled, &role)
        .map_err(|e| {
            ApiError::from(e).with_resource_arn(service.registry.arn("provisioningtemplate", &name))
        })?;
    if hook.is_some() {
        let update = TemplateUpdate {
            pre_provisioning_hook: Some(hook),
            ..TemplateUpdate::default()
        };
        service.registry.update_template(&name, update)?;
    }
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

/// Changes only what the request names; a hook and its removal together
/// contradict each other.
pub(super) fn update(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let input: UpdateInput = call.json()?;
    if input.remove_pre_provisioning_hook && input.pre_provisioning_hook.is_some() {
        return Err(ApiError::InvalidRequest(
            "preProvisioningHook and removePreProvisioningHook cannot be used together".into(),
        ));
    }
    if let Some(version) = input.default_version_id.filter(|v| *v != 1) {
        return Err(ApiError::ResourceNotFound(format!(
            "template {name} has no version {version}; the emulator keeps version 1 only"
        )));
    }
    let hook = match (
        input.remove_pre_provisioning_hook,
        input.pre_provisioning_hook,
    ) {
        (true, _) => Some(None),
        (false, Some(hook)) => Some(Some(hook_config(hook)?)),
        (false, None) => None,
    };
    let update = TemplateUpdate {
        description: input.description,
        enabled: input.enabled,
        provisioning_role_arn: input.provisioning_role_arn,
        pre_provisioning_hook: hook,
    };
    service.registry.update_template(name, update)?;
    Ok(json!({}))
}

pub(super) fn delete(service: &Service, name: &str) -> Result<Value, ApiError> {
    service.registry.delete_template(name)?;
    Ok(json!({}))
}

/// `targetArn` must be a Lambda function ARN; `payloadVersion` follows the
/// model (`^[0-9-]+$`, 10 to 32 characters).
fn hook_config(input: HookInput) -> Result<ProvisioningHookConfig, ApiError> {
    let target_arn = required(input.target_arn, "preProvisioningHook.targetArn")?;
    crate::emulator::hook::function_name(&target_arn)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let payload_version = input
        .payload_version
        .unwrap_or_else(|| DEFAULT_PAYLOAD_VERSION.to_owned());
    let valid = (10..=32).contains(&payload_version.len())
        && payload_version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ApiError::InvalidRequest(format!(
            "payloadVersion {payload_version} must be 10-32 characters of [0-9-]"
        )));
    }
    Ok(ProvisioningHookConfig {
        target_arn,
        payload_version,
    })
}

fn description(record: &TemplateRecord) -> Value {
    let mut output = description_fields(record);
    if let Some(hook) = &record.pre_provisioning_hook {
        output["preProvisioningHook"] = json!({
            "targetArn": hook.target_arn,
            "payloadVersion": hook.payload_version,
        });
    }
    output
}

fn description_fields(record: &TemplateRecord) -> Value {
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
