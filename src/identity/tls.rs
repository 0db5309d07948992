//! The device's TLS client configuration: trust only the target's root, and
//! present the device's certificate. Session resumption is off so that each
//! connection proves the certificate afresh, as a reconnect after rotation
//! or revocation must.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{Credentials, IdentityError};

/// A client configuration presenting `credentials` and trusting `root_pem`.
pub fn client_config(
    root_pem: &str,
    credentials: &Credentials,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let roots = root_store(root_pem)?;
    let chain = CertificateDer::pem_slice_iter(credentials.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadCertificate(format!("{e:?}")))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.private_key_pem.as_bytes())
        .map_err(|e| IdentityError::BadKey(format!("{e:?}")))?;
    let mut config = ClientConfig::builder()
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
