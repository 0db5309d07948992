//! Devices driven by hand from the console, one at a time, to watch
//! provisioning, publishing and rotation step by step. Each one is the
//! fleet's own device code (`device::task::Device`, its MQTT session, the
//! credential store and the control plane) run by a small worker task that
//! takes one command at a time, so the console is not a parallel fake.
//!
//! Everything typed by the user is checked here before it reaches the file
//! system or the broker: serial numbers against the credential store's
//! alphabet and against the fleet's own serials, topics against MQTT's and
//! AWS's rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::device::DeviceContext;
use crate::device::lifecycle::RotationSchedule;
use crate::device::live::{LiveTable, Step, StepEvent};
use crate::device::mqtt::{Session, SessionError};
use crate::device::task::Device;
use crate::emulator::topic::{validate_topic_filter, validate_topic_name};
use crate::identity::store::validate_serial;
use crate::observe::DeviceState;

/// Hands-on devices one console may hold.
pub const MAX_DEVICES: usize = 32;
/// AWS's payload limit.
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// Received messages longer than this are cut in the wire log.
const SHOWN_PAYLOAD: usize = 300;

/// Whether a serial number belongs to the run's fleet (which a hands-on
/// device must not take over).
pub type SerialReserved = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Why the console refused an action; the HTTP status says whose fault.
#[derive(Debug, thiserror::Error)]
pub enum HandsOnError {
    #[error("{0}")]
    BadSerial(String),
    #[error("serial {0:?} belongs to the run's fleet; choose another")]
    FleetSerial(String),
    #[error("hands-on device {0:?} already exists")]
    Exists(String),
    #[error("no hands-on device {0:?}")]
    NotFound(String),
    #[error("the console holds at most {MAX_DEVICES} hands-on devices")]
    TooMany,
    #[error("topic {topic:?} refused: {reason}")]
    BadTopic { topic: String, reason: String },
    #[error("payload of {0} bytes is over AWS's {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadSetting(String),
    #[error("device {serial:?} {problem}")]
    WrongState {
        serial: String,
        problem: &'static str,
    },
    #[error("the run is over; hands-on devices have stopped")]
    Stopped,
}

/// What the user asks one device to do.
#[derive(Debug, Clone)]
pub enum Action {
    Provision,
    Connect,
    Disconnect,
    Subscribe { filter: String },
    Publish { topic: String, payload: Vec<u8> },
    RotateNow,
    AutoRotation(Option<RotationSchedule>),
}

/// What an action did: whether it succeeded and the steps it took, in
/// order, as they happened on the wire.
#[derive(Debug, Clone)]
pub struct ActionReport {
    pub ok: bool,
    pub steps: Vec<Step>,
}

type Reply = oneshot::Sender<Result<bool, HandsOnError>>;

/// The console's hands-on devices.
pub struct HandsOn {
    context: Arc<DeviceContext>,
    live: Arc<LiveTable>,
    reserved: SerialReserved,
    devices: Mutex<HashMap<String, mpsc::Sender<(Action, Reply)>>>,
}

impl HandsOn {
    /// `context` comes from [`DeviceContext::hands_on`]; its live table
    /// must have a feed, which the console streams to the browser.
    pub fn new(context: DeviceContext, reserved: SerialReserved) -> HandsOn {
        let live = context
            .live
            .clone()
            .expect("invariant: a hands-on context always has a live table");
        HandsOn {
            context: Arc::new(context),
            live,
            reserved,
            devices: Mutex::default(),
        }
    }

    pub fn live(&self) -> &Arc<LiveTable> {
        &self.live
    }

    /// Creates a device with this serial and provisions it by claim.
    pub async fn create(&self, serial: &str) -> Result<ActionReport, HandsOnError> {
        self.admit(serial)?;
        let (commands, receiver) = mpsc::channel(4);
        {
            let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
            if devices.contains_key(serial) {
                return Err(HandsOnError::Exists(serial.to_owned()));
            }
            if devices.len() >= MAX_DEVICES {
                return Err(HandsOnError::TooMany);
            }
            devices.insert(serial.to_owned(), commands);
        }
        let device = Device::new(Arc::clone(&self.context), serial.to_owned());
        let worker = Worker {
            device,
            session: None,
            filters: Vec::new(),
            auto: None,
            next_check: None,
        };
        tokio::spawn(worker.run(receiver, self.context.stop.clone()));
        self.act(serial, Action::Provision).await
    }

    /// Checks `action`, runs it on the device and reports its steps.
    pub async fn act(&self, serial: &str, action: Action) -> Result<ActionReport, HandsOnError> {
        validate_serial(serial).map_err(|e| HandsOnError::BadSerial(e.to_string()))?;
        check_action(&action)?;
        let commands = self
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(serial)
            .cloned()
            .ok_or_else(|| HandsOnError::NotFound(serial.to_owned()))?;
        let mut feed = self.live.subscribe().expect("invariant: checked in new");
        let (reply, outcome) = oneshot::channel();
        commands
            .send((action, reply))
            .await
            .map_err(|_| HandsOnError::Stopped)?;
        let ok = outcome.await.map_err(|_| HandsOnError::Stopped)??;
        Ok(ActionReport {
            ok,
            steps: drain(&mut feed, serial),
        })
    }

    fn admit(&self, serial: &str) -> Result<(), HandsOnError> {
        validate_serial(serial).map_err(|e| HandsOnError::BadSerial(e.to_string()))?;
        if (self.reserved)(serial) {
            return Err(HandsOnError::FleetSerial(serial.to_owned()));
        }
        Ok(())
    }
}

/// The steps one device announced since `feed` was opened. The worker
/// announces every step before it replies, so they are all queued.
fn drain(feed: &mut broadcast::Receiver<StepEvent>, serial: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    loop {
        match feed.try_recv() {
            Ok(event) if event.serial == serial => steps.push(event.step),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return steps,
        }
    }
}

fn check_action(action: &Action) -> Result<(), HandsOnError> {
    match action {
        Action::Subscribe { filter } => check_topic(filter, validate_topic_filter(filter)),
        Action::Publish { topic, payload } => {
            check_topic(topic, validate_topic_name(topic))?;
            if payload.len() > MAX_PAYLOAD {
                return Err(HandsOnError::PayloadTooLarge(payload.len()));
            }
            Ok(())
        }
        Action::AutoRotation(Some(schedule)) => check_schedule(schedule),
        _ => Ok(()),
    }
}

/// MQTT's and AWS's rules, and no control characters or reserved `$`
/// topics: those belong to the device's own provisioning.
fn check_topic(
    topic: &str,
    syntax: Result<(), crate::emulator::topic::TopicError>,
) -> Result<(), HandsOnError> {
    let refuse = |reason: String| HandsOnError::BadTopic {
        topic: topic.to_owned(),
        reason,
    };
    syntax.map_err(|e| refuse(e.to_string()))?;
    if topic.chars().any(char::is_control) {
        return Err(refuse("control characters are not allowed".into()));
    }
    if topic.starts_with('$') {
        return Err(refuse(
            "reserved $ topics are the device's own provisioning".into(),
        ));
    }
    Ok(())
}

fn check_schedule(schedule: &RotationSchedule) -> Result<(), HandsOnError> {
    let day = Duration::from_secs(86_400);
    if schedule.check_every < Duration::from_millis(100) || schedule.check_every > day {
        return Err(HandsOnError::BadSetting(
            "check interval must be between 100ms and 1d".into(),
        ));
    }
    if schedule.renew_before.is_zero() {
        return Err(HandsOnError::BadSetting(
            "renew-before must be above zero".into(),
        ));
    }
    Ok(())
}

/// One hands-on device: the device, its connection if any, the topics the
/// user subscribed to (renewed after each reconnect) and its automatic
/// rotation.
struct Worker {
    device: Device,
    session: Option<Session>,
    filters: Vec<String>,
    auto: Option<RotationSchedule>,
    next_check: Option<Instant>,
}

impl Worker {
    async fn run(mut self, mut commands: mpsc::Receiver<(Action, Reply)>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                command = commands.recv() => {
                    let Some((action, reply)) = command else { break };
                    let outcome = self.perform(action).await;
                    let _ = reply.send(outcome);
                }
                received = next_message(&mut self.session), if self.session.is_some() => {
                    self.on_message(received);
                }
                _ = sleep_until(self.next_check.unwrap_or_else(Instant::now)), if self.next_check.is_some() => {
                    self.check_certificate().await;
                }
            }
        }
        if let Some(session) = self.session.take() {
            session.disconnect().await;
        }
    }

    async fn perform(&mut self, action: Action) -> Result<bool, HandsOnError> {
        match action {
            Action::Provision => self.provision().await,
            Action::Connect => self.connect().await,
            Action::Disconnect => self.disconnect().await,
            Action::Subscribe { filter } => self.subscribe(filter).await,
            Action::Publish { topic, payload } => self.publish(&topic, payload).await,
            Action::RotateNow => self.rotate().await,
            Action::AutoRotation(schedule) => Ok(self.set_auto_rotation(schedule)),
        }
    }

    async fn provision(&mut self) -> Result<bool, HandsOnError> {
        if self.device.thing().is_some() {
            return Err(self.wrong_state("is already provisioned"));
        }
        let opened = self.device.provision_by_hand().await;
        Ok(self.adopt_session(opened).await)
    }

    async fn connect(&mut self) -> Result<bool, HandsOnError> {
        if self.device.thing().is_none() {
            return Err(self.wrong_state("is not provisioned"));
        }
        if self.session.is_some() {
            return Err(self.wrong_state("is already connected"));
        }
        let opened = self.device.connect_by_hand().await;
        Ok(self.adopt_session(opened).await)
    }

    async fn adopt_session(&mut self, opened: Result<Session, SessionError>) -> bool {
        match opened {
            Ok(session) => {
                self.session = Some(session);
                self.resubscribe().await
            }
            Err(_) => false,
        }
    }

    /// A new connection starts with no subscriptions (clean session).
    async fn resubscribe(&mut self) -> bool {
        let filters = self.filters.clone();
        for filter in filters {
            if !self.subscribe_once(&filter).await {
                return false;
            }
        }
        true
    }

    async fn disconnect(&mut self) -> Result<bool, HandsOnError> {
        let session = self
            .session
            .take()
            .ok_or_else(|| self.wrong_state("is not connected"))?;
        let started = Instant::now();
        session.disconnect().await;
        self.device.enter(DeviceState::Offline);
        self.note(
            started,
            "disconnect",
            true,
            "DISCONNECT sent; connection closed".into(),
        );
        Ok(true)
    }

    async fn subscribe(&mut self, filter: String) -> Result<bool, HandsOnError> {
        self.require_session()?;
        let ok = self.subscribe_once(&filter).await;
        if ok && !self.filters.contains(&filter) {
            self.filters.push(filter);
        }
        Ok(ok)
    }

    async fn subscribe_once(&mut self, filter: &str) -> bool {
        let started = Instant::now();
        let Some(session) = self.session.as_mut() else {
            return false;
        };
        let result = session.subscribe(&[filter]).await;
        let detail = match &result {
            Ok(()) => format!("SUBSCRIBE {filter} (QoS 1): SUBACK received"),
            Err(e) => format!(
                "SUBSCRIBE {filter} failed: {}: {}",
                e.reason.as_str(),
                e.detail
            ),
        };
        self.note(started, "subscribe", result.is_ok(), detail);
        self.keep_if_alive(result.is_ok())
    }

    async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Result<bool, HandsOnError> {
        self.require_session()?;
        let started = Instant::now();
        let size = payload.len();
        let session = self
            .session
            .as_mut()
            .expect("invariant: checked just above");
        let result = session.publish(topic, QoS::AtLeastOnce, payload).await;
        let detail = match &result {
            Ok(()) => format!("PUBLISH {topic} ({size} bytes, QoS 1): PUBACK received"),
            Err(e) => format!(
                "PUBLISH {topic} failed: {}: {}",
                e.reason.as_str(),
                e.detail
            ),
        };
        self.note(started, "publish", result.is_ok(), detail);
        Ok(self.keep_if_alive(result.is_ok()))
    }

    async fn rotate(&mut self) -> Result<bool, HandsOnError> {
        self.require_session()?;
        let session = self
            .session
            .as_mut()
            .expect("invariant: checked just above");
        match self.device.rotate_by_hand(session).await {
            Ok(true) => Ok(self.resubscribe().await),
            Ok(false) => Ok(self.keep_if_alive(false)),
            Err(_) => {
                self.session = None;
                Ok(false)
            }
        }
    }

    fn set_auto_rotation(&mut self, schedule: Option<RotationSchedule>) -> bool {
        let detail = match &schedule {
            Some(s) => format!(
                "automatic rotation on: check every {}, rotate when less than {} is left",
                humantime::format_duration(s.check_every),
                humantime::format_duration(s.renew_before)
            ),
            None => "automatic rotation off".to_owned(),
        };
        self.auto = schedule;
        self.next_check = schedule.map(|s| Instant::now() + s.check_every);
        self.note(Instant::now(), "auto_rotation", true, detail);
        true
    }

    /// An automatic check: rotates when the certificate is inside the
    /// renewal window and the device is online.
    async fn check_certificate(&mut self) {
        let Some(schedule) = self.auto else { return };
        self.next_check = Some(Instant::now() + schedule.check_every);
        if self.session.is_some() && self.device.rotation_due(&schedule) {
            let _ = self.rotate().await;
        }
    }

    fn on_message(&mut self, received: Result<Option<(String, bytes::Bytes)>, SessionError>) {
        match received {
            Ok(Some((topic, payload))) => {
                let text = String::from_utf8_lossy(&payload);
                let shown: String = text.chars().take(SHOWN_PAYLOAD).collect();
                let detail = format!("message on {topic} ({} bytes): {shown}", payload.len());
                self.note(Instant::now(), "message", true, detail);
            }
            Ok(None) => {}
            Err(error) => {
                self.session = None;
                self.device.enter(DeviceState::Offline);
                let detail = format!(
                    "connection closed: {}: {}",
                    error.reason.as_str(),
                    error.detail
                );
                self.note(Instant::now(), "connection", false, detail);
            }
        }
    }

    /// After a failed step, a connection the broker closed (a policy denial
    /// does that) is dropped and the device shown offline.
    fn keep_if_alive(&mut self, ok: bool) -> bool {
        let closed = self.session.as_mut().and_then(Session::closed_reason);
        if let Some(error) = closed {
            self.session = None;
            self.device.enter(DeviceState::Offline);
            let detail = format!("connection closed by the broker: {}", error.detail);
            self.note(Instant::now(), "connection", false, detail);
        }
        ok
    }

    fn require_session(&self) -> Result<(), HandsOnError> {
        match self.session {
            Some(_) => Ok(()),
            None => Err(self.wrong_state("is not connected")),
        }
    }

    fn wrong_state(&self, problem: &'static str) -> HandsOnError {
        HandsOnError::WrongState {
            serial: self.device.serial().to_owned(),
            problem,
        }
    }

    fn note(&self, started: Instant, name: &'static str, ok: bool, detail: String) {
        self.device.note_by_hand(name, started, ok, detail);
    }
}

/// The next message on an open session; pending forever without one.
async fn next_message(
    session: &mut Option<Session>,
) -> Result<Option<(String, bytes::Bytes)>, SessionError> {
    match session {
        Some(session) => session.next_message(Duration::from_secs(3600)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked_before_they_reach_the_broker() {
        let publish = |topic: &str| Action::Publish {
            topic: topic.into(),
            payload: vec![],
        };
        assert!(check_action(&publish("fleetsim/fleetsim-a/console")).is_ok());
        for bad in ["", "a/+/b", "a/#", "$aws/things/x", "a\u{7}b", "a\0b"] {
            assert!(check_action(&publish(bad)).is_err(), "{bad:?} passed");
        }
        let subscribe = |filter: &str| Action::Subscribe {
            filter: filter.into(),
        };
        assert!(check_action(&subscribe("fleetsim/fleetsim-a/#")).is_ok());
        assert!(check_action(&subscribe("a/#/b")).is_err());
        let big = Action::Publish {
            topic: "a".into(),
            payload: vec![0; MAX_PAYLOAD + 1],
        };
        assert!(matches!(
            check_action(&big),
            Err(HandsOnError::PayloadTooLarge(_))
        ));
    }
}
