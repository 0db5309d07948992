//! `fleetsim cleanup`: finds everything under a prefix — the things runs
//! created (`<prefix>-*`), every certificate that carries the prefix's
//! policies or is attached to those things, the template, the policies and
//! the target's files — and removes it in the order AWS requires.
//!
//! Certificates are detached from things and policies, deactivated unless
//! already revoked, then deleted; things go after their certificates, and
//! policies last. Anything already gone counts as done, so cleanup finishes
//! after a half-failed setup or an interrupted earlier cleanup.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_iot::types::CertificateStatus;

use super::role::ProvisioningRole;
use super::{Change, Plan, Prefix, TargetError};
use crate::control::{ControlError, ControlPlane};

/// How often a delete refused because a detach has not landed yet is tried.
const CONFLICT_ATTEMPTS: u32 = 6;
const CONFLICT_BACKOFF: Duration = Duration::from_millis(250);

/// What the user asked `fleetsim cleanup` for.
#[derive(Debug, Clone)]
pub struct CleanupRequest {
    pub prefix: Prefix,
    /// The target's folder (`certs/<target>`), removed last.
    pub target_dir: PathBuf,
}

/// What cleanup found, in the order it will remove it.
#[derive(Debug, Clone, Default)]
pub struct CleanupPlan {
    pub plan: Plan,
    prefix: String,
    /// Thing name to the ids of its certificates.
    things: BTreeMap<String, Vec<String>>,
    /// Certificate id to what it takes to delete it.
    certificates: BTreeMap<String, Doomed>,
    template: Option<String>,
    policies: Vec<String>,
    /// The ARN of the provisioning role, when fleetsim created it.
    role: Option<String>,
    target_dir: Option<PathBuf>,
}

/// A certificate to delete: its status and the prefix's policies on it.
#[derive(Debug, Clone, Default)]
struct Doomed {
    status: String,
    policies: Vec<String>,
}

impl CleanupPlan {
    pub fn things(&self) -> usize {
        self.things.len()
    }

    pub fn certificates(&self) -> usize {
        self.certificates.len()
    }
}

/// Lists what exists under the prefix, paging through every listing. The
/// role is looked up only when `iam` is given (not with an endpoint
/// override), and only a role carrying the prefix's tag is deleted.
pub async fn plan_cleanup(
    request: &CleanupRequest,
    control: &ControlPlane,
    iam: Option<&ProvisioningRole>,
) -> Result<CleanupPlan, TargetError> {
    let prefix = &request.prefix;
    let mut found = CleanupPlan {
        prefix: prefix.to_string(),
        ..CleanupPlan::default()
    };
    for thing in thing_names(control, prefix).await? {
        let principals = control.list_thing_principals(&thing).await?;
        found.things.insert(thing, principals);
    }
    let mut doomed: BTreeMap<String, Doomed> = found
        .things
        .values()
        .flatten()
        .map(|id| (id.clone(), Doomed::default()))
        .collect();
    for policy in [prefix.claim_policy(), prefix.device_policy()] {
        if let Some(targets) = policy_targets(control, &policy).await? {
            for id in targets {
                doomed.entry(id).or_default().policies.push(policy.clone());
            }
            found.policies.push(policy);
        }
    }
    let statuses = certificate_statuses(control).await?;
    for (id, mut certificate) in doomed {
        // A certificate missing from the listing is already gone.
        if let Some(status) = statuses.get(&id) {
            certificate.status = status.clone();
            found.certificates.insert(id, certificate);
        }
    }
    found.template = template(control, &prefix.template()).await?;
    if let Some(iam) = iam {
        found.role = iam.find(prefix).await?.filter(|r| r.ours).map(|r| r.arn);
    }
    found.target_dir = request
        .target_dir
        .exists()
        .then(|| request.target_dir.clone());
    found.plan = describe(&found);
    Ok(found)
}

/// Removes what the plan found. Each step tolerates a resource that is
/// already gone.
pub async fn cleanup(
    control: &ControlPlane,
    iam: Option<&ProvisioningRole>,
    found: &CleanupPlan,
) -> Result<(), TargetError> {
    for (thing, certificates) in &found.things {
        for id in certificates {
            detach_thing_principal(control, thing, id).await?;
        }
    }
    for (id, certificate) in &found.certificates {
        delete_certificate(control, id, certificate).await?;
    }
    for thing in found.things.keys() {
        retry_conflicts(control, "DeleteThing", thing, || async {
            control
                .client()
                .delete_thing()
                .thing_name(thing)
                .send()
                .await
        })
        .await?;
    }
    if let Some(template) = &found.template {
        retry_conflicts(control, "DeleteProvisioningTemplate", template, || async {
            let call = control.client().delete_provisioning_template();
            call.template_name(template).send().await
        })
        .await?;
    }
    for policy in &found.policies {
        retry_conflicts(control, "DeletePolicy", policy, || async {
            control
                .client()
                .delete_policy()
                .policy_name(policy)
                .send()
                .await
        })
        .await?;
    }
    if let (Some(arn), Some(iam)) = (&found.role, iam) {
        let prefix = Prefix::new(&found.prefix)?;
        iam.delete(&prefix, arn).await?;
    }
    if let Some(dir) = &found.target_dir {
        remove_dir(dir)?;
    }
    Ok(())
}

fn describe(found: &CleanupPlan) -> Plan {
    let mut plan = Plan::default();
    let active = found
        .certificates
        .values()
        .filter(|certificate| certificate.status == "ACTIVE")
        .count();
    if !found.things.is_empty() {
        plan.changes.push(Change::Delete(format!(
            "{} things named {}-* (their certificates detached first)",
            found.things.len(),
            found.prefix
        )));
    }
    if !found.certificates.is_empty() {
        plan.changes.push(Change::Delete(format!(
            "{} certificates ({active} active: detached, deactivated, then deleted)",
            found.certificates.len()
        )));
    }
    if let Some(template) = &found.template {
        plan.changes
            .push(Change::Delete(format!("provisioning template {template}")));
    }
    for policy in &found.policies {
        plan.changes
            .push(Change::Delete(format!("policy {policy}")));
    }
    if let Some(arn) = &found.role {
        plan.changes.push(Change::Delete(format!("IAM role {arn}")));
    }
    if let Some(dir) = &found.target_dir {
        plan.changes
            .push(Change::Delete(format!("local files {}", dir.display())));
    }
    plan
}

/// Every thing named `<prefix>-*`, across all pages of ListThings (AWS
/// filters things by attribute or type only, so the name is checked here).
async fn thing_names(control: &ControlPlane, prefix: &Prefix) -> Result<Vec<String>, TargetError> {
    let mut pages = control.client().list_things().into_paginator().send();
    let mut names = Vec::new();
    control.pace("ListThings").await;
    while let Some(page) = pages.next().await {
        control.pace("ListThings").await;
        let page = page.map_err(|e| ControlError::from_sdk("ListThings", prefix.as_str(), e))?;
        names.extend(
            page.things()
                .iter()
                .filter_map(|thing| thing.thing_name())
                .filter(|name| prefix.owns_thing(name))
                .map(str::to_owned),
        );
    }
    Ok(names)
}

/// Every certificate's status, from ListCertificates in the largest pages
/// (one call per 250 certificates, not one DescribeCertificate each).
async fn certificate_statuses(
    control: &ControlPlane,
) -> Result<BTreeMap<String, String>, TargetError> {
    let mut pages = control
        .client()
        .list_certificates()
        .page_size(250)
        .into_paginator()
        .send();
    let mut statuses = BTreeMap::new();
    control.pace("ListCertificates").await;
    while let Some(page) = pages.next().await {
        control.pace("ListCertificates").await;
        let page = page.map_err(|e| ControlError::from_sdk("ListCertificates", "account", e))?;
        for certificate in page.certificates() {
            if let (Some(id), Some(status)) = (certificate.certificate_id(), certificate.status()) {
                statuses.insert(id.to_owned(), status.as_str().to_owned());
            }
        }
    }
    Ok(statuses)
}

/// The ids of the certificates a policy is attached to, or `None` when the
/// policy does not exist.
async fn policy_targets(
    control: &ControlPlane,
    policy: &str,
) -> Result<Option<Vec<String>>, TargetError> {
    let mut pages = control
        .client()
        .list_targets_for_policy()
        .policy_name(policy)
        .into_paginator()
        .send();
    let mut ids = Vec::new();
    control.pace("ListTargetsForPolicy").await;
    while let Some(page) = pages.next().await {
        control.pace("ListTargetsForPolicy").await;
        match page.map_err(|e| ControlError::from_sdk("ListTargetsForPolicy", policy, e)) {
            Ok(page) => ids.extend(
                page.targets()
                    .iter()
                    .filter_map(|arn| arn.rsplit_once(":cert/").map(|(_, id)| id.to_owned())),
            ),
            Err(ControlError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(Some(ids))
}

async fn template(control: &ControlPlane, name: &str) -> Result<Option<String>, TargetError> {
    let result = control
        .client()
        .describe_provisioning_template()
        .template_name(name)
        .send()
        .await;
    match result.map_err(|e| ControlError::from_sdk("DescribeProvisioningTemplate", name, e)) {
        Ok(_) => Ok(Some(name.to_owned())),
        Err(ControlError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

async fn detach_thing_principal(
    control: &ControlPlane,
    thing: &str,
    id: &str,
) -> Result<(), TargetError> {
    let arn = control.certificate_arn_of(id).await?;
    control.pace("DetachThingPrincipal").await;
    let result = control
        .client()
        .detach_thing_principal()
        .thing_name(thing)
        .principal(arn)
        .send()
        .await;
    gone_is_done(result.map_err(|e| ControlError::from_sdk("DetachThingPrincipal", thing, e)))
}

/// Detaches the prefix's policies, deactivates the certificate unless it is
/// revoked (AWS deletes only inactive or revoked ones), then deletes it.
async fn delete_certificate(
    control: &ControlPlane,
    id: &str,
    certificate: &Doomed,
) -> Result<(), TargetError> {
    let arn = control.certificate_arn_of(id).await?;
    let status = certificate.status.as_str();
    for policy in &certificate.policies {
        control.pace("DetachPolicy").await;
        let call = control.client().detach_policy().policy_name(policy);
        let result = call.target(&arn).send().await;
        gone_is_done(result.map_err(|e| ControlError::from_sdk("DetachPolicy", policy, e)))?;
    }
    if status != "REVOKED" && status != "INACTIVE" {
        control.pace("UpdateCertificate").await;
        let call = control.client().update_certificate().certificate_id(id);
        let result = call.new_status(CertificateStatus::Inactive).send().await;
        gone_is_done(result.map_err(|e| ControlError::from_sdk("UpdateCertificate", id, e)))?;
    }
    retry_conflicts(control, "DeleteCertificate", id, || async {
        let call = control.client().delete_certificate().certificate_id(id);
        call.force_delete(true).send().await
    })
    .await
}

/// A resource already gone is what cleanup wanted.
fn gone_is_done<T>(result: Result<T, ControlError>) -> Result<(), TargetError> {
    match result {
        Ok(_) | Err(ControlError::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Runs a delete until it stops conflicting: AWS applies detaches after a
/// delay, and a delete right after one can still see the attachment.
async fn retry_conflicts<T, E, F, Fut>(
    control: &ControlPlane,
    operation: &'static str,
    resource: &str,
    mut call: F,
) -> Result<(), TargetError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, aws_sdk_iot::error::SdkError<E>>>,
    E: aws_sdk_iot::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let (mut wait, mut attempt) = (CONFLICT_BACKOFF, 1);
    loop {
        control.pace(operation).await;
        let result = call()
            .await
            .map_err(|e| ControlError::from_sdk(operation, resource, e));
        match result {
            Err(ControlError::Refused { code, .. })
                if code == "DeleteConflictException" && attempt < CONFLICT_ATTEMPTS =>
            {
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            other => return gone_is_done(other),
        }
    }
}

fn remove_dir(dir: &std::path::Path) -> Result<(), TargetError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(TargetError::file(dir, format!("cannot remove: {e}")))
        }
        _ => Ok(()),
    }
}
