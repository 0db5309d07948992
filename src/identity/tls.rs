//! The device's TLS client configuration: trust only the target's root, and
//! present the device's certificate. Session resumption is off so that each
//! connection proves the certificate afresh, as a reconnect after rotation
//! or revocation must.
//!
//! A configuration is built once per identity (the claim's is shared by the
//! whole fleet): building one parses PEM and loads the private key, which
//! costs about a tenth of a handshake. The key exchange the device offers
//! is a [`KeyExchange`], one group only, chosen by the scenario's
//! `tls.key_exchange`: X25519 by default, which is what device TLS stacks
//! offer and AWS IoT Core accepts, rather than rustls' own default of the
//! post-quantum hybrid X25519MLKEM768, which costs more on both sides.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{Credentials, IdentityError};

/// The (EC)DHE group a device offers in its ClientHello, and so the one the
/// handshake uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyExchange {
    /// Curve25519: the cheapest, offered by most device TLS stacks.
    #[default]
    X25519,
    /// NIST P-256, for stacks without Curve25519.
    Secp256r1,
    /// The post-quantum hybrid rustls prefers by default.
    X25519MlKem768,
}

impl KeyExchange {
    pub const ALL: [KeyExchange; 3] = [
        KeyExchange::X25519,
        KeyExchange::Secp256r1,
        KeyExchange::X25519MlKem768,
    ];

    pub fn label(self) -> &'static str {
        match self {
            KeyExchange::X25519 => "x25519",
            KeyExchange::Secp256r1 => "secp256r1",
            KeyExchange::X25519MlKem768 => "x25519mlkem768",
        }
    }

    fn group(self) -> &'static dyn SupportedKxGroup {
        match self {
            KeyExchange::X25519 => aws_lc_rs::kx_group::X25519,
            KeyExchange::Secp256r1 => aws_lc_rs::kx_group::SECP256R1,
            KeyExchange::X25519MlKem768 => aws_lc_rs::kx_group::X25519MLKEM768,
        }
    }

    /// aws-lc-rs offering only this group.
    pub fn provider(self) -> CryptoProvider {
        CryptoProvider {
            kx_groups: vec![self.group()],
            ..aws_lc_rs::default_provider()
        }
    }
}

impl std::str::FromStr for KeyExchange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        KeyExchange::ALL
            .into_iter()
            .find(|kx| kx.label() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = KeyExchange::ALL.iter().map(|kx| kx.label()).collect();
                format!(
                    "unknown key exchange `{text}`; use one of {}",
                    known.join(", ")
                )
            })
    }
}

/// What every connection of a run's devices trusts and offers, whichever
/// identity it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The target's root CA, the only one trusted.
    pub root_pem: String,
    pub key_exchange: KeyExchange,
}

impl TlsSettings {
    /// A client configuration presenting `credentials`.
    pub fn client_config(
        &self,
        credentials: &Credentials,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        client_config_with(&self.root_pem, credentials, self.key_exchange)
    }
}

/// A client configuration presenting `credentials` and trusting `root_pem`,
/// offering the default key exchange.
pub fn client_config(
    root_pem: &str,
    credentials: &Credentials,
) -> Result<Arc<ClientConfig>, IdentityError> {
    client_config_with(root_pem, credentials, KeyExchange::default())
}

/// [`client_config`] offering `key_exchange`.
pub fn client_config_with(
    root_pem: &str,
    credentials: &Credentials,
    key_exchange: KeyExchange,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let roots = root_store(root_pem)?;
    let chain = CertificateDer::pem_slice_iter(credentials.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadCertificate(format!("{e:?}")))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.private_key_pem.as_bytes())
        .map_err(|e| IdentityError::BadKey(format!("{e:?}")))?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(key_exchange.provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn root_store(root_pem: &str) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        let cert = cert.map_err(|e| IdentityError::BadCertificate(format!("root CA: {e:?}")))?;
        roots
            .add(cert)
            .map_err(|e| IdentityError::BadCertificate(format!("root CA: {e}")))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_exchange_reads_back_from_its_label() {
        for kx in KeyExchange::ALL {
            assert_eq!(kx.label().parse::<KeyExchange>(), Ok(kx));
        }
        let error = "p521".parse::<KeyExchange>().unwrap_err();
        assert!(
            error.contains("p521") && error.contains("x25519"),
            "{error}"
        );
    }

    #[test]
    fn a_configuration_offers_only_the_settings_key_exchange() {
        use rustls::NamedGroup;
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["device".to_owned()]).unwrap();
        let certificate = params.self_signed(&key).unwrap().pem();
        let credentials = Credentials {
            certificate_pem: certificate.clone(),
            private_key_pem: key.serialize_pem(),
        };
        let expected = [
            (KeyExchange::X25519, NamedGroup::X25519),
            (KeyExchange::Secp256r1, NamedGroup::secp256r1),
            (KeyExchange::X25519MlKem768, NamedGroup::X25519MLKEM768),
        ];
        for (key_exchange, group) in expected {
            let settings = TlsSettings {
                root_pem: certificate.clone(),
                key_exchange,
            };
            let config = settings.client_config(&credentials).unwrap();
            let offered: Vec<NamedGroup> = config
                .crypto_provider()
                .kx_groups
                .iter()
                .map(|kx| kx.name())
                .collect();
            assert_eq!(offered, [group], "{}", key_exchange.label());
        }
    }
}
