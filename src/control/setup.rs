//! `fleetsim setup`: the resources a fleet needs before its first device
//! arrives — claim and device policies, the provisioning template, and a
//! claim certificate with the claim policy attached.
//!
//! Re-running is safe: resources that already exist are kept as they are,
//! and each run issues a fresh claim certificate.

use std::collections::BTreeMap;
use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::ControlPlane;
use super::error::ControlError;
use super::policy_set::PolicySet;

/// The names and account that `setup` creates resources under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupNames {
    /// What every thing name starts with (`<prefix>-<serial>`), so that
    /// cleanup finds the things a run created.
    pub prefix: String,
    pub account_id: String,
    pub region: String,
    pub claim_policy: String,
    pub device_policy: String,
    pub template: String,
    /// The IAM role IoT assumes to provision things from the template.
    pub provisioning_role_arn: String,
}

impl SetupNames {
    /// The values of the `{{...}}` placeholders in the policy files.
    pub fn placeholders(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("prefix".to_owned(), self.prefix.clone()),
            ("region".to_owned(), self.region.clone()),
            ("account".to_owned(), self.account_id.clone()),
            ("template".to_owned(), self.template.clone()),
            ("claim_policy".to_owned(), self.claim_policy.clone()),
            ("device_policy".to_owned(), self.device_policy.clone()),
        ])
    }
}

/// Everything `setup` sends: the names and the rendered documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSpec {
    pub names: SetupNames,
    pub files: PolicySet,
}

impl SetupSpec {
    /// Renders the repository's policy files in `dir` for `names`.
    pub fn load(names: SetupNames, dir: &Path) -> Result<SetupSpec, ControlError> {
        let files = PolicySet::load(dir, &names.placeholders())?;
        Ok(SetupSpec { names, files })
    }

    /// Renders the policy files compiled into the binary for `names`.
    pub fn builtin(names: SetupNames) -> Result<SetupSpec, ControlError> {
        let files = PolicySet::builtin(&names.placeholders())?;
        Ok(SetupSpec { names, files })
    }
}

/// The claim identity the fleet provisions with, and where to connect.
#[derive(Clone)]
pub struct SetupOutput {
    pub claim_certificate_id: String,
    pub claim_certificate_pem: String,
    pub claim_private_key_pem: String,
    /// The `iot:Data-ATS` endpoint address.
    pub endpoint: String,
}

impl std::fmt::Debug for SetupOutput {
    // The private key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupOutput")
            .field("claim_certificate_id", &self.claim_certificate_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The hook event version AWS documents for pre-provisioning Lambdas.
const HOOK_PAYLOAD_VERSION: &str = "2020-04-01";

struct ClaimCertificate {
    id: String,
    arn: String,
    pem: String,
}

impl ControlPlane {
    /// Creates (or keeps) the policies and template, then issues a claim
    /// certificate with the claim policy attached.
    pub async fn setup(&self, spec: &SetupSpec) -> Result<SetupOutput, ControlError> {
        let names = &spec.names;
        self.ensure_policy(&names.claim_policy, &spec.files.claim_policy)
            .await?;
        self.ensure_policy(&names.device_policy, &spec.files.device_policy)
            .await?;
        self.ensure_template(spec).await?;

        let (key_pem, csr_pem) = claim_key_and_csr()?;
        let claim = self.create_claim_certificate(&csr_pem).await?;
        self.attach_policy(&names.claim_policy, &claim.arn).await?;

        let endpoint = self.data_endpoint().await?;
        tracing::info!(claim_certificate_id = %claim.id, %endpoint, "setup complete");
        Ok(SetupOutput {
            claim_certificate_id: claim.id,
            claim_certificate_pem: claim.pem,
            claim_private_key_pem: key_pem,
            endpoint,
        })
    }

    /// The drill for a leaked claim certificate: a new claim certificate
    /// with `claim_policy` attached, then the old one revoked (which closes
    /// every connection still using it).
    pub async fn replace_claim_certificate(
        &self,
        claim_policy: &str,
        old_certificate_id: &str,
    ) -> Result<SetupOutput, ControlError> {
        let (key_pem, csr_pem) = claim_key_and_csr()?;
        let claim = self.create_claim_certificate(&csr_pem).await?;
        self.attach_policy(claim_policy, &claim.arn).await?;
        self.client
            .update_certificate()
            .certificate_id(old_certificate_id)
            .new_status(aws_sdk_iot::types::CertificateStatus::Revoked)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk("UpdateCertificate", old_certificate_id, e))?;
        tracing::info!(old = old_certificate_id, new = %claim.id, "claim certificate replaced");
        Ok(SetupOutput {
            claim_certificate_id: claim.id,
            claim_certificate_pem: claim.pem,
            claim_private_key_pem: key_pem,
            endpoint: self.data_endpoint().await?,
        })
    }

    pub(crate) async fn ensure_policy(
        &self,
        name: &str,
        document: &str,
    ) -> Result<(), ControlError> {
        let result = self
            .client
            .create_policy()
            .policy_name(name)
            .policy_document(document)
            .send()
            .await;
        match result.map_err(|e| ControlError::from_sdk("CreatePolicy", name, e)) {
            Ok(_) => Ok(()),
            Err(ControlError::AlreadyExists { .. }) => {
                tracing::info!(policy = name, "policy already exists; kept as it is");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    async fn ensure_template(&self, spec: &SetupSpec) -> Result<(), ControlError> {
        let name = &spec.names.template;
        match self.create_template(spec, None).await {
            Ok(_) => Ok(()),
            Err(ControlError::AlreadyExists { .. }) => {
                tracing::info!(template = %name, "template already exists; kept as it is");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// CreateProvisioningTemplate, enabled, with an optional
    /// pre-provisioning hook Lambda.
    pub(crate) async fn create_template(
        &self,
        spec: &SetupSpec,
        hook_arn: Option<&str>,
    ) -> Result<(), ControlError> {
        let name = &spec.names.template;
        let hook = hook_arn.map(|arn| {
            aws_sdk_iot::types::ProvisioningHook::builder()
                .target_arn(arn)
                .payload_version(HOOK_PAYLOAD_VERSION)
                .build()
                .expect("invariant: the hook's only required field is set")
        });
        self.client
            .create_provisioning_template()
            .template_name(name)
            .description("fleetsim fleet provisioning by claim")
            .template_body(&spec.files.provisioning_template)
            .provisioning_role_arn(&spec.names.provisioning_role_arn)
            .enabled(true)
            .set_pre_provisioning_hook(hook)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk("CreateProvisioningTemplate", name, e))?;
        Ok(())
    }

    /// CreateKeysAndCertificate, active: AWS makes the claim key, as the
    /// console's claim-certificate flow does.
    pub(crate) async fn create_keys_and_certificate(
        &self,
    ) -> Result<(SetupOutput, String), ControlError> {
        const OPERATION: &str = "CreateKeysAndCertificate";
        let output = self
            .client
            .create_keys_and_certificate()
            .set_as_active(true)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk(OPERATION, "claim certificate", e))?;
        let missing = |field: &str| claim_field_missing(OPERATION, field);
        let key = output
            .key_pair
            .and_then(|pair| pair.private_key)
            .ok_or_else(|| missing("keyPair.PrivateKey"))?;
        let claim = SetupOutput {
            claim_certificate_id: output
                .certificate_id
                .ok_or_else(|| missing("certificateId"))?,
            claim_certificate_pem: output
                .certificate_pem
                .ok_or_else(|| missing("certificatePem"))?,
            claim_private_key_pem: key,
            endpoint: String::new(),
        };
        let arn = output
            .certificate_arn
            .ok_or_else(|| missing("certificateArn"))?;
        Ok((claim, arn))
    }

    async fn create_claim_certificate(
        &self,
        csr_pem: &str,
    ) -> Result<ClaimCertificate, ControlError> {
        const OPERATION: &str = "CreateCertificateFromCsr";
        let output = self
            .client
            .create_certificate_from_csr()
            .certificate_signing_request(csr_pem)
            .set_as_active(true)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk(OPERATION, "claim certificate", e))?;
        let missing = |field: &str| claim_field_missing(OPERATION, field);
        Ok(ClaimCertificate {
            id: output
                .certificate_id
                .ok_or_else(|| missing("certificateId"))?,
            arn: output
                .certificate_arn
                .ok_or_else(|| missing("certificateArn"))?,
            pem: output
                .certificate_pem
                .ok_or_else(|| missing("certificatePem"))?,
        })
    }

    pub(crate) async fn attach_policy(
        &self,
        policy: &str,
        certificate_arn: &str,
    ) -> Result<(), ControlError> {
        self.client
            .attach_policy()
            .policy_name(policy)
            .target(certificate_arn)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk("AttachPolicy", policy, e))?;
        Ok(())
    }

    pub(crate) async fn data_endpoint(&self) -> Result<String, ControlError> {
        const OPERATION: &str = "DescribeEndpoint";
        let output = self
            .client
            .describe_endpoint()
            .endpoint_type("iot:Data-ATS")
            .send()
            .await
            .map_err(|e| ControlError::from_sdk(OPERATION, "iot:Data-ATS", e))?;
        output
            .endpoint_address
            .ok_or_else(|| ControlError::Protocol {
                operation: OPERATION,
                resource: "iot:Data-ATS".to_owned(),
                cause: "endpointAddress missing from the answer".to_owned(),
            })
    }
}

/// A fresh EC P-256 key (one of the key types AWS accepts in a CSR) and a
/// CSR for it, both as PEM.
fn claim_key_and_csr() -> Result<(String, String), ControlError> {
    let fault = |e: rcgen::Error| ControlError::ClaimKey(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fault)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fault)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fleetsim claim");
    let csr = params.serialize_request(&key).map_err(fault)?;
    Ok((key.serialize_pem(), csr.pem().map_err(fault)?))
}

/// A claim-certificate answer without a field the service always sends.
fn claim_field_missing(operation: &'static str, field: &str) -> ControlError {
    ControlError::Protocol {
        operation,
        resource: "claim certificate".to_owned(),
        cause: format!("{field} missing from the answer"),
    }
}
