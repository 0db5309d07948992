//! A device started again after a crash, from what its credential store
//! holds: nothing (provision by claim again), an identity (connect as
//! itself), or an identity with a `previous` beside it (a rotation was
//! interrupted after the new files were written: finish it if the new
//! certificate works, or roll back to the previous one if it is refused).

use tokio::time::Instant;
use tracing::debug;

use super::mqtt::Session;
use super::task::{Device, GaveUp};
use crate::identity::Credentials;
use crate::observe::faults::FaultResponse;
use crate::observe::{DeviceState, FailureReason, Op};

impl Device {
    /// One life of the device: the first from its arrival, later ones from
    /// its store.
    pub(super) async fn incarnation(&mut self, due: Instant) -> Result<(), GaveUp> {
        if self.faults.crashes() == 0 {
            self.live(due).await
        } else {
            self.resume().await
        }
    }

    /// Forgets everything the crashed process held in memory except what a
    /// device keeps in its configuration (serial and thing name) and what
    /// the run records about it (rotations, retired certificates).
    pub(super) fn crashed(&mut self) {
        debug!("device crashed; restarting from its store");
        self.faults.crashed(&self.ctx.faults);
        self.current = None;
        self.unretired = None;
        self.enter(DeviceState::Offline);
        self.show_identity();
    }

    async fn resume(&mut self) -> Result<(), GaveUp> {
        let stored = match self.store_load().await {
            Ok(stored) => stored,
            Err(error) => {
                debug!(error = %error, "the store cannot be read after a crash");
                self.ctx
                    .recorder
                    .failure(Op::Provision, FailureReason::Storage);
                return Err(GaveUp {
                    op: Op::Provision,
                    reason: FailureReason::Storage,
                });
            }
        };
        let Some(stored) = stored.filter(|_| !self.thing.is_empty()) else {
            self.ctx.faults.log.responded(FaultResponse::Reprovisioned);
            self.enter(DeviceState::Provisioning);
            return self.live(Instant::now()).await;
        };
        self.current = Some(stored.current);
        self.show_identity();
        let session = match stored.previous {
            None => self.resume_online().await?,
            Some(previous) => self.finish_rotation(previous).await?,
        };
        match session {
            Some(session) => self.stay_online(session).await,
            None => Ok(()),
        }
    }

    async fn resume_online(&mut self) -> Result<Option<Session>, GaveUp> {
        let session = self.connect_as_thing().await?;
        if session.is_some() {
            self.ctx.faults.log.responded(FaultResponse::ResumedOnline);
        }
        Ok(session)
    }

    /// The store holds a new identity and the one it replaced: the crash
    /// came after the new files were written and before the old certificate
    /// was retired. A working new certificate completes the rotation; a
    /// refused one is rolled back to the previous, still active, identity.
    async fn finish_rotation(&mut self, previous: Credentials) -> Result<Option<Session>, GaveUp> {
        if Some(&previous) == self.current.as_ref() {
            // Never retire the identity in use, whatever the files say.
            let _ = self.store_forget_previous().await;
            return self.resume_online().await;
        }
        match self.connect_as_thing().await {
            Ok(Some(session)) => {
                self.retire(&previous).await;
                self.ctx
                    .faults
                    .log
                    .responded(FaultResponse::RotationFinished);
                Ok(Some(session))
            }
            Ok(None) => Ok(None),
            Err(gave_up) if gave_up.reason == FailureReason::TlsRefused => {
                self.fall_back_to(&previous).await;
                self.ctx
                    .faults
                    .log
                    .responded(FaultResponse::RotationRolledBack);
                self.connect_as_thing().await
            }
            Err(gave_up) => Err(gave_up),
        }
    }
}
