//! Amazon Root CA 1, the root that signs AWS IoT Core's ATS endpoints,
//! shipped in the repository (`certs/AmazonRootCA1.pem`) rather than
//! downloaded, and checked against its published SHA-256 fingerprint
//! before any file is written from it.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::TargetError;

/// The PEM as shipped (copied from Debian's `ca-certificates`).
pub const AMAZON_ROOT_CA_1: &str = include_str!("../../certs/AmazonRootCA1.pem");

/// SHA-256 of the DER encoding of Amazon Root CA 1, lowercase hex.
pub const AMAZON_ROOT_CA_1_SHA256: &str =
    "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e";

/// Checks that `pem` holds exactly Amazon Root CA 1.
pub fn verify_amazon_root_ca(pem: &str) -> Result<(), TargetError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        TargetError::Invalid(format!("Amazon Root CA 1: not a PEM certificate: {e}"))
    })?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if hex != AMAZON_ROOT_CA_1_SHA256 {
        return Err(TargetError::Invalid(format!(
            "Amazon Root CA 1: fingerprint {hex} is not the published {AMAZON_ROOT_CA_1_SHA256}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_root_ca_has_the_published_fingerprint() {
        verify_amazon_root_ca(AMAZON_ROOT_CA_1).unwrap();
    }

    #[test]
    fn a_different_certificate_is_refused_by_fingerprint() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let error = verify_amazon_root_ca(&other).unwrap_err().to_string();
        assert!(error.contains("fingerprint"), "{error}");
    }
}
