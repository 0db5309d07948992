//! The control-plane client's one error type.
//!
//! Every message names the AWS operation and the resource it was about and
//! says whose fault it is; SDK errors are reduced to their code, message or
//! root cause, never to their debug dump.

use std::error::Error as StdError;
use std::path::PathBuf;

use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};

use crate::observe::FailureReason;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{operation} {resource}: throttled by the service, still after the sdk's retries")]
    Throttled {
        operation: &'static str,
        resource: String,
    },
    #[error("{operation} {resource}: not found by the service: {message}")]
    NotFound {
        operation: &'static str,
        resource: String,
        message: String,
    },
    #[error("{operation} {resource}: already exists")]
    AlreadyExists {
        operation: &'static str,
        resource: String,
    },
    #[error("{operation} {resource}: refused by the service with {code}: {message}")]
    Refused {
        operation: &'static str,
        resource: String,
        code: String,
        message: String,
    },
    #[error("{operation} {resource}: no answer within the configured timeout")]
    Timeout {
        operation: &'static str,
        resource: String,
    },
    #[error("{operation} {resource}: could not reach the service: {cause}")]
    Transport {
        operation: &'static str,
        resource: String,
        cause: String,
    },
    #[error("{operation} {resource}: unexpected answer from the service: {cause}")]
    Protocol {
        operation: &'static str,
        resource: String,
        cause: String,
    },
    #[error("{operation} {resource}: request not sent, local sdk configuration: {cause}")]
    Configuration {
        operation: &'static str,
        resource: String,
        cause: String,
    },
    #[error("policy file {path}: {reason}")]
    PolicyFile { path: PathBuf, reason: String },
    #[error("claim key: could not generate the key or its csr: {0}")]
    ClaimKey(String),
}

/// The error codes the SDK's own retry classifier treats as throttling.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
];

impl ControlError {
    /// Classifies an SDK failure of `operation` on `resource`.
    pub(crate) fn from_sdk<E>(
        operation: &'static str,
        resource: &str,
        error: SdkError<E>,
    ) -> ControlError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        let resource = resource.to_owned();
        match &error {
            SdkError::ServiceError(context) => service_error(operation, resource, context.err()),
            SdkError::TimeoutError(_) => ControlError::Timeout {
                operation,
                resource,
            },
            SdkError::DispatchFailure(failure) if failure.is_timeout() => ControlError::Timeout {
                operation,
                resource,
            },
            SdkError::DispatchFailure(_) => ControlError::Transport {
                operation,
                resource,
                cause: root_cause(&error),
            },
            SdkError::ResponseError(_) => ControlError::Protocol {
                operation,
                resource,
                cause: root_cause(&error),
            },
            _ => ControlError::Configuration {
                operation,
                resource,
                cause: root_cause(&error),
            },
        }
    }

    /// The bounded failure label this error counts under.
    pub fn reason(&self) -> FailureReason {
        match self {
            ControlError::Throttled { .. } => FailureReason::Throttled,
            ControlError::Timeout { .. } => FailureReason::Timeout,
            ControlError::Transport { .. } => FailureReason::Connection,
            ControlError::Protocol { .. } => FailureReason::Protocol,
            ControlError::PolicyFile { .. } | ControlError::ClaimKey(_) => FailureReason::Storage,
            _ => FailureReason::ControlPlane,
        }
    }
}

fn service_error<E: ProvideErrorMetadata>(
    operation: &'static str,
    resource: String,
    error: &E,
) -> ControlError {
    let code = error.code().unwrap_or("UnknownError").to_owned();
    let message = error.message().unwrap_or("no message").to_owned();
    match code.as_str() {
        code if THROTTLING_CODES.contains(&code) => ControlError::Throttled {
            operation,
            resource,
        },
        "ResourceNotFoundException" => ControlError::NotFound {
            operation,
            resource,
            message,
        },
        "ResourceAlreadyExistsException" => ControlError::AlreadyExists {
            operation,
            resource,
        },
        _ => ControlError::Refused {
            operation,
            resource,
            code,
            message,
        },
    }
}

/// The innermost error's message: "Connection refused (os error 111)"
/// rather than the SDK's layered wrapper text.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
