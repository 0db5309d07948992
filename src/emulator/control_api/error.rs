//! The control plane's modeled errors and their restJson1 wire form.
//!
//! The SDK picks the error type from the `X-Amzn-ErrorType` header alone and
//! reads the text from the body's `message`, so every refusal goes through
//! [`ApiError::into_response`] to keep the two and the HTTP status in step.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::emulator::registry::RegistryError;

/// A refusal, named after the AWS IoT exception the real service would throw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{message}")]
    ResourceAlreadyExists {
        message: String,
        resource_id: String,
        resource_arn: String,
    },
    #[error("{0}")]
    MalformedPolicy(String),
    #[error("{0}")]
    CertificateState(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    DeleteConflict(String),
    #[error("{0}")]
    VersionConflict(String),
    #[error("{0}")]
    UnknownOperation(String),
    #[error("{0}")]
    InternalFailure(String),
    /// Over the configured rate for the operation (`--quota control_plane=…`).
    #[error("{0}")]
    Throttling(String),
}

impl ApiError {
    /// The exception name sent in `X-Amzn-ErrorType`.
    pub(super) fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "InvalidRequestException",
            ApiError::ResourceNotFound(_) => "ResourceNotFoundException",
            ApiError::ResourceAlreadyExists { .. } => "ResourceAlreadyExistsException",
            ApiError::MalformedPolicy(_) => "MalformedPolicyException",
            ApiError::CertificateState(_) => "CertificateStateException",
            ApiError::LimitExceeded(_) => "LimitExceededException",
            ApiError::DeleteConflict(_) => "DeleteConflictException",
            ApiError::VersionConflict(_) => "VersionConflictException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::InternalFailure(_) => "InternalFailureException",
            ApiError::Throttling(_) => "ThrottlingException",
        }
    }

    /// The bounded `outcome` label of the request counter.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::ResourceNotFound(_) => "resource_not_found",
            ApiError::ResourceAlreadyExists { .. } => "resource_already_exists",
            ApiError::MalformedPolicy(_) => "malformed_policy",
            ApiError::CertificateState(_) => "certificate_state",
            ApiError::LimitExceeded(_) => "limit_exceeded",
            ApiError::DeleteConflict(_) => "delete_conflict",
            ApiError::VersionConflict(_) => "version_conflict",
            ApiError::UnknownOperation(_) => "unknown_operation",
            ApiError::InternalFailure(_) => "internal_failure",
            ApiError::Throttling(_) => "throttled",
        }
    }

    /// Completes an "already exists" refusal with the ARN of the resource
    /// that is in the way; the registry knows only its name.
    pub(super) fn with_resource_arn(self, arn: String) -> ApiError {
        match self {
            ApiError::ResourceAlreadyExists {
                message,
                resource_id,
                ..
            } => ApiError::ResourceAlreadyExists {
                message,
                resource_id,
                resource_arn: arn,
            },
            other => other,
        }
    }

    /// The status codes of the IoT Smithy model's `httpError` traits.
    fn status(&self) -> StatusCode {
        match self {
            // ThrottlingException is a 400 in the IoT model, not a 429.
            ApiError::InvalidRequest(_)
            | ApiError::MalformedPolicy(_)
            | ApiError::Throttling(_) => StatusCode::BAD_REQUEST,
            ApiError::ResourceNotFound(_) | ApiError::UnknownOperation(_) => StatusCode::NOT_FOUND,
            ApiError::CertificateState(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::ResourceAlreadyExists { .. }
            | ApiError::DeleteConflict(_)
            | ApiError::VersionConflict(_) => StatusCode::CONFLICT,
            ApiError::LimitExceeded(_) => StatusCode::GONE,
            ApiError::InternalFailure(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            ApiError::ResourceAlreadyExists {
                resource_id,
                resource_arn,
                ..
            } => json!({
                "message": self.to_string(),
                "resourceId": resource_id,
                "resourceArn": resource_arn,
            }),
            _ => json!({ "message": self.to_string() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        response
            .headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.code()));
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let message = error.to_string();
        match error {
            RegistryError::NotFound { .. } => ApiError::ResourceNotFound(message),
            RegistryError::AlreadyExists { id, .. } => ApiError::ResourceAlreadyExists {
                message,
                resource_id: id,
                resource_arn: String::new(),
            },
            RegistryError::InvalidTransition { .. } => ApiError::CertificateState(message),
            RegistryError::MalformedPolicy { .. } => ApiError::MalformedPolicy(message),
            RegistryError::PolicyLimit { .. } => ApiError::LimitExceeded(message),
            RegistryError::DeleteActive { .. } => ApiError::CertificateState(message),
            // AWS refuses to delete a thing with principals as an invalid request.
            RegistryError::DeleteConflict { kind: "thing", .. } => {
                ApiError::InvalidRequest(message)
            }
            RegistryError::DeleteConflict { .. } => ApiError::DeleteConflict(message),
            RegistryError::VersionConflict { .. } => ApiError::VersionConflict(message),
            RegistryError::Invalid { .. } => ApiError::InvalidRequest(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_carries_code_header_status_and_message() {
        let response =
            ApiError::CertificateState("certificate x is revoked".into()).into_response();

        assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(
            response.headers()["x-amzn-errortype"],
            "CertificateStateException"
        );
    }

    #[test]
    fn registry_refusals_map_onto_aws_exceptions() {
        let not_found = RegistryError::NotFound {
            kind: "thing",
            id: "t1".into(),
        };
        let revoked = RegistryError::InvalidTransition {
            id: "c".into(),
            from: "REVOKED",
            to: "ACTIVE",
        };

        assert_eq!(
            ApiError::from(not_found).code(),
            "ResourceNotFoundException"
        );
        assert_eq!(ApiError::from(revoked).code(), "CertificateStateException");
    }
}
