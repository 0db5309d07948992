//! Credential files as a person hands them over: a PEM certificate and a PEM private key,
//! read with the checks that catch a broken or unsafe pair before any TLS handshake, each
//! refusal naming the file and the problem.
//!
//! Accepted: a byte-order mark, CRLF line ends, PKCS#1 (`RSA PRIVATE KEY`), SEC1
//! (`EC PRIVATE KEY`) and PKCS#8 (`PRIVATE KEY`) keys. Refused: files that are not PEM text,
//! truncated or empty blocks, encrypted keys, a key that is not the certificate's, and (as
//! OpenSSH does) a key file that the group or others may read, which a check of the file's
//! mode shows whatever user the process runs as.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{CertificateInfo, Credentials, IdentityError};

/// The largest credential file read; a certificate chain or key is a few KiB.
pub const MAX_CREDENTIAL_FILE_BYTES: u64 = 64 * 1024;

/// Reads a certificate and its private key from two files and checks that they belong
/// together.
pub fn read_pair(certificate: &Path, private_key: &Path) -> Result<Credentials, IdentityError> {
    let certificate_pem = read_certificate(certificate)?;
    let private_key_pem = read_private_key(private_key)?;
    let credentials = Credentials {
        certificate_pem,
        private_key_pem,
    };
    check_match(&credentials, private_key)?;
    Ok(credentials)
}

/// A PEM file of one or more X.509 certificates, as normalized PEM text.
pub fn read_certificate(path: &Path) -> Result<String, IdentityError> {
    let text = read_text(path)?;
    let blocks = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            refused(
                path,
                format!("certificate PEM is broken ({})", pem_error(&e)),
            )
        })?;
    if blocks.is_empty() {
        return Err(refused(path, "holds no CERTIFICATE block"));
    }
    for (index, der) in blocks.iter().enumerate() {
        CertificateInfo::from_der(der).map_err(|e| {
            refused(
                path,
                format!("certificate {} is not valid X.509: {e}", index + 1),
            )
        })?;
    }
    Ok(text)
}

/// A PEM private key in PKCS#1, SEC1 or PKCS#8, from a file only its owner may read.
pub fn read_private_key(path: &Path) -> Result<String, IdentityError> {
    check_private_mode(path)?;
    let text = read_text(path)?;
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let reason = "private key is encrypted; decrypt it first (openssl pkey -in <file>)";
        return Err(refused(path, reason));
    }
    let key = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        refused(
            path,
            format!("private key PEM is broken ({})", pem_error(&e)),
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| refused(path, format!("private key is not usable: {e}")))?;
    Ok(text)
}

/// Text without a byte-order mark and with LF line ends, within the size bound.
fn read_text(path: &Path) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if metadata.len() > MAX_CREDENTIAL_FILE_BYTES {
        let reason = format!(
            "is {} bytes, more than a credential file holds",
            metadata.len()
        );
        return Err(refused(path, reason));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| refused(path, "is not PEM text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text.replace("\r\n", "\n"))
}

fn check_private_mode(path: &Path) -> Result<(), IdentityError> {
    let metadata = std::fs::metadata(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let reason =
            format!("private key is readable by group or others (mode {mode:04o}); chmod 600 it");
        return Err(refused(path, reason));
    }
    Ok(())
}

/// The key must be the one the (first) certificate was issued for.
fn check_match(credentials: &Credentials, key_path: &Path) -> Result<(), IdentityError> {
    let chain = CertificateDer::pem_slice_iter(credentials.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadCertificate(pem_error(&e)))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.private_key_pem.as_bytes())
        .map_err(|e| IdentityError::BadKey(pem_error(&e)))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|_| {
        refused(
            key_path,
            "private key does not belong to the certificate (a key of another device?)",
        )
    })?;
    Ok(())
}

fn refused(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "truncated: a BEGIN line has no END line".into(),
        Error::NoItemsFound => "no PEM block of the expected kind".into(),
        Error::Base64Decode(_) => "a block's base64 does not decode".into(),
        other => format!("{other:?}"),
    }
}
