//! The emulator's certificate authority: one root that signs the broker's
//! server certificate and every device and claim certificate.
//!
//! Issued client certificates follow what AWS IoT issues: X.509 v3 with the
//! clientAuth extended key usage, a random 16-byte serial, and an id that is
//! the lowercase hex SHA-256 of the DER. Their validity is configurable so
//! that rotation can run on a compressed clock; notBefore is backdated a
//! little so that a device whose clock runs slightly behind accepts them.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How far notBefore is set in the past, to tolerate small clock skew.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Signature algorithms of CSRs we sign: the key types AWS accepts
/// (RSA, EC P-256, P-384, P-521).
const ACCEPTED_CSR_ALGORITHMS: [&SignatureAlgorithm; 6] = [
    &rcgen::PKCS_RSA_SHA256,
    &rcgen::PKCS_RSA_SHA384,
    &rcgen::PKCS_RSA_SHA512,
    &rcgen::PKCS_ECDSA_P256_SHA256,
    &rcgen::PKCS_ECDSA_P384_SHA384,
    &rcgen::PKCS_ECDSA_P521_SHA512,
];

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate signing request is not valid PEM or DER")]
    MalformedCsr,
    #[error("certificate signing request signature does not verify")]
    BadCsrSignature,
    #[error("certificate signing request uses an unsupported key or extension ({0})")]
    UnsupportedCsr(String),
    #[error("certificate authority could not sign: {0}")]
    Signing(String),
    #[error("stored certificate authority is damaged: {0}")]
    Stored(String),
}

/// A certificate the CA has issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// Lowercase hex SHA-256 of `der`: AWS's certificateId.
    pub id: String,
    pub pem: String,
    pub der: CertificateDer<'static>,
    /// Serial number in lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The broker's certificate chain and private key.
pub struct ServerIdentity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    // Never print the signing key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a fresh root with an EC P-256 key.
    pub fn generate(common_name: &str) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate().map_err(signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let root = params.self_signed(&key).map_err(signing)?;
        Ok(CertificateAuthority {
            root_der: root.der().clone(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root saved from [`root_pem`](Self::root_pem) and
    /// [`signing_key_pem`](Self::signing_key_pem), so that certificates
    /// issued before a restart still chain to it.
    pub fn from_pem(root_pem: &str, key_pem: &str) -> Result<CertificateAuthority, CaError> {
        use rustls::pki_types::pem::PemObject;
        let stored = |what: &str| CaError::Stored(what.to_owned());
        let key = KeyPair::from_pem(key_pem).map_err(|_| stored("root key is not a PEM key"))?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|_| stored("root certificate is not PEM"))?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key)
            .map_err(|e| stored(&format!("root certificate unusable: {e}")))?;
        Ok(CertificateAuthority {
            issuer,
            root_der,
            root_pem: root_pem.to_owned(),
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's private key as PKCS#8 PEM, for the state directory only.
    pub fn signing_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// A server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<ServerIdentity, CaError> {
        let key = KeyPair::generate().map_err(signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().copied().unwrap_or("fleetsim emulator"));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, Duration::from_secs(5 * 365 * 86_400));
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        Ok(ServerIdentity {
            cert_chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }

    /// A client certificate with a freshly generated EC P-256 key, returned
    /// as PEM beside it (for claim certificates and tests).
    pub fn issue_client(
        &self,
        common_name: &str,
        validity: Duration,
    ) -> Result<(IssuedCertificate, String), CaError> {
        let key = KeyPair::generate().map_err(signing)?;
        let params = client_params(name(common_name), validity);
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        Ok((issued(cert.der().clone(), &params), key.serialize_pem()))
    }

    /// A client certificate for a key the emulator generated for the device
    /// (CreateKeysAndCertificate). AWS gives these a generic subject.
    pub fn issue_for_key(
        &self,
        key: &KeyPair,
        validity: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let params = client_params(name("AWS IoT Certificate"), validity);
        let cert = params.signed_by(key, &self.issuer).map_err(signing)?;
        Ok(issued(cert.der().clone(), &params))
    }

    /// Verifies a CSR and signs a client certificate for its public key.
    /// Only the subject is taken from the request: extensions asked for in
    /// the CSR (a CA flag, say) are never copied.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        validity: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        // The key size comes first: a verifier that refuses a weak key would otherwise report
        // its CSR as a bad signature.
        check_key(csr_pem)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(csr_error)?;
        let algorithm = csr.public_key.algorithm();
        if !ACCEPTED_CSR_ALGORITHMS.contains(&algorithm) {
            return Err(CaError::UnsupportedCsr(format!("{algorithm:?}")));
        }
        let params = client_params(csr.params.distinguished_name.clone(), validity);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(signing)?;
        Ok(issued(cert.der().clone(), &params))
    }
}

/// AWS accepts RSA keys of at least 2048 bits and EC keys on P-256, P-384 or P-521
/// [aws-iot-facts §4.1]. rcgen names neither the key size nor the curve, so the CSR is read
/// once more, before its signature is checked.
fn check_key(csr_pem: &str) -> Result<(), CaError> {
    use rustls::pki_types::{CertificateSigningRequestDer, pem::PemObject};
    use x509_parser::prelude::{FromDer, X509CertificationRequest};
    use x509_parser::public_key::PublicKey;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| CaError::MalformedCsr)?;
    let (_, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|_| CaError::MalformedCsr)?;
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => {
            Err(CaError::UnsupportedCsr(format!(
                "RSA key of {} bits; at least {MIN_RSA_BITS} required",
                rsa.key_size()
            )))
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let curve = curve.map(|oid| oid.to_id_string()).unwrap_or_default();
            match ACCEPTED_EC_CURVES.contains(&curve.as_str()) {
                true => Ok(()),
                false => Err(CaError::UnsupportedCsr(format!(
                    "EC key on curve {curve}; P-256, P-384 or P-521 required"
                ))),
            }
        }
        Ok(_) => Ok(()),
        Err(_) => Err(CaError::MalformedCsr),
    }
}

/// The named curves AWS IoT signs: P-256, P-384, P-521.
const ACCEPTED_EC_CURVES: [&str; 3] = ["1.2.840.10045.3.1.7", "1.3.132.0.34", "1.3.132.0.35"];

/// The smallest RSA modulus AWS IoT signs.
const MIN_RSA_BITS: usize = 2048;

/// AWS's certificateId: lowercase hex SHA-256 of the DER encoding.
pub fn certificate_id(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    hex(digest.as_ref())
}

fn client_params(subject: DistinguishedName, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    params
}

/// Sets a random serial and a validity of `validity` from now, with
/// notBefore backdated by [`BACKDATE`].
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.serial_number = Some(random_serial());
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

fn issued(der: CertificateDer<'static>, params: &CertificateParams) -> IssuedCertificate {
    IssuedCertificate {
        id: certificate_id(&der),
        pem: pem_encode("CERTIFICATE", &der),
        serial: params
            .serial_number
            .as_ref()
            .map(|s| hex(&s.to_bytes()))
            .unwrap_or_default(),
        not_before: truncate_to_seconds(params.not_before.into()),
        not_after: truncate_to_seconds(params.not_after.into()),
        der,
    }
}

/// X.509 times have one-second resolution; report what the certificate says.
fn truncate_to_seconds(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// A positive 128-bit serial (top bit cleared so DER needs no sign byte).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, CaError> {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => name
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e| CaError::Signing(format!("bad server name {name:?}: {e}"))),
    }
}

/// PEM text for `der` under `label`, 64 base64 characters a line.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 output is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn signing(error: rcgen::Error) -> CaError {
    CaError::Signing(error.to_string())
}

fn csr_error(error: rcgen::Error) -> CaError {
    match error {
        rcgen::Error::InvalidCertificationRequestSignature => CaError::BadCsrSignature,
        rcgen::Error::CouldNotParseCertificationRequest => CaError::MalformedCsr,
        other => CaError::UnsupportedCsr(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn csr_for(key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("device-1");
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn signed_csr_is_a_v3_client_certificate_with_the_aws_id() {
        let ca = CertificateAuthority::generate("test root").unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .sign_csr(&csr_for(&key), Duration::from_secs(600))
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(cert.version().0, 2, "X.509 v3");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(issued.id.len(), 64);
        assert_eq!(issued.id, certificate_id(&issued.der));
        let lifetime = issued.not_after.duration_since(issued.not_before).unwrap();
        assert!(lifetime >= Duration::from_secs(600) && lifetime <= Duration::from_secs(661));
    }

    #[test]
    fn two_certificates_for_one_csr_have_distinct_serials_and_ids() {
        let ca = CertificateAuthority::generate("test root").unwrap();
        let csr = csr_for(&KeyPair::generate().unwrap());
        let a = ca.sign_csr(&csr, Duration::from_secs(60)).unwrap();
        let b = ca.sign_csr(&csr, Duration::from_secs(60)).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn garbage_and_tampered_csrs_are_refused() {
        let ca = CertificateAuthority::generate("test root").unwrap();
        assert!(matches!(
            ca.sign_csr("not a csr", Duration::from_secs(60)),
            Err(CaError::MalformedCsr)
        ));
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name("device-1");
        let mut der = params.serialize_request(&key).unwrap().der().to_vec();
        let at = der.windows(8).position(|w| w == b"device-1").unwrap();
        der[at + 7] = b'2';
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            ca.sign_csr(&tampered, Duration::from_secs(60)),
            Err(CaError::BadCsrSignature)
        ));
    }

    #[test]
    fn a_reloaded_root_signs_certificates_that_chain_to_the_saved_root() {
        let original = CertificateAuthority::generate("test root").unwrap();
        let reloaded =
            CertificateAuthority::from_pem(original.root_pem(), &original.signing_key_pem())
                .unwrap();
        let issued = reloaded
            .sign_csr(
                &csr_for(&KeyPair::generate().unwrap()),
                Duration::from_secs(60),
            )
            .unwrap();
        let (_, root) = X509Certificate::from_der(original.root_der()).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(cert.issuer(), root.subject());
        cert.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn server_certificate_names_localhost_and_loopback() {
        let ca = CertificateAuthority::generate("test root").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let (_, cert) = X509Certificate::from_der(&server.cert_chain[0]).unwrap();
        let names = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(names.general_names.len(), 2);
    }
}
