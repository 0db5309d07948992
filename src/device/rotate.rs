//! Certificate rotation: a new certificate over the device's own
//! connection, RegisterThing, the atomic install with the old identity kept
//! as backup, the proof that the new one connects, and only then the old
//! one's retirement (detach, revoke) and the proof that it is refused.

use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep};
use tracing::debug;

use super::faults::Flow;
use super::mqtt::{ConnectSettings, Session, SessionError};
use super::task::{Device, Ending, GaveUp, short};
use crate::identity::Credentials;
use crate::identity::tls::TlsSettings;
use crate::observe::{DeviceState, FailureReason, Op};
use crate::scenario::DropPoint;

impl Device {
    /// A check tick: finish a retirement left over from an earlier rotation,
    /// then rotate if the certificate is inside its renewal window.
    pub(super) async fn check_certificate(
        &mut self,
        session: &mut Session,
        due: Instant,
    ) -> Result<Option<Ending>, GaveUp> {
        if let Some(old) = self.unretired.clone() {
            self.retire(&old).await;
        }
        let schedule = self.ctx.rotation.expect("only called when rotation is on");
        if !self.rotation_due(&schedule) {
            return Ok(None);
        }
        self.rotate_in_state(session, due).await
    }

    pub(super) async fn rotate_in_state(
        &mut self,
        session: &mut Session,
        due: Instant,
    ) -> Result<Option<Ending>, GaveUp> {
        self.enter(DeviceState::Rotating);
        let ending = self.rotate(session, due).await;
        if self.state == DeviceState::Rotating {
            self.enter(DeviceState::Online);
        }
        ending
    }

    /// Rotation lag is relative to the renewal window, so a rotation asked
    /// for by hand (no schedule) has none.
    pub(super) fn record_rotation_lag(&self, old: &Credentials) {
        let Some(schedule) = self.ctx.rotation else {
            return;
        };
        if let Ok(info) = old.info() {
            let now = SystemTime::now();
            let recorder = &self.ctx.recorder;
            recorder.rotation_lag(info.not_after, schedule.renew_before, now);
        }
    }

    /// One rotation. A failure before the new identity is stored leaves the
    /// old one in place for the next check; after that, the old one stays
    /// the store's backup until the new one has proved itself.
    pub(super) async fn rotate(
        &mut self,
        session: &mut Session,
        due: Instant,
    ) -> Result<Option<Ending>, GaveUp> {
        let old = self
            .current
            .clone()
            .expect("an online device has an identity");
        let issued = match self.request_certificate(session).await {
            Ok(issued) => issued,
            Err((op, error)) => return Ok(self.rotation_failed(op, error)),
        };
        self.drop_if(session, Flow::Rotation, DropPoint::AfterCertificate);
        if let Err((op, error)) = self.register_thing(session, &issued).await {
            return Ok(self.rotation_failed(op, error));
        }
        let thing = self.thing.clone();
        if let Err(error) = self.adopt(thing, issued.credentials).await {
            return Ok(self.rotation_failed(Op::Rotate, error));
        }
        self.drop_if(session, Flow::Rotation, DropPoint::AfterStore);
        match self.prove_new_identity(&old).await? {
            Some(fresh) => *session = fresh,
            None => return Ok(Some(Ending::Stopped)),
        }
        // A drop here is noticed by the online loop after the rotation.
        self.drop_if(session, Flow::Rotation, DropPoint::AfterReconnect);
        self.retire(&old).await;
        self.succeeded(Op::Rotate, due.elapsed(), || {
            let new = self.current.as_ref().and_then(|c| c.info().ok());
            let old = old.info().ok();
            format!(
                "rotated: certificate {} replaced by {}",
                old.map(|i| short(&i.id).to_owned()).unwrap_or_default(),
                new.map(|i| short(&i.id).to_owned()).unwrap_or_default()
            )
        });
        Ok(None)
    }

    /// Counts a failed rotation attempt; the old identity is still in
    /// place, so the device stays online and tries again at its next check
    /// (a dead connection is noticed by the online loop).
    pub(super) fn rotation_failed(&mut self, op: Op, error: SessionError) -> Option<Ending> {
        self.failed(op, &error);
        debug!(
            op = op.as_str(),
            reason = error.reason.as_str(),
            "rotation attempt failed"
        );
        None
    }

    /// Connects with the new certificate (which takes over the old
    /// connection's client id). If the new identity never works, the device
    /// goes back to the old one, which is still active.
    pub(super) async fn prove_new_identity(
        &mut self,
        old: &Credentials,
    ) -> Result<Option<Session>, GaveUp> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self.open_session(self.current.clone()).await {
                Ok(session) => {
                    self.succeeded(Op::Connect, started.elapsed(), || {
                        format!("new certificate works: {}", self.connected_detail())
                    });
                    return Ok(Some(session));
                }
                Err(error) if attempt + 1 < self.ctx.retry.max_attempts => {
                    attempt += 1;
                    self.back_off(Op::Connect, attempt, error).await?;
                }
                Err(error) => {
                    self.failed(Op::Rotate, &error);
                    self.fall_back_to(old).await;
                    return self.connect_as_thing().await;
                }
            }
        }
    }

    pub(super) async fn fall_back_to(&mut self, old: &Credentials) {
        if let Err(e) = self.store_install(old).await {
            self.ctx
                .recorder
                .failure(Op::Rotate, FailureReason::Storage);
            debug!(error = %e, "could not restore the previous identity");
        }
        self.current = Some(old.clone());
        self.show_identity();
    }

    /// Detaches and revokes the old certificate, then proves it is refused.
    /// If the control plane keeps failing, the certificate is remembered
    /// and retired at the next check.
    pub(super) async fn retire(&mut self, old: &Credentials) {
        let Ok(info) = old.info() else { return };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match self
                .ctx
                .control
                .retire_certificate(&self.thing, &info.id)
                .await
            {
                Ok(()) => break,
                Err(error) => {
                    attempt += 1;
                    let failure = SessionError::new(FailureReason::ControlPlane, error.to_string());
                    self.failed(Op::Revoke, &failure);
                    debug!(error = %error, attempt, "retiring the old certificate failed");
                    if attempt >= self.ctx.retry.max_attempts {
                        self.unretired = Some(old.clone());
                        return;
                    }
                    sleep(self.ctx.retry.ceiling(attempt)).await;
                }
            }
        }
        self.succeeded(Op::Revoke, started.elapsed(), || {
            format!(
                "control plane: DetachThingPrincipal and UpdateCertificate REVOKED for {}",
                short(&info.id)
            )
        });
        self.unretired = None;
        let proving = Instant::now();
        if self.prove_refused(old).await {
            self.note("prove_refused", proving.elapsed(), true, || {
                format!(
                    "old certificate {} refused at the TLS handshake",
                    short(&info.id)
                )
            });
        } else {
            let error = SessionError::new(
                FailureReason::RetiredStillAccepted,
                format!("old certificate {} still connects", short(&info.id)),
            );
            self.failed(Op::Revoke, &error);
        }
        self.show(|status| status.push_retired(info.id.clone()));
        // Recorded before the backup goes, so that a crash in between
        // (which retires it again after the restart) counts it once.
        if !self.retired.contains(old) {
            self.retired.push(old.clone());
            self.rotation_completed(old);
        }
        if let Err(e) = self.store_forget_previous().await {
            debug!(error = %e, "could not drop the retired backup");
        }
    }

    /// A rotation is complete once its old certificate is retired: counted
    /// there, so that a crash after the retirement cannot lose it and a
    /// retirement finished after a restart cannot count it twice.
    fn rotation_completed(&mut self, old: &Credentials) {
        self.ctx.recorder.rotation_completed();
        self.record_rotation_lag(old);
        self.rotations += 1;
        let rotations = self.rotations;
        self.show(|status| status.rotations = rotations);
    }

    /// A retired certificate must be refused at the TLS handshake.
    pub(super) async fn prove_refused(&self, old: &Credentials) -> bool {
        prove_refused(&self.ctx.connect, &self.ctx.tls, &self.thing, old).await
    }
}

/// How many times an end-of-life proof is tried when the answer is neither
/// a refusal nor a working connection (a timeout under load, say).
const PROOF_ATTEMPTS: u32 = 3;

/// What connecting once with a set of credentials proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// They opened a working session.
    Works,
    /// The server refused them at the TLS handshake.
    Refused,
    /// Neither, after every attempt; the last attempt failed for this reason.
    Inconclusive(FailureReason),
}

/// Whether `credentials` are refused at the handshake. A working
/// connection disproves it; an inconclusive answer is not a proof either.
pub async fn prove_refused(
    connect: &ConnectSettings,
    tls: &TlsSettings,
    client_id: &str,
    credentials: &Credentials,
) -> bool {
    probe(connect, tls, client_id, credentials).await == Proof::Refused
}

/// Whether `credentials` still open a working session as `client_id`.
pub async fn prove_works(
    connect: &ConnectSettings,
    tls: &TlsSettings,
    client_id: &str,
    credentials: &Credentials,
) -> bool {
    probe(connect, tls, client_id, credentials).await == Proof::Works
}

/// Connects as `client_id` with `credentials` to learn whether they are
/// accepted or refused at the handshake. Any other outcome (a timeout under
/// load, say) is retried, and stays inconclusive if it never resolves.
pub async fn probe(
    connect: &ConnectSettings,
    tls: &TlsSettings,
    client_id: &str,
    credentials: &Credentials,
) -> Proof {
    let Ok(tls) = tls.client_config(credentials) else {
        return Proof::Inconclusive(FailureReason::Protocol);
    };
    let mut last = FailureReason::Connection;
    for attempt in 1..=PROOF_ATTEMPTS {
        match Session::connect(connect, client_id, tls.clone()).await {
            Ok(session) => {
                session.disconnect().await;
                return Proof::Works;
            }
            Err(error) if error.reason == FailureReason::TlsRefused => return Proof::Refused,
            Err(error) => {
                debug!(client_id, attempt, error = %error, "proof inconclusive");
                last = error.reason;
                if attempt < PROOF_ATTEMPTS {
                    sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    Proof::Inconclusive(last)
}
