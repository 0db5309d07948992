//! CreateCertificateFromCsr, DescribeCertificate and UpdateCertificate.
//!
//! Certificates are signed by the emulator's CA with the configured (scaled)
//! validity. Revocation goes through the registry, which announces it so the
//! broker drops the certificate's live connections.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::request::{Call, epoch_seconds};
use crate::emulator::ca::CaError;
use crate::emulator::registry::{CertificateRecord, CertificateStatus, NewCertificate};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateFromCsrInput {
    certificate_signing_request: Option<String>,
}

pub(super) fn create_from_csr(service: &Service, call: &Call) -> Result<Value, ApiError> {
    let input: CreateFromCsrInput = call.json()?;
    let csr = input
        .certificate_signing_request
        .ok_or_else(|| ApiError::InvalidRequest("certificateSigningRequest is required".into()))?;
    let status = match call.query_flag("setAsActive")? {
        true => CertificateStatus::Active,
        false => CertificateStatus::Inactive,
    };
    let issued = service
        .ca
        .sign_csr(&csr, service.settings.certificate_validity)
        .map_err(signing_refusal)?;
    let record = service.registry.insert_certificate(NewCertificate {
        id: issued.id,
        pem: issued.pem,
        not_before: issued.not_before,
        not_after: issued.not_after,
        status,
    });
    Ok(json!({
        "certificateArn": record.arn,
        "certificateId": record.id,
        "certificatePem": record.pem,
    }))
}

pub(super) fn describe(service: &Service, certificate_id: &str) -> Result<Value, ApiError> {
    let record = find(service, certificate_id)?;
    Ok(json!({ "certificateDescription": description(&record) }))
}

pub(super) fn update(
    service: &Service,
    call: &Call,
    certificate_id: &str,
) -> Result<Value, ApiError> {
    let id = parse_certificate_id(certificate_id)?;
    let status = settable_status(call.query("newStatus"))?;
    service.registry.set_certificate_status(&id, status)?;
    tracing::debug!(certificate_id = %id, status = status.as_str(), "certificate status updated");
    Ok(json!({}))
}

/// A bad CSR is the caller's fault; a CA that cannot sign is ours.
fn signing_refusal(error: CaError) -> ApiError {
    match error {
        CaError::Signing(_) => ApiError::InternalFailure(error.to_string()),
        _ => ApiError::InvalidRequest(format!("certificateSigningRequest refused: {error}")),
    }
}

fn find(service: &Service, certificate_id: &str) -> Result<CertificateRecord, ApiError> {
    let id = parse_certificate_id(certificate_id)?;
    service
        .registry
        .certificate(&id)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("certificate {id} does not exist")))
}

fn description(record: &CertificateRecord) -> Value {
    json!({
        "certificateArn": record.arn,
        "certificateId": record.id,
        "status": record.status.as_str(),
        "certificatePem": record.pem,
        "ownedBy": arn_account(&record.arn),
        "creationDate": epoch_seconds(record.created_at),
        "lastModifiedDate": epoch_seconds(record.last_modified),
        "customerVersion": 1,
        "generationId": record.id,
        "validity": {
            "notBefore": epoch_seconds(record.not_before),
            "notAfter": epoch_seconds(record.not_after),
        },
        "certificateMode": "DEFAULT",
    })
}

fn arn_account(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

/// A certificate id is the 64 lowercase hex digits of a SHA-256; AWS
/// answers anything else with `InvalidRequestException`, not "not found".
pub(super) fn parse_certificate_id(text: &str) -> Result<String, ApiError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "certificate id {text} is not 64 hexadecimal characters"
        )))
    }
}

/// Only ACTIVE, INACTIVE and REVOKED may be set; the PENDING_* and
/// REGISTER_* statuses are the service's own.
fn settable_status(text: Option<&str>) -> Result<CertificateStatus, ApiError> {
    let text = text.ok_or_else(|| ApiError::InvalidRequest("newStatus is required".into()))?;
    match text {
        "ACTIVE" => Ok(CertificateStatus::Active),
        "INACTIVE" => Ok(CertificateStatus::Inactive),
        "REVOKED" => Ok(CertificateStatus::Revoked),
        _ => Err(ApiError::InvalidRequest(format!(
            "newStatus {text} cannot be set; use ACTIVE, INACTIVE or REVOKED"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_ids_must_be_64_hex_digits() {
        let good = "AB".repeat(32);

        assert_eq!(parse_certificate_id(&good), Ok("ab".repeat(32)));
        assert!(parse_certificate_id("abc").is_err());
        assert!(parse_certificate_id(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn service_owned_statuses_cannot_be_set() {
        assert!(settable_status(Some("PENDING_ACTIVATION")).is_err());
        assert!(settable_status(Some("PENDING_TRANSFER")).is_err());
        assert!(settable_status(None).is_err());
        assert_eq!(
            settable_status(Some("REVOKED")),
            Ok(CertificateStatus::Revoked)
        );
    }
}
