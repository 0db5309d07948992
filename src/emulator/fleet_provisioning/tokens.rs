//! Certificate ownership tokens: opaque, random, single-use, bound to the
//! certificate they were issued for and to the connection that asked for
//! them, and expiring after a configurable lifetime (AWS: one hour).
//!
//! AWS does not document the connection binding, but a token replayed from
//! another connection is the mistake a device fleet must not get away with
//! here. When a token expires unused, its certificate is deleted if nothing
//! ever claimed it, as AWS does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use tokio::time::Instant;

use super::Peer;
use crate::emulator::registry::Registry;
use crate::provisioning::ErrorResponse;

struct Token {
    certificate_id: String,
    requester: Peer,
    expires_at: Instant,
}

pub(super) struct TokenBook {
    lifetime: Duration,
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenBook {
    pub(super) fn new(lifetime: Duration) -> TokenBook {
        TokenBook {
            lifetime,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn issue(&self, registry: &Registry, peer: &Peer, certificate_id: &str) -> String {
        let bytes: [u8; 32] = rand::random();
        let token = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut tokens = self.lock();
        expire(registry, &mut tokens);
        tokens.insert(
            token.clone(),
            Token {
                certificate_id: certificate_id.to_owned(),
                requester: peer.clone(),
                expires_at: Instant::now() + self.lifetime,
            },
        );
        token
    }

    /// The certificate id of a token `peer` may use, without using it up.
    pub(super) fn check(
        &self,
        registry: &Registry,
        peer: &Peer,
        token: &str,
    ) -> Result<String, ErrorResponse> {
        if token.is_empty() {
            return Err(invalid("Certificate ownership token cannot be empty."));
        }
        let mut tokens = self.lock();
        expire(registry, &mut tokens);
        match tokens.get(token) {
            None => Err(invalid(
                "Certificate ownership token is unknown, used or expired.",
            )),
            Some(t) if t.requester != *peer => Err(invalid(
                "Certificate ownership token was issued to another connection.",
            )),
            Some(t) => Ok(t.certificate_id.clone()),
        }
    }

    /// Uses a token up. A token is only removed once it has been checked, so
    /// a bad guess cannot burn someone else's token.
    pub(super) fn redeem(
        &self,
        registry: &Registry,
        peer: &Peer,
        token: &str,
    ) -> Result<String, ErrorResponse> {
        let certificate_id = self.check(registry, peer, token)?;
        self.lock().remove(token);
        Ok(certificate_id)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn invalid(message: &str) -> ErrorResponse {
    ErrorResponse::new(400, "InvalidCertificateOwnershipToken", message.to_owned())
}

/// Drops expired tokens and deletes their certificates if nothing claimed them.
fn expire(registry: &Registry, tokens: &mut HashMap<String, Token>) {
    let now = Instant::now();
    tokens.retain(|_, t| {
        let live = t.expires_at > now;
        if !live {
            registry.remove_unclaimed_certificate(&t.certificate_id);
        }
        live
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::registry::{CertificateStatus, NewCertificate};
    use std::time::SystemTime;

    fn peer() -> Peer {
        Peer {
            client_id: "provision-1".into(),
            certificate_id: "claim".into(),
        }
    }

    fn pending(registry: &Registry, id: &str) {
        registry.insert_certificate(NewCertificate {
            id: id.into(),
            pem: String::new(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
            status: CertificateStatus::PendingActivation,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expires_after_its_lifetime_and_takes_its_unclaimed_certificate() {
        let registry = Registry::new("us-east-1", "1");
        let book = TokenBook::new(Duration::from_secs(3600));
        pending(&registry, "cert-1");
        let token = book.issue(&registry, &peer(), "cert-1");
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert_eq!(book.check(&registry, &peer(), &token).unwrap(), "cert-1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let error = book.check(&registry, &peer(), &token).unwrap_err();
        assert_eq!(error.error_code, "InvalidCertificateOwnershipToken");
        assert!(registry.certificate("cert-1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_redeemed_token_cannot_be_used_again() {
        let registry = Registry::new("us-east-1", "1");
        let book = TokenBook::new(Duration::from_secs(60));
        let token = book.issue(&registry, &peer(), "cert-1");
        assert!(book.redeem(&registry, &peer(), &token).is_ok());
        assert!(book.redeem(&registry, &peer(), &token).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn another_connection_cannot_use_or_burn_a_token() {
        let registry = Registry::new("us-east-1", "1");
        let book = TokenBook::new(Duration::from_secs(60));
        let token = book.issue(&registry, &peer(), "cert-1");
        let thief = Peer {
            client_id: "provision-2".into(),
            ..peer()
        };
        assert!(book.redeem(&registry, &thief, &token).is_err());
        assert!(book.redeem(&registry, &peer(), &token).is_ok());
    }
}
