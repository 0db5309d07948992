//! CreatePolicy, GetPolicy, DeletePolicy, AttachPolicy, DetachPolicy,
//! ListAttachedPolicies and ListTargetsForPolicy.
//!
//! Documents are parsed by the registry on creation, so a document the
//! broker could not evaluate is refused here with `MalformedPolicyException`.
//! Only certificate ARNs are accepted as targets; thing groups are not kept.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use crate::emulator::registry::{Registry, RegistryError};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    policy_document: Option<String>,
}

#[derive(Deserialize)]
struct TargetInput {
    target: Option<String>,
}

pub(super) fn create(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    check_policy_name(name)?;
    let input: CreateInput = call.json()?;
    let document = input
        .policy_document
        .ok_or_else(|| ApiError::InvalidRequest("policyDocument is required".into()))?;
    let record = service
        .registry
        .create_policy(name, &document)
        .map_err(|e| ApiError::from(e).with_resource_arn(service.registry.arn("policy", name)))?;
    Ok(json!({
        "policyName": record.name,
        "policyArn": record.arn,
        "policyDocument": record.document,
        "policyVersionId": "1",
    }))
}

pub(super) fn get(service: &Service, name: &str) -> Result<Value, ApiError> {
    let record = service
        .registry
        .policy(name)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("policy {name} does not exist")))?;
    let created = epoch_seconds(record.created_at);
    Ok(json!({
        "policyName": record.name,
        "policyArn": record.arn,
        "policyDocument": record.document,
        "defaultVersionId": "1",
        "creationDate": created,
        "lastModifiedDate": created,
        "generationId": "1",
    }))
}

/// A policy still attached to a certificate cannot be deleted.
pub(super) fn delete(service: &Service, name: &str) -> Result<Value, ApiError> {
    service.registry.delete_policy(name)?;
    Ok(json!({}))
}

/// The policies on a certificate (the target ARN is the path label), paged
/// by `pageSize` and `marker`; `recursive` has nothing to add without groups.
pub(super) fn list_attached(
    service: &Service,
    call: &Call,
    target: &str,
) -> Result<Value, ApiError> {
    let certificate_id = certificate_of(target)?;
    let size = super::things::page_size_named(call, "pageSize")?;
    let policies = service.registry.attached_policies(&certificate_id)?;
    let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
    let (page, next) = super::things::page_of(&names, call.query("marker"), size);
    let entries: Vec<Value> = policies
        .iter()
        .filter(|policy| page.contains(&policy.name))
        .map(|policy| json!({ "policyName": policy.name, "policyArn": policy.arn }))
        .collect();
    let mut output = json!({ "policies": entries });
    if let Some(marker) = next {
        output["nextMarker"] = json!(marker);
    }
    Ok(output)
}

/// The certificates a policy is attached to, as ARNs in id order, paged by
/// `pageSize` and `marker` (the id of the last certificate returned).
pub(super) fn list_targets(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    if service.registry.policy(name).is_none() {
        return Err(ApiError::ResourceNotFound(format!(
            "policy {name} does not exist"
        )));
    }
    let size = super::things::page_size_named(call, "pageSize")?;
    let after = call
        .query("marker")
        .map(super::things::page_token)
        .transpose()?;
    let mut ids: Vec<String> = service
        .registry
        .certificates()
        .into_iter()
        .filter(|certificate| certificate.policies.contains(name))
        .map(|certificate| certificate.id)
        .collect();
    ids.sort();
    let (page, next) = super::things::page_of(&ids, after.as_deref(), size);
    let targets: Vec<String> = page
        .iter()
        .map(|id| service.registry.arn("cert", id))
        .collect();
    let mut output = json!({ "targets": targets });
    if let Some(marker) = next {
        output["nextMarker"] = json!(marker);
    }
    Ok(output)
}

pub(super) fn attach(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let certificate_id = target_certificate(call)?;
    propagate(service, name, certificate_id, Registry::attach_policy)
}

pub(super) fn detach(service: &Service, call: &Call, name: &str) -> Result<Value, ApiError> {
    let certificate_id = target_certificate(call)?;
    propagate(service, name, certificate_id, Registry::detach_policy)
}

/// Applies a policy attachment change now, or, with a policy propagation
/// delay, answers at once and applies it later, as AWS's policy cache
/// does. The policy and certificate are checked before answering either way.
fn propagate(
    service: &Service,
    name: &str,
    certificate_id: String,
    change: fn(&Registry, &str, &str) -> Result<(), RegistryError>,
) -> Result<Value, ApiError> {
    let delay = service.settings.policy_propagation_delay;
    if delay.is_zero() {
        change(&service.registry, name, &certificate_id)?;
        return Ok(json!({}));
    }
    if service.registry.policy(name).is_none() {
        return Err(ApiError::ResourceNotFound(format!(
            "policy {name} does not exist"
        )));
    }
    if service.registry.certificate(&certificate_id).is_none() {
        return Err(ApiError::ResourceNotFound(format!(
            "certificate {certificate_id} does not exist"
        )));
    }
    let registry = std::sync::Arc::clone(&service.registry);
    let name = name.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = change(&registry, &name, &certificate_id);
    });
    Ok(json!({}))
}

fn target_certificate(call: &Call) -> Result<String, ApiError> {
    let input: TargetInput = call.json()?;
    let target = input
        .target
        .ok_or_else(|| ApiError::InvalidRequest("target is required".into()))?;
    certificate_of(&target)
}

fn certificate_of(target: &str) -> Result<String, ApiError> {
    let id = Registry::certificate_id_from_arn(target).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "target {target} is not a certificate ARN; \
             the emulator attaches policies only to certificates"
        ))
    })?;
    super::certificates::parse_certificate_id(id)
}

/// Policy names follow the model's `[\w+=,.@-]+`, 1 to 128 characters.
fn check_policy_name(name: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    if name.len() <= 128 && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "policy name {name} must be 1-128 characters of [A-Za-z0-9_+=,.@-]"
        )))
    }
}
