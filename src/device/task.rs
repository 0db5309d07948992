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
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};

use super::lifecycle::{Retry, RetryPolicy, RotationSchedule};
use super::live::{CertificateSummary, LiveTable, Step};
use super::mqtt::{ConnectSettings, Session, SessionError};
use crate::control::ControlPlane;
use crate::identity::store::CredentialStore;
use crate::identity::{Credentials, generate_key_and_csr, tls::client_config};
use crate::observe::{DeviceState, FailureReason, Op, Recorder};
use crate::provisioning::{
    CreateCertificateFromCsrRequest, CreateCertificateFromCsrResponse,
    CreateKeysAndCertificateResponse, ErrorResponse, RegisterThingRequest, RegisterThingResponse,
    create_from_csr, create_keys, register_thing_accepted, register_thing_rejected,
    register_thing_topic,
};
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
    pub root_pem: String,
    pub claim: Credentials,
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
            root_pem: self.root_pem.clone(),
            claim: self.claim.clone(),
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
        }
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
    op: Op,
    reason: FailureReason,
}

/// A certificate just issued to the device, not yet registered.
struct Issued {
    credentials: Credentials,
    ownership_token: String,
}

/// How a stretch of the device's life ended.
enum Ending {
    Stopped,
    Lost(SessionError),
}

pub(crate) struct Device {
    ctx: Arc<DeviceContext>,
    serial: String,
    state: DeviceState,
    thing: String,
    current: Option<Credentials>,
    unretired: Option<Credentials>,
    retired: Vec<Credentials>,
    rotations: u64,
    rng: StdRng,
}

/// Runs one device whose arrival was scheduled at `due`.
pub async fn run(ctx: Arc<DeviceContext>, serial: String, due: Instant) -> DeviceOutcome {
    let span = debug_span!("device", serial = %serial);
    let mut device = Device::new(ctx, serial);
    device.enter(DeviceState::Provisioning);
    let result = device.live(due).instrument(span).await;
    device.finish(result)
}

impl Device {
    pub(crate) fn new(ctx: Arc<DeviceContext>, serial: String) -> Device {
        ctx.recorder.device_state(None, DeviceState::Pending);
        let device = Device {
            ctx,
            serial,
            state: DeviceState::Pending,
            thing: String::new(),
            current: None,
            unretired: None,
            retired: Vec::new(),
            rotations: 0,
            rng: StdRng::from_rng(&mut rand::rng()),
        };
        device.show(|status| status.state = DeviceState::Pending);
        device
    }

    async fn live(&mut self, due: Instant) -> Result<(), GaveUp> {
        let stop = self.ctx.stop.clone();
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            provisioned = self.provision(due) => provisioned?,
        }
        self.enter(DeviceState::Offline);
        let mut session = match self.connect_as_thing().await? {
            Some(session) => session,
            None => return Ok(()),
        };
        // Provisioning ends when the device is online as itself.
        self.succeeded(Op::Provision, due.elapsed(), || {
            format!("provisioned: online as {}", self.thing)
        });
        loop {
            match self.online(&mut session).await? {
                Ending::Stopped => {
                    session.disconnect().await;
                    return Ok(());
                }
                Ending::Lost(error) => {
                    debug!(reason = error.reason.as_str(), "connection lost");
                    self.enter(DeviceState::Offline);
                    match self.connect_as_thing().await? {
                        Some(fresh) => session = fresh,
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    fn finish(mut self, result: Result<(), GaveUp>) -> DeviceOutcome {
        let failure = result.err().map(|g| (g.op, g.reason));
        let end = if failure.is_some() {
            DeviceState::Failed
        } else {
            DeviceState::Offline
        };
        self.enter(end);
        let thing = (!self.thing.is_empty()).then(|| self.thing.clone());
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
    fn show(&self, change: impl FnOnce(&mut super::live::DeviceStatus)) {
        if let Some(live) = &self.ctx.live {
            live.update(&self.serial, change);
        }
    }

    /// Adds a step to the live timeline; `detail` is only built when
    /// something watches.
    fn note(
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
    fn succeeded(&self, op: Op, latency: Duration, detail: impl FnOnce() -> String) {
        self.ctx.recorder.record(op, latency);
        self.note(op.as_str(), latency, true, detail);
    }

    /// A step that failed: counted by reason, and shown with its detail.
    fn failed(&self, op: Op, error: &SessionError) {
        self.ctx.recorder.failure(op, error.reason);
        self.note(op.as_str(), Duration::ZERO, false, || {
            format!("{}: {}", error.reason.as_str(), error.detail)
        });
    }

    fn show_identity(&self) {
        let summary = self.current.as_ref().and_then(CertificateSummary::of);
        let thing = (!self.thing.is_empty()).then(|| self.thing.clone());
        self.show(|status| {
            status.current = summary;
            status.thing = thing;
        });
    }

    // ---- provisioning by claim ----

    /// Provisions with the claim certificate, retrying the whole exchange:
    /// a half-finished provisioning leaves nothing the device can reuse.
    async fn provision(&mut self, due: Instant) -> Result<(), GaveUp> {
        let mut attempt = 0;
        loop {
            match self.provision_once(due).await {
                Ok(()) => return Ok(()),
                Err((op, error)) => {
                    attempt += 1;
                    self.back_off(op, attempt, error).await?;
                }
            }
        }
    }

    async fn provision_once(&mut self, due: Instant) -> Result<(), (Op, SessionError)> {
        let claim_tls = client_config(&self.ctx.root_pem, &self.ctx.claim).map_err(|e| {
            (
                Op::ClaimConnect,
                SessionError::new(FailureReason::Protocol, e.to_string()),
            )
        })?;
        let client_id = format!("provision-{}", self.serial);
        let mut session = Session::connect(&self.ctx.connect, &client_id, claim_tls)
            .await
            .map_err(|e| (Op::ClaimConnect, e))?;
        self.succeeded(Op::ClaimConnect, due.elapsed(), || {
            format!("TLS with the claim certificate, CONNACK accepted for client id {client_id}")
        });
        session
            .subscribe(&self.reply_filters())
            .await
            .map_err(|e| (Op::ClaimConnect, e))?;
        let issued = self.request_certificate(&mut session).await?;
        let thing = self.register_thing(&mut session, &issued).await?;
        session.disconnect().await;
        self.adopt(thing, issued.credentials)
            .await
            .map_err(|e| (Op::Provision, e))
    }

    fn reply_filters(&self) -> [String; 4] {
        let (accepted, rejected) = match self.ctx.method {
            ProvisioningMethod::CsrEcP256 => (create_from_csr::ACCEPTED, create_from_csr::REJECTED),
            ProvisioningMethod::CreateKeysRsa => (create_keys::ACCEPTED, create_keys::REJECTED),
        };
        [
            accepted.to_owned(),
            rejected.to_owned(),
            register_thing_accepted(&self.ctx.template),
            register_thing_rejected(&self.ctx.template),
        ]
    }

    /// A new certificate by the scenario's method.
    async fn request_certificate(
        &mut self,
        session: &mut Session,
    ) -> Result<Issued, (Op, SessionError)> {
        match self.ctx.method {
            ProvisioningMethod::CsrEcP256 => self.request_from_csr(session).await,
            ProvisioningMethod::CreateKeysRsa => self.request_keys(session).await,
        }
    }

    /// CreateKeysAndCertificate: the server makes an RSA key and sends it
    /// once with the certificate; the device signs every handshake with it.
    async fn request_keys(&mut self, session: &mut Session) -> Result<Issued, (Op, SessionError)> {
        let op = Op::CreateCertificate;
        let started = Instant::now();
        let reply: CreateKeysAndCertificateResponse = exchange(
            session,
            create_keys::REQUEST,
            &serde_json::Map::new(),
            create_keys::ACCEPTED,
            create_keys::REJECTED,
        )
        .await
        .map_err(|e| (op, e))?;
        self.ctx.recorder.record(op, started.elapsed());
        Ok(Issued {
            credentials: Credentials {
                certificate_pem: reply.certificate_pem,
                private_key_pem: reply.private_key,
            },
            ownership_token: reply.certificate_ownership_token,
        })
    }

    /// CreateCertificateFromCsr: the key never leaves the device.
    async fn request_from_csr(
        &mut self,
        session: &mut Session,
    ) -> Result<Issued, (Op, SessionError)> {
        let op = Op::CreateCertificate;
        let started = Instant::now();
        let key = generate_key_and_csr(&self.serial).map_err(|e| {
            (
                op,
                SessionError::new(FailureReason::Protocol, e.to_string()),
            )
        })?;
        let request = CreateCertificateFromCsrRequest {
            certificate_signing_request: key.csr_pem,
        };
        let reply: CreateCertificateFromCsrResponse = exchange(
            session,
            create_from_csr::REQUEST,
            &request,
            create_from_csr::ACCEPTED,
            create_from_csr::REJECTED,
        )
        .await
        .map_err(|e| (op, e))?;
        self.succeeded(op, started.elapsed(), || {
            format!(
                "published {}, accepted: certificate {}",
                create_from_csr::REQUEST,
                short(&reply.certificate_id)
            )
        });
        Ok(Issued {
            credentials: Credentials {
                certificate_pem: reply.certificate_pem,
                private_key_pem: key.private_key_pem,
            },
            ownership_token: reply.certificate_ownership_token,
        })
    }

    async fn register_thing(
        &mut self,
        session: &mut Session,
        issued: &Issued,
    ) -> Result<String, (Op, SessionError)> {
        let op = Op::RegisterThing;
        let started = Instant::now();
        let request = RegisterThingRequest {
            certificate_ownership_token: issued.ownership_token.clone(),
            parameters: [("SerialNumber".to_owned(), self.serial.clone())].into(),
        };
        let topic = register_thing_topic(&self.ctx.template);
        let reply: RegisterThingResponse = exchange(
            session,
            &topic,
            &request,
            &register_thing_accepted(&self.ctx.template),
            &register_thing_rejected(&self.ctx.template),
        )
        .await
        .map_err(|e| (op, e))?;
        self.succeeded(op, started.elapsed(), || {
            format!("published {topic}, accepted: thing {}", reply.thing_name)
        });
        Ok(reply.thing_name)
    }

    /// Stores a freshly registered identity; the previous one, if any, is
    /// kept as the store's backup.
    async fn adopt(&mut self, thing: String, credentials: Credentials) -> Result<(), SessionError> {
        self.ctx
            .store
            .install(&self.serial, &credentials)
            .await
            .map_err(|e| SessionError::new(FailureReason::Storage, e.to_string()))?;
        self.thing = thing;
        self.current = Some(credentials);
        self.show_identity();
        Ok(())
    }

    // ---- online ----

    /// Connects with the device's own certificate, retrying with backoff;
    /// `None` when the run ended first.
    async fn connect_as_thing(&mut self) -> Result<Option<Session>, GaveUp> {
        let mut attempt = 0;
        loop {
            let due = Instant::now();
            let stop = self.ctx.stop.clone();
            let attempt_result = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                result = self.open_session(self.current.clone()) => result,
            };
            match attempt_result {
                Ok(session) => {
                    self.succeeded(Op::Connect, due.elapsed(), || self.connected_detail());
                    self.enter(DeviceState::Online);
                    return Ok(Some(session));
                }
                Err(error) => {
                    attempt += 1;
                    self.back_off(Op::Connect, attempt, error).await?;
                }
            }
        }
    }

    /// Opens and subscribes a session as the thing with `credentials`: a
    /// SUBACK is the proof that the identity works.
    async fn open_session(
        &self,
        credentials: Option<Credentials>,
    ) -> Result<Session, SessionError> {
        let credentials = credentials
            .ok_or_else(|| SessionError::new(FailureReason::Storage, "device has no identity"))?;
        let tls = client_config(&self.ctx.root_pem, &credentials)
            .map_err(|e| SessionError::new(FailureReason::Protocol, e.to_string()))?;
        let mut session = Session::connect(&self.ctx.connect, &self.thing, tls).await?;
        let mut filters = self.reply_filters().to_vec();
        filters.push(format!("fleetsim/{}/commands", self.thing));
        session.subscribe(&filters).await?;
        Ok(session)
    }

    /// Telemetry and rotation checks until the run stops or the connection
    /// is lost.
    async fn online(&mut self, session: &mut Session) -> Result<Ending, GaveUp> {
        let mut next_publish = self.first_publish();
        let mut next_check = self.next_check();
        let mut sequence = 0u64;
        let stop = self.ctx.stop.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(Ending::Stopped),
                _ = sleep_until(next_publish.unwrap_or_else(far_future)), if next_publish.is_some() => {
                    let due = next_publish.expect("guarded by the select condition");
                    sequence += 1;
                    if let Err(error) = self.publish_telemetry(session, due, sequence).await {
                        return Ok(Ending::Lost(error));
                    }
                    next_publish = self.ctx.telemetry.as_ref().map(|t| due + t.interval);
                }
                _ = sleep_until(next_check.unwrap_or_else(far_future)), if next_check.is_some() => {
                    let due = next_check.expect("guarded by the select condition");
                    if let Some(ending) = self.check_certificate(session, due).await? {
                        return Ok(ending);
                    }
                    next_check = self.next_check();
                }
            }
            if let Some(error) = session.closed_reason() {
                return Ok(Ending::Lost(error));
            }
        }
    }

    /// Spreads the fleet's first messages over one interval.
    fn first_publish(&mut self) -> Option<Instant> {
        let interval = self.ctx.telemetry.as_ref()?.interval;
        Some(Instant::now() + interval.mul_f64(rand::Rng::random_range(&mut self.rng, 0.0..1.0)))
    }

    fn next_check(&mut self) -> Option<Instant> {
        let schedule = self.ctx.rotation?;
        Some(schedule.next_check(Instant::now(), &mut self.rng))
    }

    async fn publish_telemetry(
        &mut self,
        session: &mut Session,
        due: Instant,
        sequence: u64,
    ) -> Result<(), SessionError> {
        let telemetry = self
            .ctx
            .telemetry
            .as_ref()
            .expect("only called when telemetry is on");
        let topic = format!("fleetsim/{}/{}", self.thing, telemetry.topic);
        let payload = telemetry_payload(&self.serial, sequence, telemetry.payload_bytes);
        match session.publish(&topic, telemetry.qos, payload).await {
            Ok(()) => {
                self.ctx.recorder.record(Op::Publish, due.elapsed());
                Ok(())
            }
            Err(error) => {
                self.failed(Op::Publish, &error);
                Err(error)
            }
        }
    }

    // ---- rotation ----

    /// A check tick: finish a retirement left over from an earlier rotation,
    /// then rotate if the certificate is inside its renewal window.
    async fn check_certificate(
        &mut self,
        session: &mut Session,
        due: Instant,
    ) -> Result<Option<Ending>, GaveUp> {
        if let Some(old) = self.unretired.clone() {
            self.retire(&old).await;
        }
        let schedule = self.ctx.rotation.expect("only called when rotation is on");
        let not_after = self
            .current
            .as_ref()
            .and_then(|c| c.info().ok())
            .map(|info| info.not_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if !schedule.is_due(not_after, SystemTime::now()) {
            return Ok(None);
        }
        self.rotate_in_state(session, due).await
    }

    async fn rotate_in_state(
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
    fn record_rotation_lag(&self, old: &Credentials) {
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
    async fn rotate(
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
        if let Err((op, error)) = self.register_thing(session, &issued).await {
            return Ok(self.rotation_failed(op, error));
        }
        let thing = self.thing.clone();
        if let Err(error) = self.adopt(thing, issued.credentials).await {
            return Ok(self.rotation_failed(Op::Rotate, error));
        }
        match self.prove_new_identity(&old).await? {
            Some(fresh) => *session = fresh,
            None => return Ok(Some(Ending::Stopped)),
        }
        self.retire(&old).await;
        self.ctx.recorder.rotation_completed();
        self.record_rotation_lag(&old);
        self.rotations += 1;
        let rotations = self.rotations;
        self.show(|status| status.rotations = rotations);
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
    fn rotation_failed(&mut self, op: Op, error: SessionError) -> Option<Ending> {
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
    async fn prove_new_identity(&mut self, old: &Credentials) -> Result<Option<Session>, GaveUp> {
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

    async fn fall_back_to(&mut self, old: &Credentials) {
        if let Err(e) = self.ctx.store.install(&self.serial, old).await {
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
    async fn retire(&mut self, old: &Credentials) {
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
        if let Err(e) = self.ctx.store.forget_previous(&self.serial).await {
            debug!(error = %e, "could not drop the retired backup");
        }
        self.retired.push(old.clone());
    }

    /// A retired certificate must be refused at the TLS handshake.
    async fn prove_refused(&self, old: &Credentials) -> bool {
        prove_refused(&self.ctx.connect, &self.ctx.root_pem, &self.thing, old).await
    }

    fn connected_detail(&self) -> String {
        format!(
            "TLS with the device certificate, CONNACK accepted for client id {}, subscribed",
            self.thing
        )
    }

    // ---- driven by hand (the console) ----

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
        schedule.is_due(not_after, SystemTime::now())
    }

    // ---- failures ----

    /// Counts a failed attempt and sleeps before the next one, or gives up.
    async fn back_off(&mut self, op: Op, attempt: u32, error: SessionError) -> Result<(), GaveUp> {
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

/// How many times an end-of-life proof is tried when the answer is neither
/// a refusal nor a working connection (a timeout under load, say).
const PROOF_ATTEMPTS: u32 = 3;

/// Whether `credentials` are refused at the handshake. A working
/// connection disproves it; an inconclusive answer is not a proof either.
pub async fn prove_refused(
    connect: &ConnectSettings,
    root_pem: &str,
    client_id: &str,
    credentials: &Credentials,
) -> bool {
    probe(connect, root_pem, client_id, credentials).await == Some(false)
}

/// Whether `credentials` still open a working session as `client_id`.
pub async fn prove_works(
    connect: &ConnectSettings,
    root_pem: &str,
    client_id: &str,
    credentials: &Credentials,
) -> bool {
    probe(connect, root_pem, client_id, credentials).await == Some(true)
}

/// Connects once with `credentials` to learn whether they are accepted
/// (`Some(true)`) or refused at the handshake (`Some(false)`). Anything
/// else (a timeout under load, say) is retried, and stays `None` if it
/// never resolves.
async fn probe(
    connect: &ConnectSettings,
    root_pem: &str,
    client_id: &str,
    credentials: &Credentials,
) -> Option<bool> {
    let tls = client_config(root_pem, credentials).ok()?;
    for attempt in 1..=PROOF_ATTEMPTS {
        match Session::connect(connect, client_id, tls.clone()).await {
            Ok(session) => {
                session.disconnect().await;
                return Some(true);
            }
            Err(error) if error.reason == FailureReason::TlsRefused => return Some(false),
            Err(_) if attempt < PROOF_ATTEMPTS => sleep(Duration::from_millis(200)).await,
            Err(_) => {}
        }
    }
    None
}

/// Publishes a Fleet Provisioning request and decodes the accepted reply;
/// a rejection becomes a failure whose reason says whether it was a
/// throttle or a refusal.
async fn exchange<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    session: &mut Session,
    topic: &str,
    request: &Req,
    accepted: &str,
    rejected: &str,
) -> Result<Resp, SessionError> {
    let payload = serde_json::to_vec(request).expect("provisioning requests serialize");
    match session.request(topic, payload, accepted, rejected).await? {
        Ok(body) => serde_json::from_slice(&body).map_err(|e| {
            SessionError::new(
                FailureReason::Protocol,
                format!("bad reply on {accepted}: {e}"),
            )
        }),
        Err(body) => Err(rejection(&body)),
    }
}

fn rejection(body: &[u8]) -> SessionError {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(error) if error.status_code == 429 => {
            SessionError::new(FailureReason::Throttled, error.to_string())
        }
        Ok(error) => SessionError::new(FailureReason::ProvisioningRejected, error.to_string()),
        Err(e) => SessionError::new(
            FailureReason::Protocol,
            format!("unreadable rejection: {e}"),
        ),
    }
}

/// A JSON message of exactly `size` bytes (or the minimal message, if
/// `size` is smaller than that).
fn telemetry_payload(serial: &str, sequence: u64, size: usize) -> Vec<u8> {
    let stamp = crate::identity::unix_seconds(SystemTime::now());
    let head = format!(r#"{{"serial":"{serial}","seq":{sequence},"ts":{stamp},"pad":""#);
    let tail = "\"}";
    let padding = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + padding + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', padding));
    body.push_str(tail);
    body.into_bytes()
}

/// The first characters of a certificate id: enough to tell two apart.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_payload_is_json_of_the_requested_size() {
        let payload = telemetry_payload("SN-1", 7, 256);
        assert_eq!(payload.len(), 256);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["serial"], "SN-1");
        assert_eq!(value["seq"], 7);
        assert!(
            telemetry_payload("SN-1", 7, 1).len() > 1,
            "never truncates the message"
        );
    }
}
