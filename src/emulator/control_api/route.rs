//! Maps a request's method and raw path onto one control-plane operation.
//!
//! Matching happens on the still-encoded path and labels are decoded only
//! afterwards, because the SDK encodes `/` inside a label as `%2F`: decoding
//! first would split an ARN into extra path segments.

use axum::http::Method;
use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// The operations this emulator serves, with their decoded path labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Operation {
    CreatePolicy { policy: String },
    GetPolicy { policy: String },
    AttachPolicy { policy: String },
    DetachPolicy { policy: String },
    CreateProvisioningTemplate,
    DescribeProvisioningTemplate { template: String },
    CreateCertificateFromCsr,
    DescribeCertificate { certificate_id: String },
    UpdateCertificate { certificate_id: String },
    DescribeThing { thing: String },
    AttachThingPrincipal { thing: String },
    DetachThingPrincipal { thing: String },
    ListThingPrincipals { thing: String },
    DescribeEndpoint,
    DeletePolicy { policy: String },
    ListAttachedPolicies { target: String },
    CreateKeysAndCertificate,
    DeleteCertificate { certificate_id: String },
    ListCertificates,
    DeleteThing { thing: String },
    ListThings,
    UpdateProvisioningTemplate { template: String },
    DeleteProvisioningTemplate { template: String },
    CreateThingType { thing_type: String },
    DescribeThingType { thing_type: String },
    ListThingTypes,
    DeprecateThingType { thing_type: String },
    DeleteThingType { thing_type: String },
    CreateThingGroup { group: String },
    DescribeThingGroup { group: String },
    ListThingGroups,
    DeleteThingGroup { group: String },
    AddThingToThingGroup,
    RemoveThingFromThingGroup,
    ListThingsInThingGroup { group: String },
    ListThingGroupsForThing { thing: String },
    ListTargetsForPolicy { policy: String },
}

impl Operation {
    /// Finds the operation for `method` and the raw (percent-encoded) path.
    pub(super) fn route(method: &Method, raw_path: &str) -> Result<Operation, ApiError> {
        let segments: Vec<&str> = raw_path.trim_start_matches('/').split('/').collect();
        let label = |index: usize| decode_label(segments[index]);
        let operation = match (method.as_str(), segments.as_slice()) {
            ("POST", ["policies", _]) => Operation::CreatePolicy { policy: label(1)? },
            ("GET", ["policies", _]) => Operation::GetPolicy { policy: label(1)? },
            ("PUT", ["target-policies", _]) => Operation::AttachPolicy { policy: label(1)? },
            ("POST", ["target-policies", _]) => Operation::DetachPolicy { policy: label(1)? },
            ("POST", ["provisioning-templates"]) => Operation::CreateProvisioningTemplate,
            ("GET", ["provisioning-templates", _]) => Operation::DescribeProvisioningTemplate {
                template: label(1)?,
            },
            ("POST", ["certificates"]) => Operation::CreateCertificateFromCsr,
            ("GET", ["certificates", _]) => Operation::DescribeCertificate {
                certificate_id: label(1)?,
            },
            ("PUT", ["certificates", _]) => Operation::UpdateCertificate {
                certificate_id: label(1)?,
            },
            ("GET", ["things", _]) => Operation::DescribeThing { thing: label(1)? },
            ("PUT", ["things", _, "principals"]) => {
                Operation::AttachThingPrincipal { thing: label(1)? }
            }
            ("DELETE", ["things", _, "principals"]) => {
                Operation::DetachThingPrincipal { thing: label(1)? }
            }
            ("GET", ["things", _, "principals"]) => {
                Operation::ListThingPrincipals { thing: label(1)? }
            }
            ("GET", ["endpoint"]) => Operation::DescribeEndpoint,
            ("DELETE", ["policies", _]) => Operation::DeletePolicy { policy: label(1)? },
            ("POST", ["attached-policies", _]) => {
                Operation::ListAttachedPolicies { target: label(1)? }
            }
            ("POST", ["keys-and-certificate"]) => Operation::CreateKeysAndCertificate,
            ("DELETE", ["certificates", _]) => Operation::DeleteCertificate {
                certificate_id: label(1)?,
            },
            ("GET", ["certificates"]) => Operation::ListCertificates,
            ("DELETE", ["things", _]) => Operation::DeleteThing { thing: label(1)? },
            ("GET", ["things"]) => Operation::ListThings,
            ("PATCH", ["provisioning-templates", _]) => Operation::UpdateProvisioningTemplate {
                template: label(1)?,
            },
            ("DELETE", ["provisioning-templates", _]) => Operation::DeleteProvisioningTemplate {
                template: label(1)?,
            },
            ("POST", ["thing-types", _]) => Operation::CreateThingType {
                thing_type: label(1)?,
            },
            ("GET", ["thing-types", _]) => Operation::DescribeThingType {
                thing_type: label(1)?,
            },
            ("GET", ["thing-types"]) => Operation::ListThingTypes,
            ("POST", ["thing-types", _, "deprecate"]) => Operation::DeprecateThingType {
                thing_type: label(1)?,
            },
            ("DELETE", ["thing-types", _]) => Operation::DeleteThingType {
                thing_type: label(1)?,
            },
            ("PUT", ["thing-groups", "addThingToThingGroup"]) => Operation::AddThingToThingGroup,
            ("PUT", ["thing-groups", "removeThingFromThingGroup"]) => {
                Operation::RemoveThingFromThingGroup
            }
            ("POST", ["thing-groups", _]) => Operation::CreateThingGroup { group: label(1)? },
            ("GET", ["thing-groups", _]) => Operation::DescribeThingGroup { group: label(1)? },
            ("GET", ["thing-groups"]) => Operation::ListThingGroups,
            ("DELETE", ["thing-groups", _]) => Operation::DeleteThingGroup { group: label(1)? },
            ("GET", ["thing-groups", _, "things"]) => {
                Operation::ListThingsInThingGroup { group: label(1)? }
            }
            ("GET", ["things", _, "thing-groups"]) => {
                Operation::ListThingGroupsForThing { thing: label(1)? }
            }
            ("POST", ["policy-targets", _]) => {
                Operation::ListTargetsForPolicy { policy: label(1)? }
            }
            _ => return Err(unknown_operation(method, raw_path)),
        };
        Ok(operation)
    }

    /// AWS's operation name, used as the `operation` metric label.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Operation::CreatePolicy { .. } => "CreatePolicy",
            Operation::GetPolicy { .. } => "GetPolicy",
            Operation::AttachPolicy { .. } => "AttachPolicy",
            Operation::DetachPolicy { .. } => "DetachPolicy",
            Operation::CreateProvisioningTemplate => "CreateProvisioningTemplate",
            Operation::DescribeProvisioningTemplate { .. } => "DescribeProvisioningTemplate",
            Operation::CreateCertificateFromCsr => "CreateCertificateFromCsr",
            Operation::DescribeCertificate { .. } => "DescribeCertificate",
            Operation::UpdateCertificate { .. } => "UpdateCertificate",
            Operation::DescribeThing { .. } => "DescribeThing",
            Operation::AttachThingPrincipal { .. } => "AttachThingPrincipal",
            Operation::DetachThingPrincipal { .. } => "DetachThingPrincipal",
            Operation::ListThingPrincipals { .. } => "ListThingPrincipals",
            Operation::DescribeEndpoint => "DescribeEndpoint",
            Operation::DeletePolicy { .. } => "DeletePolicy",
            Operation::ListAttachedPolicies { .. } => "ListAttachedPolicies",
            Operation::CreateKeysAndCertificate => "CreateKeysAndCertificate",
            Operation::DeleteCertificate { .. } => "DeleteCertificate",
            Operation::ListCertificates => "ListCertificates",
            Operation::DeleteThing { .. } => "DeleteThing",
            Operation::ListThings => "ListThings",
            Operation::UpdateProvisioningTemplate { .. } => "UpdateProvisioningTemplate",
            Operation::DeleteProvisioningTemplate { .. } => "DeleteProvisioningTemplate",
            Operation::CreateThingType { .. } => "CreateThingType",
            Operation::DescribeThingType { .. } => "DescribeThingType",
            Operation::ListThingTypes => "ListThingTypes",
            Operation::DeprecateThingType { .. } => "DeprecateThingType",
            Operation::DeleteThingType { .. } => "DeleteThingType",
            Operation::CreateThingGroup { .. } => "CreateThingGroup",
            Operation::DescribeThingGroup { .. } => "DescribeThingGroup",
            Operation::ListThingGroups => "ListThingGroups",
            Operation::DeleteThingGroup { .. } => "DeleteThingGroup",
            Operation::AddThingToThingGroup => "AddThingToThingGroup",
            Operation::RemoveThingFromThingGroup => "RemoveThingFromThingGroup",
            Operation::ListThingsInThingGroup { .. } => "ListThingsInThingGroup",
            Operation::ListThingGroupsForThing { .. } => "ListThingGroupsForThing",
            Operation::ListTargetsForPolicy { .. } => "ListTargetsForPolicy",
        }
    }
}

fn decode_label(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidRequest(format!("path label {raw} is not valid UTF-8")))?;
    if decoded.is_empty() {
        return Err(ApiError::InvalidRequest("empty path label".into()));
    }
    Ok(decoded.into_owned())
}

fn unknown_operation(method: &Method, raw_path: &str) -> ApiError {
    ApiError::UnknownOperation(format!(
        "the emulator serves no operation at {method} {raw_path}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_decoded_after_matching() {
        let operation = Operation::route(&Method::GET, "/things/fleet%3Adevice%2F1/principals");

        assert_eq!(
            operation,
            Ok(Operation::ListThingPrincipals {
                thing: "fleet:device/1".into()
            })
        );
    }

    #[test]
    fn detach_policy_is_a_post_on_target_policies() {
        let operation = Operation::route(&Method::POST, "/target-policies/claim");

        assert_eq!(
            operation,
            Ok(Operation::DetachPolicy {
                policy: "claim".into()
            })
        );
    }

    #[test]
    fn unserved_paths_are_unknown_operations() {
        let error = Operation::route(&Method::DELETE, "/endpoint").unwrap_err();

        assert_eq!(error.code(), "UnknownOperationException");
    }

    #[test]
    fn an_empty_label_is_an_invalid_request() {
        let error = Operation::route(&Method::GET, "/things/").unwrap_err();

        assert_eq!(error.code(), "InvalidRequestException");
    }
}
