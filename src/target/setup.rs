//! `fleetsim setup`: reads what already exists under the prefix, plans what
//! is missing, and creates only that, in dependency order (role, policies,
//! template, claim certificate, files). Run twice, the second plan keeps
//! everything; after a failure half-way, the next run creates the rest.

use std::path::{Path, PathBuf};

use super::config::{
    CLAIM_CERTIFICATE_FILE, CLAIM_KEY_FILE, ROOT_CA_FILE, TARGET_FILE, holds, write_private,
};
use super::role::ProvisioningRole;
use super::{AMAZON_ROOT_CA_1, AwsAccess, Change, Plan, Prefix, TargetConfig, TargetError};
use crate::control::{ControlError, ControlPlane, SetupNames, SetupSpec};

/// What the user asked `fleetsim setup` for.
#[derive(Debug, Clone)]
pub struct SetupRequest {
    pub prefix: Prefix,
    /// The folder under `certs_dir` this target's files go to (`aws`).
    pub target_name: String,
    pub certs_dir: PathBuf,
    pub access: AwsAccess,
    /// The account id for the policy documents; taken from the role's ARN
    /// when absent.
    pub account_id: Option<String>,
    /// An existing provisioning role; when absent, `<prefix>-provisioning`
    /// is used if it exists and created through IAM if not.
    pub role_arn: Option<String>,
    pub hook_arn: Option<String>,
    /// `host[:port]` to connect devices to instead of DescribeEndpoint's.
    pub data_endpoint: Option<String>,
    /// A root CA file to trust instead of Amazon Root CA 1 (the emulator's).
    pub root_ca: Option<PathBuf>,
    pub policies_dir: Option<PathBuf>,
}

impl SetupRequest {
    /// The folder this target's files live in.
    pub fn target_dir(&self) -> PathBuf {
        self.certs_dir.join(&self.target_name)
    }
}

/// The plan, and what was learned while making it.
#[derive(Debug, Clone)]
pub struct SetupPlan {
    pub plan: Plan,
    region: String,
    role: RolePlan,
    create_claim_policy: bool,
    create_device_policy: bool,
    create_template: bool,
    /// The claim identity of an earlier setup that is still active.
    kept_claim: Option<TargetConfig>,
    root_pem: String,
}

/// Where the provisioning role comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RolePlan {
    /// The user named it with `--role-arn`.
    Given(String),
    /// `<prefix>-provisioning` exists; `ours` when setup created it.
    Existing {
        arn: String,
        ours: bool,
    },
    Create,
}

/// Stands in for the account while the documents are checked during
/// planning: the real one may only be known once the role exists.
const PLANNING_ACCOUNT: &str = "000000000000";

/// Reads the account and the target folder and says what `setup` would do.
/// `iam` is `None` when IAM is out of reach (an endpoint override): the
/// role must then be given.
pub async fn plan_setup(
    request: &SetupRequest,
    control: &ControlPlane,
    iam: Option<&ProvisioningRole>,
    region: &str,
) -> Result<SetupPlan, TargetError> {
    spec(
        request,
        PLANNING_ACCOUNT,
        region,
        "arn:aws:iam::000000000000:role/planning",
    )?;
    let mut plan = Plan::default();
    let role = plan_role(request, iam).await?;
    plan.changes.push(match &role {
        RolePlan::Given(arn) => Change::Keep(format!("provisioning role {arn} (given)")),
        RolePlan::Existing { arn, .. } => Change::Keep(format!("provisioning role {arn}")),
        RolePlan::Create => Change::Create(format!(
            "IAM role {} with AWSIoTThingsRegistration",
            request.prefix.role()
        )),
    });
    let prefix = &request.prefix;
    let create_claim_policy = !policy_exists(control, &prefix.claim_policy(), &mut plan).await?;
    let create_device_policy = !policy_exists(control, &prefix.device_policy(), &mut plan).await?;
    let create_template = !template_exists(control, &prefix.template(), &mut plan).await?;
    let kept_claim = kept_claim(request, control).await?;
    plan.changes.push(match &kept_claim {
        Some(config) => Change::Keep(format!(
            "claim certificate {} (active)",
            config.claim_certificate_id
        )),
        None => Change::Create("claim certificate and key (CreateKeysAndCertificate)".into()),
    });
    let root_pem = root_pem(request)?;
    let root_file = request.target_dir().join(ROOT_CA_FILE);
    plan.changes
        .push(if holds(&root_file, root_pem.as_bytes()) {
            Change::Keep(format!("root CA {}", root_file.display()))
        } else {
            Change::Create(format!("root CA {}", root_file.display()))
        });
    let config_file = request.target_dir().join(TARGET_FILE);
    plan.changes.push(match (&kept_claim, plan.is_empty()) {
        (Some(_), true) => Change::Keep(format!("target description {}", config_file.display())),
        _ => Change::Create(format!("target description {}", config_file.display())),
    });
    Ok(SetupPlan {
        plan,
        region: region.to_owned(),
        role,
        create_claim_policy,
        create_device_policy,
        create_template,
        kept_claim,
        root_pem,
    })
}

/// Carries out a plan made by [`plan_setup`] and returns the target's
/// description as written.
pub async fn setup(
    request: &SetupRequest,
    control: &ControlPlane,
    iam: Option<&ProvisioningRole>,
    planned: &SetupPlan,
) -> Result<TargetConfig, TargetError> {
    let (role_arn, role_created) = ensure_role(request, iam, &planned.role).await?;
    let account_id = match &request.account_id {
        Some(account) => account.clone(),
        None => account_of(&role_arn)?,
    };
    let spec = spec(request, &account_id, &planned.region, &role_arn)?;
    let names = &spec.names;
    let files = &spec.files;
    if planned.create_claim_policy {
        control
            .ensure_policy(&names.claim_policy, &files.claim_policy)
            .await?;
    }
    if planned.create_device_policy {
        control
            .ensure_policy(&names.device_policy, &files.device_policy)
            .await?;
    }
    if planned.create_template {
        create_template(control, &spec, request.hook_arn.as_deref(), role_created).await?;
    }
    let dir = absolute(&request.target_dir())?;
    let (claim_id, claim_cert, claim_key) = match &planned.kept_claim {
        Some(kept) => {
            if planned.create_claim_policy {
                // The kept certificate lost its policy with the old one.
                let arn = control
                    .certificate_arn_of(&kept.claim_certificate_id)
                    .await?;
                control.attach_policy(&names.claim_policy, &arn).await?;
            }
            (
                kept.claim_certificate_id.clone(),
                kept.claim_certificate.clone(),
                kept.claim_private_key.clone(),
            )
        }
        None => create_claim(control, &names.claim_policy, &dir).await?,
    };
    let data_endpoint = match &request.data_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => control.data_endpoint().await?,
    };
    let root_ca = dir.join(ROOT_CA_FILE);
    write_if_changed(&root_ca, planned.root_pem.as_bytes())?;
    let config = TargetConfig {
        version: TargetConfig::version(),
        prefix: request.prefix.to_string(),
        region: names.region.clone(),
        account_id: names.account_id.clone(),
        profile: request.access.profile.clone(),
        endpoint_url: request.access.endpoint_url.clone(),
        data_endpoint,
        root_ca,
        claim_certificate: claim_cert,
        claim_private_key: claim_key,
        claim_certificate_id: claim_id,
        claim_policy: names.claim_policy.clone(),
        device_policy: names.device_policy.clone(),
        template: names.template.clone(),
        provisioning_role_arn: role_arn,
        role_created: role_created || matches!(planned.role, RolePlan::Existing { ours: true, .. }),
        pre_provisioning_hook_arn: request.hook_arn.clone(),
    };
    write_if_changed(&dir.join(TARGET_FILE), &config.to_json())?;
    Ok(config)
}

async fn plan_role(
    request: &SetupRequest,
    iam: Option<&ProvisioningRole>,
) -> Result<RolePlan, TargetError> {
    if let Some(arn) = &request.role_arn {
        return Ok(RolePlan::Given(arn.clone()));
    }
    let Some(iam) = iam else {
        return Err(TargetError::Invalid(format!(
            "no provisioning role: with --endpoint-url IAM is not called, so pass --role-arn \
             (a role that trusts iot.amazonaws.com and has AWSIoTThingsRegistration, for \
             example {})",
            request.prefix.role()
        )));
    };
    Ok(match iam.find(&request.prefix).await? {
        Some(found) => RolePlan::Existing {
            arn: found.arn,
            ours: found.ours,
        },
        None => RolePlan::Create,
    })
}

/// The role's ARN, and whether it was created just now.
async fn ensure_role(
    request: &SetupRequest,
    iam: Option<&ProvisioningRole>,
    role: &RolePlan,
) -> Result<(String, bool), TargetError> {
    match (role, iam) {
        (RolePlan::Given(arn), _) | (RolePlan::Existing { arn, .. }, _) => Ok((arn.clone(), false)),
        (RolePlan::Create, Some(iam)) => Ok((iam.create(&request.prefix).await?, true)),
        (RolePlan::Create, None) => Err(TargetError::Invalid(
            "the plan creates a role but IAM is out of reach".into(),
        )),
    }
}

/// A role created seconds ago may not be assumable by IoT yet (IAM is
/// eventually consistent): the template is then refused as invalid, and
/// tried again for about half a minute.
async fn create_template(
    control: &ControlPlane,
    spec: &SetupSpec,
    hook_arn: Option<&str>,
    role_is_new: bool,
) -> Result<(), TargetError> {
    let attempts = if role_is_new {
        ROLE_PROPAGATION_ATTEMPTS
    } else {
        1
    };
    let mut wait = ROLE_PROPAGATION_WAIT;
    for attempt in 1..=attempts {
        match control.create_template(spec, hook_arn).await {
            Err(ControlError::Refused { code, .. })
                if code == "InvalidRequestException" && attempt < attempts =>
            {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return Ok(other?),
        }
    }
    Ok(())
}

const ROLE_PROPAGATION_ATTEMPTS: u32 = 5;
const ROLE_PROPAGATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `arn:aws:iam::<account>:role/<name>` gives its account.
fn account_of(role_arn: &str) -> Result<String, TargetError> {
    let account = role_arn.split(':').nth(4).unwrap_or_default();
    if account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()) {
        return Ok(account.to_owned());
    }
    Err(TargetError::Invalid(format!(
        "role ARN {role_arn}: no 12-digit account id in it; pass --account"
    )))
}

fn spec(
    request: &SetupRequest,
    account_id: &str,
    region: &str,
    role_arn: &str,
) -> Result<SetupSpec, TargetError> {
    let prefix = &request.prefix;
    let names = SetupNames {
        prefix: prefix.to_string(),
        account_id: account_id.to_owned(),
        region: region.to_owned(),
        claim_policy: prefix.claim_policy(),
        device_policy: prefix.device_policy(),
        template: prefix.template(),
        provisioning_role_arn: role_arn.to_owned(),
    };
    let spec = match &request.policies_dir {
        Some(dir) => SetupSpec::load(names, dir),
        None => SetupSpec::builtin(names),
    };
    Ok(spec?)
}

/// Whether the policy exists; adds the plan line for it. An existing policy
/// is kept even when its document differs from the file (the plan says so):
/// replacing it would change what every deployed certificate may do.
async fn policy_exists(
    control: &ControlPlane,
    name: &str,
    plan: &mut Plan,
) -> Result<bool, TargetError> {
    let result = control.client().get_policy().policy_name(name).send().await;
    match result.map_err(|e| ControlError::from_sdk("GetPolicy", name, e)) {
        Ok(_) => {
            plan.changes.push(Change::Keep(format!("policy {name}")));
            Ok(true)
        }
        Err(ControlError::NotFound { .. }) => {
            plan.changes.push(Change::Create(format!("policy {name}")));
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

async fn template_exists(
    control: &ControlPlane,
    name: &str,
    plan: &mut Plan,
) -> Result<bool, TargetError> {
    let result = control
        .client()
        .describe_provisioning_template()
        .template_name(name)
        .send()
        .await;
    match result.map_err(|e| ControlError::from_sdk("DescribeProvisioningTemplate", name, e)) {
        Ok(_) => {
            plan.changes
                .push(Change::Keep(format!("provisioning template {name}")));
            Ok(true)
        }
        Err(ControlError::NotFound { .. }) => {
            plan.changes
                .push(Change::Create(format!("provisioning template {name}")));
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// The claim certificate of an earlier setup, when its files are still
/// there and the certificate is still active.
async fn kept_claim(
    request: &SetupRequest,
    control: &ControlPlane,
) -> Result<Option<TargetConfig>, TargetError> {
    let Ok(previous) = TargetConfig::load(&request.target_dir().join(TARGET_FILE)) else {
        return Ok(None);
    };
    if !previous.claim_certificate.exists() || !previous.claim_private_key.exists() {
        return Ok(None);
    }
    match control
        .describe_certificate(&previous.claim_certificate_id)
        .await
    {
        Ok(summary) if summary.status == "ACTIVE" => Ok(Some(previous)),
        Ok(_) | Err(ControlError::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The root CA devices trust: the user's file, or the shipped Amazon Root
/// CA 1 after checking its fingerprint.
fn root_pem(request: &SetupRequest) -> Result<String, TargetError> {
    match &request.root_ca {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| TargetError::file(path, format!("cannot read the root CA: {e}"))),
        None => {
            super::verify_amazon_root_ca(AMAZON_ROOT_CA_1)?;
            Ok(AMAZON_ROOT_CA_1.to_owned())
        }
    }
}

/// Issues the claim certificate, writes its files, then attaches the claim
/// policy: a failure after the certificate exists still leaves its files,
/// so that cleanup and the next setup know about it.
async fn create_claim(
    control: &ControlPlane,
    claim_policy: &str,
    dir: &Path,
) -> Result<(String, PathBuf, PathBuf), TargetError> {
    let (claim, arn) = control.create_keys_and_certificate().await?;
    let key = dir.join(CLAIM_KEY_FILE);
    let certificate = dir.join(CLAIM_CERTIFICATE_FILE);
    write_private(&key, claim.claim_private_key_pem.as_bytes())?;
    write_private(&certificate, claim.claim_certificate_pem.as_bytes())?;
    control.attach_policy(claim_policy, &arn).await?;
    tracing::info!(claim_certificate_id = %claim.claim_certificate_id, "claim certificate created");
    Ok((claim.claim_certificate_id, certificate, key))
}

fn write_if_changed(path: &Path, contents: &[u8]) -> Result<(), TargetError> {
    if holds(path, contents) {
        return Ok(());
    }
    write_private(path, contents)
}

/// Creates the folder (0700) and names it absolutely, so that the target
/// description works from any working directory.
fn absolute(dir: &Path) -> Result<PathBuf, TargetError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TargetError::file(dir, format!("cannot create the folder: {e}")))?;
    std::fs::canonicalize(dir).map_err(|e| TargetError::file(dir, e))
}
