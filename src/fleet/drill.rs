//! The claim-certificate compromise drill: at a set moment of the run, the
//! claim certificate every unprovisioned device uses is replaced through
//! the control plane and the old one revoked, as an operator would after a
//! leak. Devices provisioning with the old one at that moment are cut off
//! and retry with the new one; later arrivals only ever see the new one.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::device::DeviceContext;
use crate::identity::Credentials;
use crate::observe::faults::{FaultKind, FaultLog};

/// Replaces the claim certificate at `at`; returns the new certificate's id.
pub async fn replace_claim_at(
    context: Arc<DeviceContext>,
    claim_policy: String,
    old_certificate_id: String,
    at: Instant,
    log: Arc<FaultLog>,
) -> Option<String> {
    sleep_until(at).await;
    let replaced = context
        .control
        .replace_claim_certificate(&claim_policy, &old_certificate_id)
        .await;
    match replaced {
        Ok(new) => {
            // The new identity is handed out only after the old one is
            // revoked, as a leak's remedy must be.
            context.claim.replace(Credentials {
                certificate_pem: new.claim_certificate_pem,
                private_key_pem: new.claim_private_key_pem,
            });
            log.injected(FaultKind::ClaimCompromise);
            info!(new = %new.claim_certificate_id, "claim certificate replaced and the old one revoked");
            Some(new.claim_certificate_id)
        }
        Err(error) => {
            warn!(error = %error, "the claim compromise drill could not replace the claim certificate");
            None
        }
    }
}
