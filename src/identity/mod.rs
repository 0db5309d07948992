//! A device's identity: its private key, the CSR it sends, the certificate
//! it gets back, the TLS client configuration built from them, and the
//! credential store that keeps them across reconnects and crashes.

pub mod certificate;
pub mod files;
pub mod store;
pub mod tls;

use std::time::SystemTime;

pub use certificate::CertificateInfo;

/// Why an identity could not be built, read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("certificate is not valid PEM/X.509: {0}")]
    BadCertificate(String),
    #[error("private key is not valid PEM: {0}")]
    BadKey(String),
    #[error(
        "serial number {0:?} is not usable as a folder name (allowed: A-Z a-z 0-9 _ -, 1-100 chars)"
    )]
    BadSerial(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS configuration refused the credentials: {0}")]
    Tls(String),
    #[error("{}: {reason}", path.display())]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// A certificate and its private key, as PEM. `Debug` never prints the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "certificate_pem",
                &format_args!("{} bytes", self.certificate_pem.len()),
            )
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn info(&self) -> Result<CertificateInfo, IdentityError> {
        CertificateInfo::from_pem(&self.certificate_pem)
    }

    /// Whether the private key is the one the certificate was issued for.
    pub fn key_matches_certificate(&self) -> Result<bool, IdentityError> {
        let key = rcgen::KeyPair::from_pem(&self.private_key_pem)
            .map_err(|e| IdentityError::BadKey(e.to_string()))?;
        let info = self.info()?;
        Ok(info.public_key == key.public_key_raw())
    }
}

/// A fresh EC P-256 key and a CSR for it whose subject is the serial.
pub struct KeyAndCsr {
    pub private_key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Generates a device key on the device, as a real device would.
pub fn generate_key_and_csr(serial: &str) -> Result<KeyAndCsr, IdentityError> {
    let key =
        rcgen::KeyPair::generate().map_err(|e| IdentityError::KeyGeneration(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IdentityError::KeyGeneration(e.to_string()))?;
    Ok(KeyAndCsr {
        private_key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
}

/// Seconds since the Unix epoch, for reports and logs.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
