//! What a device reads from its own certificate: the AWS certificate id,
//! the serial, the validity window and the public key. A device decides when
//! to rotate from `not_after`, exactly as a real one would.

use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Lowercase hex SHA-256 of the DER: AWS's certificateId.
    pub id: String,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The raw subject public key, to match it against a private key.
    pub public_key: Vec<u8>,
}

impl CertificateInfo {
    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<CertificateInfo, IdentityError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::BadCertificate(format!("{e:?}")))?;
        CertificateInfo::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let validity = cert.validity();
        Ok(CertificateInfo {
            id: crate::emulator::ca::certificate_id(der),
            serial_hex: cert.raw_serial_as_string().replace(':', ""),
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Time left before `not_after` at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}
