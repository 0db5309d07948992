//! `fleetsim setup`: reads what already exists under the prefix, plans what
//! is missing, and creates only that, in dependency order (role, policies,
//! template, claim certificate, files). Run twice, the second plan keeps
//! everything; after a failure half-way, the next run creates the rest.

use std::path::{Path, PathBuf};

use super::config::{
    CLAIM_CERTIFICATE_FILE, CLAIM_KEY_FILE, ROOT_CA_FILE, TARGET_FILE, holds, write_private,
};
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
    /// An existing provisioning role; when absent one is named after the
    /// prefix and must already exist.
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
    spec: SetupSpec,
    role_arn: String,
    create_claim_policy: bool,
    create_device_policy: bool,
    create_template: bool,
    /// The claim identity of an earlier setup that is still active.
    kept_claim: Option<TargetConfig>,
    root_pem: String,
}

/// Reads the account and the target folder and says what `setup` would do.
pub async fn plan_setup(
    request: &SetupRequest,
    control: &ControlPlane,
    region: &str,
) -> Result<SetupPlan, TargetError> {
    let role_arn = provisioning_role(request)?;
    let account_id = match &request.account_id {
        Some(account) => account.clone(),
        None => account_of(&role_arn)?,
    };
    let spec = spec(request, &account_id, region, &role_arn)?;
    let names = &spec.names;
    let mut plan = Plan::default();
    plan.changes
        .push(Change::Keep(format!("provisioning role {role_arn}")));
    let create_claim_policy = !policy_exists(control, &names.claim_policy, &mut plan).await?;
    let create_device_policy = !policy_exists(control, &names.device_policy, &mut plan).await?;
    let create_template = !template_exists(control, &names.template, &mut plan).await?;
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
        spec,
        role_arn,
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
    planned: &SetupPlan,
) -> Result<TargetConfig, TargetError> {
    let names = &planned.spec.names;
    let files = &planned.spec.files;
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
        control
            .create_template(&planned.spec, request.hook_arn.as_deref())
            .await?;
    }
    let dir = absolute(&request.target_dir())?;
    let (claim_id, claim_cert, claim_key) = match &planned.kept_claim {
        Some(kept) => (
            kept.claim_certificate_id.clone(),
            kept.claim_certificate.clone(),
            kept.claim_private_key.clone(),
        ),
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
        provisioning_role_arn: planned.role_arn.clone(),
        role_created: false,
        pre_provisioning_hook_arn: request.hook_arn.clone(),
    };
    write_if_changed(&dir.join(TARGET_FILE), &config.to_json())?;
    Ok(config)
}

fn provisioning_role(request: &SetupRequest) -> Result<String, TargetError> {
    request.role_arn.clone().ok_or_else(|| {
        TargetError::Invalid(format!(
            "no provisioning role: pass --role-arn with a role that trusts iot.amazonaws.com and \
             has AWSIoTThingsRegistration (for example {})",
            request.prefix.role()
        ))
    })
}

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
