//! The IAM role AWS IoT assumes to provision things from the template:
//! `<prefix>-provisioning`, trusting `iot.amazonaws.com`, with AWS's managed
//! policy `AWSIoTThingsRegistration` attached, and tagged with the prefix so
//! that cleanup deletes only a role fleetsim created.

use aws_sdk_iam::Client;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::Tag;

use super::{Prefix, TargetError};

/// The tag that marks a role as created by `fleetsim setup` for a prefix.
pub const PREFIX_TAG: &str = "fleetsim:prefix";
/// AWS's managed policy for template provisioning, below `arn:<partition>:iam::aws:policy/`.
pub const THINGS_REGISTRATION_POLICY: &str = "service-role/AWSIoTThingsRegistration";
/// Lets AWS IoT, and only it, assume the role.
pub const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"iot.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;

/// A role that exists under the prefix's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRole {
    pub arn: String,
    /// Whether it carries this prefix's tag, i.e. fleetsim created it.
    pub ours: bool,
}

/// The provisioning role through `aws-sdk-iam`.
#[derive(Clone)]
pub struct ProvisioningRole {
    client: Client,
}

impl ProvisioningRole {
    pub fn new(client: Client) -> ProvisioningRole {
        ProvisioningRole { client }
    }

    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> ProvisioningRole {
        ProvisioningRole::new(Client::new(shared))
    }

    /// GetRole on `<prefix>-provisioning`; `None` when there is none.
    pub async fn find(&self, prefix: &Prefix) -> Result<Option<FoundRole>, TargetError> {
        let name = prefix.role();
        let result = self.client.get_role().role_name(&name).send().await;
        match result {
            Ok(output) => Ok(output.role().map(|role| FoundRole {
                arn: role.arn().to_owned(),
                ours: role
                    .tags()
                    .iter()
                    .any(|tag| tag.key() == PREFIX_TAG && tag.value() == prefix.as_str()),
            })),
            Err(error) if is_no_such_entity(&error) => Ok(None),
            Err(error) => Err(iam_error("GetRole", &name, error)),
        }
    }

    /// CreateRole (tagged with the prefix), then AttachRolePolicy with
    /// AWSIoTThingsRegistration in the role's partition. Returns its ARN.
    pub async fn create(&self, prefix: &Prefix) -> Result<String, TargetError> {
        let name = prefix.role();
        let tag = Tag::builder()
            .key(PREFIX_TAG)
            .value(prefix.as_str())
            .build()
            .expect("invariant: key and value are set");
        let output = self
            .client
            .create_role()
            .role_name(&name)
            .assume_role_policy_document(TRUST_POLICY)
            .description("AWS IoT provisions fleetsim's devices with this role")
            .tags(tag)
            .send()
            .await
            .map_err(|e| iam_error("CreateRole", &name, e))?;
        let arn = output
            .role()
            .map(|role| role.arn().to_owned())
            .ok_or_else(|| TargetError::Iam {
                operation: "CreateRole",
                resource: name.clone(),
                message: "the answer names no role".into(),
            })?;
        self.client
            .attach_role_policy()
            .role_name(&name)
            .policy_arn(managed_policy_arn(&arn))
            .send()
            .await
            .map_err(|e| iam_error("AttachRolePolicy", &name, e))?;
        tracing::info!(role = %arn, "provisioning role created");
        Ok(arn)
    }

    /// DetachRolePolicy, then DeleteRole; a role or attachment already gone
    /// is fine.
    pub async fn delete(&self, prefix: &Prefix, arn: &str) -> Result<(), TargetError> {
        let name = prefix.role();
        let detached = self
            .client
            .detach_role_policy()
            .role_name(&name)
            .policy_arn(managed_policy_arn(arn))
            .send()
            .await;
        match detached {
            Err(error) if !is_no_such_entity(&error) => {
                return Err(iam_error("DetachRolePolicy", &name, error));
            }
            _ => {}
        }
        match self.client.delete_role().role_name(&name).send().await {
            Err(error) if !is_no_such_entity(&error) => Err(iam_error("DeleteRole", &name, error)),
            _ => Ok(()),
        }
    }
}

/// `arn:<partition>:iam::aws:policy/service-role/AWSIoTThingsRegistration`,
/// in the partition of `role_arn` (aws, aws-cn, aws-us-gov).
pub fn managed_policy_arn(role_arn: &str) -> String {
    let partition = role_arn.split(':').nth(1).unwrap_or("aws");
    format!("arn:{partition}:iam::aws:policy/{THINGS_REGISTRATION_POLICY}")
}

fn is_no_such_entity<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    matches!(error, SdkError::ServiceError(context) if context.err().code() == Some("NoSuchEntity"))
}

fn iam_error<E, R>(operation: &'static str, resource: &str, error: SdkError<E, R>) -> TargetError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let message = match &error {
        SdkError::ServiceError(context) => format!(
            "refused by IAM with {}: {}",
            context.err().code().unwrap_or("UnknownError"),
            context.err().message().unwrap_or("no message")
        ),
        other => format!("could not reach IAM: {}", root_cause(other)),
    };
    TargetError::Iam {
        operation,
        resource: resource.to_owned(),
        message,
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
