//! The broker's mutual-TLS acceptor: the rustls server configuration and the client-certificate
//! verifier that asks the registry, on every handshake, whether the certificate may connect.
//!
//! The chain is verified against our root first; then the certificate's AWS id (SHA-256 of its
//! DER) must name an ACTIVE certificate in the registry. Session resumption is disabled so that
//! no connection skips that check: a certificate revoked since its last handshake cannot resume.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ServerConnection, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore,
    ServerConfig, SignatureScheme,
};

use super::ca::{ServerIdentity, certificate_id};
use super::registry::{CertificateStatus, Registry};

/// Counter of refused or failed handshakes, labelled by `reason`.
pub const HANDSHAKE_REFUSALS: &str = "fleetsim_emulator_handshake_refusals_total";

/// Counter of completed handshakes, labelled by the key-exchange `group` negotiated.
pub const HANDSHAKES: &str = "fleetsim_emulator_tls_handshakes_total";

/// Why the server configuration could not be built; always a local configuration fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("emulator root certificate is not a usable trust anchor: {0}")]
    Root(rustls::Error),
    #[error("client verifier could not be built from the emulator root: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("server certificate or key is not usable: {0}")]
    ServerIdentity(rustls::Error),
}

/// Why a client was refused at the handshake; the label of [`HANDSHAKE_REFUSALS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownCertificate,
    CertificateRevoked,
    CertificateInactive,
    CertificatePendingActivation,
    UntrustedCertificate,
    ExpiredCertificate,
    NoCertificate,
    HandshakeTimeout,
    HandshakeFailed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownCertificate => "unknown_certificate",
            Refusal::CertificateRevoked => "certificate_revoked",
            Refusal::CertificateInactive => "certificate_inactive",
            Refusal::CertificatePendingActivation => "certificate_pending_activation",
            Refusal::UntrustedCertificate => "untrusted_certificate",
            Refusal::ExpiredCertificate => "expired_certificate",
            Refusal::NoCertificate => "no_certificate",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
        }
    }

    pub fn count(self) {
        metrics::counter!(HANDSHAKE_REFUSALS, "reason" => self.label()).increment(1);
    }
}

/// Builds the broker's TLS configuration: client certificates required, verified against
/// `root` and the registry, no session resumption.
pub fn server_config(
    root: CertificateDer<'static>,
    server: ServerIdentity,
    registry: Arc<Registry>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = RegistryVerifier::new(root, Arc::clone(&provider), registry)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ServerIdentity)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(server.cert_chain, server.key)
        .map_err(TlsError::ServerIdentity)?;
    // Every connection must pass the registry check again: no resumption of any kind.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The AWS certificate id of the client certificate an accepted connection presented.
pub fn peer_certificate_id(connection: &ServerConnection) -> Option<String> {
    let end_entity = connection.peer_certificates()?.first()?;
    Some(certificate_id(end_entity))
}

/// Counts a completed handshake by the key-exchange group it negotiated: what a fleet
/// offers is a setting, what the server agreed to is the fact.
pub fn count_handshake(connection: &ServerConnection) {
    let group = connection
        .negotiated_key_exchange_group()
        .map(|kx| kx.name());
    metrics::counter!(HANDSHAKES, "group" => group_label(group)).increment(1);
}

/// The groups this server accepts (aws-lc-rs' defaults) by the names the scenario's
/// `tls.key_exchange` uses; anything else is `other`, to keep the label bounded.
fn group_label(group: Option<NamedGroup>) -> &'static str {
    match group {
        Some(NamedGroup::X25519) => "x25519",
        Some(NamedGroup::secp256r1) => "secp256r1",
        Some(NamedGroup::secp384r1) => "secp384r1",
        Some(NamedGroup::X25519MLKEM768) => "x25519mlkem768",
        _ => "other",
    }
}

/// Counts a handshake that failed after the TCP accept. Refusals by the verifier were
/// already counted with their precise reason when they happened.
pub fn count_failed_handshake(error: &std::io::Error) {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(_)) => {}
        Some(rustls::Error::NoCertificatesPresented) => Refusal::NoCertificate.count(),
        _ => Refusal::HandshakeFailed.count(),
    }
}

/// Verifies the chain with webpki, then asks the registry about the end-entity certificate.
struct RegistryVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    registry: Arc<Registry>,
}

impl fmt::Debug for RegistryVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryVerifier").finish_non_exhaustive()
    }
}

impl RegistryVerifier {
    fn new(
        root: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
        registry: Arc<Registry>,
    ) -> Result<RegistryVerifier, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(root).map_err(TlsError::Root)?;
        let chain =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(RegistryVerifier { chain, registry })
    }

    fn check_registry(&self, end_entity: &CertificateDer<'_>) -> Result<(), Refusal> {
        match self
            .registry
            .certificate_status(&certificate_id(end_entity))
        {
            None => Err(Refusal::UnknownCertificate),
            Some(CertificateStatus::Active) => Ok(()),
            Some(CertificateStatus::Revoked) => Err(Refusal::CertificateRevoked),
            Some(CertificateStatus::Inactive) => Err(Refusal::CertificateInactive),
            Some(CertificateStatus::PendingActivation) => {
                Err(Refusal::CertificatePendingActivation)
            }
        }
    }
}

fn chain_refusal(error: &rustls::Error) -> Refusal {
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => Refusal::ExpiredCertificate,
        _ => Refusal::UntrustedCertificate,
    }
}

/// The alert the client sees: `certificate_revoked` where that is the truth, otherwise
/// `access_denied` without saying more.
fn refusal_error(refusal: Refusal) -> rustls::Error {
    let error = match refusal {
        Refusal::CertificateRevoked => CertificateError::Revoked,
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(error)
}

impl ClientCertVerifier for RegistryVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| chain_refusal(error).count())?;
        self.check_registry(end_entity).map_err(|refusal| {
            refusal.count();
            refusal_error(refusal)
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
