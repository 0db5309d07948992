//! The end-of-run identity check: after the fleet has stopped, every
//! device's current certificate must still open a session and every
//! certificate it retired must be refused at the handshake, proved from
//! the outside with fresh connections.
//!
//! The fleet no longer rotates while the check runs, so its certificates
//! keep ageing: the current ones are proved first, those expiring soonest
//! first. One that was valid when the fleet stopped but has expired since
//! proves nothing at the handshake; it is judged by what the control plane
//! says of it instead, so that a short certificate lifetime (or a
//! compressed clock) does not turn a slow check into bricked devices.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::control::ControlPlane;
use crate::device::mqtt::ConnectSettings;
use crate::device::{DeviceOutcome, Proof, probe};
use crate::identity::Credentials;
use crate::identity::tls::TlsSettings;
use crate::observe::FailureReason;
use crate::observe::report::FinalCheck;

/// How many proofs run at once.
const CONCURRENCY: usize = 32;

/// Where and how the check connects, and the control plane it asks about
/// certificates that expired after the fleet stopped.
#[derive(Clone)]
pub struct Checker {
    pub connect: ConnectSettings,
    pub tls: TlsSettings,
    pub control: Arc<ControlPlane>,
}

/// Proves what every device left behind. A device whose proof could not
/// be had either way (the check's own connection timed out, say) is
/// counted as unverified, with the reason.
pub async fn final_check(
    context: &Arc<Checker>,
    outcomes: &[DeviceOutcome],
    devices: u64,
    stopped_at: SystemTime,
) -> FinalCheck {
    let mut identified: Vec<&DeviceOutcome> =
        outcomes.iter().filter(|o| o.thing_name.is_some()).collect();
    identified.sort_by_key(|outcome| expiry(outcome.current.as_ref()));
    let currents = prove_currents(context, &identified).await;
    let retired = prove_retired(context, &identified).await;
    let mut check = FinalCheck {
        devices,
        rotations_per_device: identified.iter().map(|o| o.rotations).collect(),
        ..FinalCheck::default()
    };
    // Concurrently: the control plane bounds its own calls in flight.
    let judged = join_all(
        identified
            .iter()
            .zip(currents)
            .map(|(outcome, current)| judge_expired(context, outcome, current, stopped_at)),
    )
    .await;
    for ((outcome, current), retired) in identified.iter().zip(judged).zip(retired) {
        let device = DeviceCheck { current, retired };
        if let Some(reason) = device.inconclusive() {
            debug!(
                serial = %outcome.serial,
                reason = reason.as_str(),
                "identity could not be checked"
            );
        }
        device.record(&mut check);
    }
    info!(
        provisioned = check.provisioned,
        bricked = check.bricked,
        unverified = check.unverified_devices(),
        expired_after_stop = check.expired_after_stop,
        retired = check.retired_certificates,
        "end-of-run identity check done"
    );
    check
}

/// When a certificate expires; one that cannot be read sorts first.
fn expiry(credentials: Option<&Credentials>) -> Option<SystemTime> {
    credentials.and_then(|c| c.info().ok()).map(|i| i.not_after)
}

/// One proof per device, in the devices' order; a device without a
/// current certificate has nothing that could work.
async fn prove_currents(context: &Arc<Checker>, devices: &[&DeviceOutcome]) -> Vec<Proof> {
    let attempts = devices.iter().map(|o| (thing(o), o.current.clone()));
    prove_all(context, attempts.collect()).await
}

/// The proofs of every device's retired certificates, grouped per device.
async fn prove_retired(context: &Arc<Checker>, devices: &[&DeviceOutcome]) -> Vec<Vec<Proof>> {
    let attempts = devices
        .iter()
        .flat_map(|o| o.retired.iter().map(|old| (thing(o), Some(old.clone()))));
    let mut proofs = prove_all(context, attempts.collect()).await.into_iter();
    devices
        .iter()
        .map(|o| proofs.by_ref().take(o.retired.len()).collect())
        .collect()
}

fn thing(outcome: &DeviceOutcome) -> String {
    outcome.thing_name.clone().unwrap_or_default()
}

/// Runs the proofs `CONCURRENCY` at a time, started in the order given,
/// and returns their outcomes in that order.
async fn prove_all(
    context: &Arc<Checker>,
    attempts: Vec<(String, Option<Credentials>)>,
) -> Vec<Proof> {
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut running = JoinSet::new();
    // A proof whose task was lost proves nothing.
    let mut proofs = vec![Proof::Inconclusive(FailureReason::Protocol); attempts.len()];
    for (index, (client_id, credentials)) in attempts.into_iter().enumerate() {
        // Taken here, in order, so that proofs start in the order given.
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed");
        let context = Arc::clone(context);
        running.spawn(async move {
            let _permit = permit;
            let proof = match credentials {
                Some(credentials) => {
                    probe(&context.connect, &context.tls, &client_id, &credentials).await
                }
                None => Proof::Refused,
            };
            (index, proof)
        });
        while let Some(Ok((index, proof))) = running.try_join_next() {
            proofs[index] = proof;
        }
    }
    while let Some(joined) = running.join_next().await {
        if let Ok((index, proof)) = joined {
            proofs[index] = proof;
        }
    }
    proofs
}

/// A current certificate refused at the handshake because it expired
/// after the fleet stopped proves nothing about the device: it is judged
/// by its status in the registry instead (ACTIVE: the device still had a
/// working identity when it stopped).
async fn judge_expired(
    context: &Checker,
    outcome: &DeviceOutcome,
    proof: Proof,
    stopped_at: SystemTime,
) -> Judged {
    let plain = Judged {
        proof,
        expired_after_stop: false,
    };
    if proof != Proof::Refused {
        return plain;
    }
    let Some(info) = outcome.current.as_ref().and_then(|c| c.info().ok()) else {
        return plain;
    };
    let expired_since_stop = info.not_after > stopped_at && info.not_after <= SystemTime::now();
    if !expired_since_stop {
        return plain;
    }
    let proof = match context.control.describe_certificate(&info.id).await {
        Ok(summary) if summary.status == "ACTIVE" => Proof::Works,
        Ok(_) => Proof::Refused,
        Err(error) => {
            debug!(serial = %outcome.serial, %error, "cannot describe an expired certificate");
            Proof::Inconclusive(FailureReason::ControlPlane)
        }
    };
    Judged {
        proof,
        expired_after_stop: true,
    }
}

/// A current certificate's proof, and whether the control plane gave it.
struct Judged {
    proof: Proof,
    expired_after_stop: bool,
}

/// What the check proved about one device.
struct DeviceCheck {
    current: Judged,
    retired: Vec<Proof>,
}

impl DeviceCheck {
    /// Why a proof of this device could not be had, if one could not.
    fn inconclusive(&self) -> Option<FailureReason> {
        std::iter::once(&self.current.proof)
            .chain(&self.retired)
            .find_map(|proof| match proof {
                Proof::Inconclusive(reason) => Some(*reason),
                Proof::Works | Proof::Refused => None,
            })
    }

    fn record(&self, check: &mut FinalCheck) {
        match self.current.proof {
            Proof::Works => check.provisioned += 1,
            Proof::Refused => check.bricked += 1,
            Proof::Inconclusive(_) => {}
        }
        if self.current.expired_after_stop && self.current.proof == Proof::Works {
            check.expired_after_stop += 1;
        }
        if let Some(reason) = self.inconclusive() {
            *check.unverified.entry(reason).or_default() += 1;
        }
        check.retired_certificates += self.retired.len() as u64;
        let accepted = self.retired.iter().filter(|p| **p == Proof::Works).count();
        check.retired_still_accepted += accepted as u64;
    }
}
