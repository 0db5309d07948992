//! The device task: one simulated device from its scheduled arrival to the
//! end of the run. It provisions by claim, connects as itself, sends
//! telemetry and rotates its certificate when the certificate says so,
//! performing the I/O that the lifecycle decisions ask for.
//!
//! Every step has a deadline, failures are retried with backoff and counted
//! by reason, and the order of a rotation protects the device's identity:
//! the old certificate is retired only after the new one has been proved on
//! a live connection, and the old one is then proved refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rumqttc::QoS;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};

use super::faults::{DeviceFaults, FaultState};
use super::lifecycle::{Retry, RetryPolicy, RotationSchedule};
use super::live::{CertificateSummary, LiveTable, Step};
use super::mqtt::{ConnectSettings, Session, SessionError};
use crate::control::ControlPlane;
use crate::identity::Credentials;
use crate::identity::store::CredentialStore;
use crate::identity::tls::TlsSettings;
use crate::observe::faults::FaultResponse;
use crate::observe::{DeviceState, FailureReason, Op, Recorder};
use crate::scenario::ProvisioningMethod;

/// Telemetry as one device sends it.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub interval: Duration,
    pub qos: QoS,
    pub payload_bytes: usize,
    /// Suffix under `fleetsim/<thing>/`.
    pub topic: String,
}

/// Everything a device shares with the rest of the fleet.
pub struct DeviceContext {
    pub connect: ConnectSettings,
    /// The root every connection trusts and the key exchange it offers.
    pub tls: TlsSettings,
    /// The claim identity; a compromise drill replaces it mid-run.
    pub claim: Arc<ClaimSlot>,
    pub template: String,
    /// How devices get certificates, at provisioning and at every rotation.
    pub method: ProvisioningMethod,
    pub store: CredentialStore,
    pub control: Arc<ControlPlane>,
    pub recorder: Arc<Recorder>,
    pub telemetry: Option<TelemetrySettings>,
    pub rotation: Option<RotationSchedule>,
    pub retry: RetryPolicy,
    /// Cancelled when the run ends: the device disconnects and returns.
    pub stop: CancellationToken,
    /// Where the device shows its status while it runs (the console);
    /// `None` costs nothing.
    pub live: Option<Arc<LiveTable>>,
    /// What the device does wrong on purpose (fault injection).
    pub faults: DeviceFaults,
    /// The fleet's own rate limits, waited on before each paced step.
    pub pacer: Arc<crate::pacing::Pacer>,
}

impl DeviceContext {
    /// A context for devices driven by hand beside the fleet: the same
    /// target, claim and template, with their own store, measurements,
    /// live table and stop token, and no automatic telemetry or rotation.
    pub fn hands_on(
        &self,
        store: CredentialStore,
        recorder: Arc<Recorder>,
        live: Arc<LiveTable>,
        stop: CancellationToken,
    ) -> DeviceContext {
        DeviceContext {
            connect: self.connect.clone(),
            tls: self.tls.clone(),
            claim: Arc::clone(&self.claim),
            template: self.template.clone(),
            method: self.method,
            store,
            control: Arc::clone(&self.control),
            recorder,
            telemetry: None,
            rotation: None,
            retry: self.retry,
            stop,
            live: Some(live),
            faults: DeviceFaults::none(Arc::clone(&self.faults.log)),
            pacer: Arc::clone(&self.pacer),
        }
    }
}

/// The fleet's claim certificate and key, replaceable while devices use it.
pub struct ClaimSlot(std::sync::RwLock<ClaimIdentity>);

/// The claim credentials and, once built, their TLS configuration: one for
/// the whole fleet, so a provisioning storm does not parse PEM per device.
struct ClaimIdentity {
    credentials: Credentials,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClaimSlot {
    pub fn new(claim: Credentials) -> ClaimSlot {
        ClaimSlot(std::sync::RwLock::new(ClaimIdentity {
            credentials: claim,
            tls: None,
        }))
    }

    /// The claim identity to provision with now.
    pub fn get(&self) -> Credentials {
        self.read().credentials.clone()
    }

    /// The TLS configuration of the current claim identity, built on first use.
    /// A run's `tls` never changes, so the configuration kept is the one asked for.
    pub fn tls(&self, tls: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(tls) = &self.read().tls {
            return Ok(Arc::clone(tls));
        }
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        let config = tls
            .client_config(&slot.credentials)
            .map_err(|e| e.to_string())?;
        Ok(Arc::clone(slot.tls.get_or_insert(config)))
    }

    /// Hands every later provisioning attempt the new claim identity.
    pub fn replace(&self, claim: Credentials) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ClaimIdentity {
            credentials: claim,
            tls: None,
        };
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ClaimIdentity> {
        // Plain data: a panic elsewhere leaves nothing half-changed.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a device leaves behind for the end-of-run checks.
#[derive(Debug, Clone, Default)]
pub struct DeviceOutcome {
    pub serial: String,
    pub thing_name: Option<String>,
    pub current: Option<Credentials>,
    /// Certificates this device retired; each must now be refused.
    pub retired: Vec<Credentials>,
    pub rotations: u64,
    /// The step and reason that ended the device, if it failed.
    pub failure: Option<(Op, FailureReason)>,
}

/// Why a device stopped early: the step that exhausted its attempts.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub(super) op: Op,
    pub(super) reason: FailureReason,
}

/// A certificate just issued to the device, not yet registered.
pub(super) struct Issued {
    pub(super) credentials: Credentials,
    pub(super) ownership_token: String,
}

/// How a stretch of the device's life ended.
pub(super) enum Ending {
    Stopped,
    Lost(SessionError),
}

pub(crate) struct Device {
    pub(super) ctx: Arc<DeviceContext>,
    pub(super) serial: String,
    pub(super) state: DeviceState,
    pub(super) thing: String,
    pub(super) current: Option<Credentials>,
    pub(super) unretired: Option<Credentials>,
    pub(super) retired: Vec<Credentials>,
    pub(super) rotations: u64,
    pub(super) rng: StdRng,
    pub(super) faults: FaultState,
    pub(super) store_lock: super::storage::StoreLock,
}

/// Runs one device whose arrival was scheduled at `due`. With crashes
/// injected, the device's life is aborted at random moments (wherever it
/// is) and started again from what its store holds.
pub async fn run(ctx: Arc<DeviceContext>, serial: String, due: Instant) -> DeviceOutcome {
    let span = debug_span!("device", serial = %serial);
    let mut device = Device::new(ctx, serial);
    device.enter(DeviceState::Provisioning);
    let result = async {
        loop {
            let crash_in = device
                .faults
                .next_crash(&device.ctx.faults, &mut device.rng);
            let Some(crash_in) = crash_in else {
                return device.incarnation(due).await;
            };
            tokio::select! {
                result = device.incarnation(due) => return result,
                _ = sleep(crash_in) => {}
            }
            device.crashed();
        }
    }
    .instrument(span)
    .await;
    device.finish(result)
}

impl Device {
    pub(crate) fn new(ctx: Arc<DeviceContext>, serial: String) -> Device {
        ctx.recorder.device_state(None, DeviceState::Pending);
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let faults = FaultState::new(&ctx.faults, &mut rng);
        let device = Device {
            ctx,
            serial,
            state: DeviceState::Pending,
            thing: String::new(),
            current: None,
            unretired: None,
            retired: Vec::new(),
            rotations: 0,
            rng,
            faults,
            store_lock: Default::default(),
        };
        device.show(|status| status.state = DeviceState::Pending);
        device
    }

    pub(super) async fn live(&mut self, due: Instant) -> Result<(), GaveUp> {
        let stop = self.ctx.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            provisioned = self.provision(due) => provisioned?,
        }
        self.enter(DeviceState::Offline);
        let session = match self.connect_as_thing().await? {
            Some(session) => session,
            None => return Ok(()),
        };
        // Provisioning ends when the device is online as itself.
        self.succeeded(Op::Provision, due.elapsed(), || {
            format!("provisioned: online as {}", self.thing)
        });
        self.stay_online(session).await
    }

    /// Telemetry and checks until the run stops; a lost connection is
    /// followed by a jittered pause (so that a fleet dropped at once does
    /// not reconnect at once) and a reconnect with backoff.
    pub(super) async fn stay_online(&mut self, mut session: Session) -> Result<(), GaveUp> {
        loop {
            match self.online(&mut session).await? {
                Ending::Stopped => {
                    session.disconnect().await;
                    return Ok(());
                }
                Ending::Lost(error) => {
                    debug!(reason = error.reason.as_str(), "connection lost");
                    self.enter(DeviceState::Offline);
                    if !self.reconnect_pause().await {
                        return Ok(());
                    }
                    match self.connect_as_thing().await? {
                        Some(fresh) => {
                            self.ctx.faults.log.responded(FaultResponse::Reconnected);
                            session = fresh;
                        }
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    /// Waits up to `backoff_max`, drawn at random, before reconnecting;
    /// false when the run stopped meanwhile.
    async fn reconnect_pause(&mut self) -> bool {
        let ceiling = self.ctx.retry.max;
        let pause = ceiling.mul_f64(rand::Rng::random_range(&mut self.rng, 0.0..=1.0));
        self.ctx.faults.log.reconnect_paused(pause, ceiling);
        tokio::select! {
            _ = self.ctx.stop.cancelled() => false,
            _ = sleep(pause.max(super::lifecycle::MIN_BACKOFF.min(ceiling))) => true,
        }
    }

    pub(super) fn finish(mut self, result: Result<(), GaveUp>) -> DeviceOutcome {
        let failure = result.err().map(|g| (g.op, g.reason));
        let end = if failure.is_some() {
            DeviceState::Failed
        } else {
            DeviceState::Offline
        };
        self.enter(end);
        // A thing is only reported with an identity to prove: a device
        // stopped between learning its thing name and storing its files
        // never had one.
        let has_identity = !self.thing.is_empty() && self.current.is_some();
        let thing = has_identity.then(|| self.thing.clone());
        // A certificate never retired (control plane gave up) still works:
        // report it as retired so the end-of-run check proves or disproves it.
        self.retired.extend(self.unretired.take());
        DeviceOutcome {
            serial: self.serial,
            thing_name: thing,
            current: self.current,
            retired: self.retired,
            rotations: self.rotations,
            failure,
        }
    }

    pub(crate) fn enter(&mut self, state: DeviceState) {
        if state != self.state {
            self.ctx.recorder.device_state(Some(self.state), state);
            self.state = state;
            self.show(|status| status.state = state);
        }
    }

    // ---- what the live view shows ----

    /// Changes this device's live entry, when something watches.
    pub(super) fn show(&self, change: impl FnOnce(&mut super::live::DeviceStatus)) {
        if let Some(live) = &self.ctx.live {
            live.update(&self.serial, change);
        }
    }

    /// Adds a step to the live timeline; `detail` is only built when
    /// something watches.
    pub(super) fn note(
        &self,
        name: &'static str,
        duration: Duration,
        ok: bool,
        detail: impl FnOnce() -> String,
    ) {
        if let Some(live) = &self.ctx.live {
            let step = Step {
                name,
                at: SystemTime::now(),
                duration,
                ok,
                detail: detail(),
            };
            live.step(&self.serial, step);
        }
    }

    /// A step that succeeded: measured, and shown.
    pub(super) fn succeeded(&self, op: Op, latency: Duration, detail: impl FnOnce() -> String) {
        self.ctx.recorder.record(op, latency);
        self.note(op.as_str(), latency, true, detail);
    }

    /// A step that failed: counted by reason, and shown with its detail.
    pub(super) fn failed(&self, op: Op, error: &SessionError) {
        self.ctx.recorder.failure(op, error.reason);
        self.note(op.as_str(), Duration::ZERO, false, || {
            format!("{}: {}", error.reason.as_str(), error.detail)
        });
    }

    pub(super) fn show_identity(&self) {
        // Parsing the certificate costs more than the rest of a step's
        // bookkeeping, and only a live view reads the summary; it is parsed
        // before the view's lock is taken.
        if self.ctx.live.is_none() {
            return;
        }
        let summary = self.current.as_ref().and_then(CertificateSummary::of);
        let thing = (!self.thing.is_empty()).then(|| self.thing.clone());
        self.show(|status| {
            status.current = summary;
            status.thing = thing;
        });
    }

    // ---- failures ----

    /// Counts a failed attempt and sleeps before the next one, or gives up.
    pub(super) async fn back_off(
        &mut self,
        op: Op,
        attempt: u32,
        error: SessionError,
    ) -> Result<(), GaveUp> {
        self.failed(op, &error);
        debug!(op = op.as_str(), attempt, reason = error.reason.as_str(), detail = %error.detail, "step failed");
        match self
            .ctx
            .retry
            .after_failure(attempt, error.reason, &mut self.rng)
        {
            Retry::After(delay) => {
                tokio::select! {
                    _ = self.ctx.stop.cancelled() => {}
                    _ = sleep(delay) => {}
                }
                Ok(())
            }
            Retry::GiveUp(reason) => Err(GaveUp { op, reason }),
        }
    }
}

/// The first characters of a certificate id: enough to tell two apart.
pub(super) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
