//! The device's steps driven one at a time by the console's hands-on
//! devices: the same code as a fleet device, without retries, so the first
//! failure shows as it is.

use std::time::SystemTime;

use tokio::time::Instant;

use super::lifecycle::RotationSchedule;
use super::mqtt::{Session, SessionError};
use super::task::Device;
use crate::observe::{DeviceState, FailureReason, Op};

impl Device {
    pub(crate) fn serial(&self) -> &str {
        &self.serial
    }

    pub(crate) fn thing(&self) -> Option<&str> {
        (!self.thing.is_empty()).then_some(self.thing.as_str())
    }

    /// Adds a step that the console performed itself (subscribe, publish).
    pub(crate) fn note_by_hand(
        &self,
        name: &'static str,
        started: Instant,
        ok: bool,
        detail: String,
    ) {
        self.note(name, started.elapsed(), ok, || detail);
    }

    /// Provisions by claim once, then connects as the thing: the same steps
    /// as a fleet device, without retries, so the console shows the first
    /// failure as it is.
    pub(crate) async fn provision_by_hand(&mut self) -> Result<Session, SessionError> {
        let due = Instant::now();
        self.enter(DeviceState::Provisioning);
        if let Err((op, error)) = self.provision_once(due).await {
            self.failed(op, &error);
            self.enter(DeviceState::Failed);
            return Err(error);
        }
        self.enter(DeviceState::Offline);
        let session = self.connect_by_hand().await?;
        self.succeeded(Op::Provision, due.elapsed(), || {
            format!("provisioned: online as {}", self.thing)
        });
        Ok(session)
    }

    /// One connection attempt with the current certificate.
    pub(crate) async fn connect_by_hand(&mut self) -> Result<Session, SessionError> {
        let due = Instant::now();
        match self.open_session(self.current.clone()).await {
            Ok(session) => {
                self.succeeded(Op::Connect, due.elapsed(), || self.connected_detail());
                self.enter(DeviceState::Online);
                Ok(session)
            }
            Err(error) => {
                self.failed(Op::Connect, &error);
                self.enter(DeviceState::Offline);
                Err(error)
            }
        }
    }

    /// Rotates now, whatever the certificate's dates say. `Ok(true)` when
    /// the rotation completed, `Ok(false)` when an attempt failed and the
    /// old identity is still in use, `Err` when the device lost its
    /// connection and could not get it back.
    pub(crate) async fn rotate_by_hand(
        &mut self,
        session: &mut Session,
    ) -> Result<bool, SessionError> {
        let before = self.rotations;
        match self.rotate_in_state(session, Instant::now()).await {
            Ok(None) => Ok(self.rotations > before),
            Ok(Some(_)) => Err(SessionError::new(FailureReason::Connection, "stopped")),
            Err(gave_up) => {
                self.enter(DeviceState::Offline);
                Err(SessionError::new(
                    gave_up.reason,
                    format!("{} gave up", gave_up.op.as_str()),
                ))
            }
        }
    }

    /// Whether the current certificate is inside `schedule`'s renewal window.
    pub(crate) fn rotation_due(&self, schedule: &RotationSchedule) -> bool {
        let not_after = self
            .current
            .as_ref()
            .and_then(|c| c.info().ok())
            .map(|info| info.not_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        schedule.is_due(not_after, self.faults.clock(SystemTime::now()))
    }
}
