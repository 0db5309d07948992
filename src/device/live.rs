//! The live view of devices while a run goes on: one small, bounded status
//! entry per device (state, current certificate, retired certificate ids,
//! last errors, last steps), written by the device task at state changes and
//! at the end of each step, read by the console.
//!
//! Thousands of device tasks write at once, so entries live in shards, each
//! behind its own short lock, and every list in an entry is bounded. A table
//! can also announce each step on a broadcast channel: the console's
//! hands-on devices do that so every action shows up live in the browser.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::identity::Credentials;
use crate::observe::DeviceState;

const SHARDS: usize = 16;
/// Steps kept per device: enough for a provisioning and two rotations.
pub const MAX_STEPS: usize = 40;
pub const MAX_ERRORS: usize = 8;
pub const MAX_RETIRED: usize = 16;

/// What a device shows of its certificate: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub id: String,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key_type: &'static str,
}

impl CertificateSummary {
    /// Reads the public parts of `credentials`; `None` when the certificate
    /// does not parse (the device counts that failure elsewhere).
    pub fn of(credentials: &Credentials) -> Option<CertificateSummary> {
        let info = credentials.info().ok()?;
        Some(CertificateSummary {
            key_type: key_type(&info.public_key),
            id: info.id,
            serial_hex: info.serial_hex,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// Names the key from the length of its encoded public key: an
/// uncompressed EC point has a fixed length per curve.
fn key_type(public_key: &[u8]) -> &'static str {
    match public_key.len() {
        65 => "EC P-256",
        97 => "EC P-384",
        133 => "EC P-521",
        _ => "RSA",
    }
}

/// One step of a device's life, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The operation (`Op` label) or a hands-on action (`subscribe`, ...).
    pub name: &'static str,
    /// Wall-clock time the step ended.
    pub at: SystemTime,
    pub duration: Duration,
    pub ok: bool,
    /// What happened on the wire, in plain words.
    pub detail: String,
}

/// One device's live status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub serial: String,
    pub thing: Option<String>,
    pub state: DeviceState,
    pub current: Option<CertificateSummary>,
    /// Ids of the certificates this device retired, oldest first.
    pub retired: VecDeque<String>,
    pub rotations: u64,
    pub errors: VecDeque<Step>,
    pub steps: VecDeque<Step>,
}

impl DeviceStatus {
    fn new(serial: &str) -> DeviceStatus {
        DeviceStatus {
            serial: serial.to_owned(),
            thing: None,
            state: DeviceState::Pending,
            current: None,
            retired: VecDeque::new(),
            rotations: 0,
            errors: VecDeque::new(),
            steps: VecDeque::new(),
        }
    }

    /// Appends a step (and, if it failed, an error), dropping the oldest.
    pub fn push_step(&mut self, step: Step) {
        if !step.ok {
            push_bounded(&mut self.errors, step.clone(), MAX_ERRORS);
        }
        push_bounded(&mut self.steps, step, MAX_STEPS);
    }

    pub fn push_retired(&mut self, id: String) {
        push_bounded(&mut self.retired, id, MAX_RETIRED);
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T, max: usize) {
    if list.len() == max {
        list.pop_front();
    }
    list.push_back(item);
}

/// A step announced on a table's feed.
#[derive(Debug, Clone)]
pub struct StepEvent {
    pub serial: String,
    pub step: Step,
}

/// The live status of every device of one run (or of the console's
/// hands-on devices).
pub struct LiveTable {
    hasher: RandomState,
    shards: [Mutex<HashMap<String, DeviceStatus>>; SHARDS],
    feed: Option<broadcast::Sender<StepEvent>>,
}

impl Default for LiveTable {
    fn default() -> Self {
        LiveTable::new()
    }
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTable")
            .field("devices", &self.len())
            .finish()
    }
}

impl LiveTable {
    pub fn new() -> LiveTable {
        LiveTable {
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
            feed: None,
        }
    }

    /// A table that also announces every step to subscribers.
    pub fn with_feed(capacity: usize) -> LiveTable {
        let (feed, _) = broadcast::channel(capacity);
        LiveTable {
            feed: Some(feed),
            ..LiveTable::new()
        }
    }

    pub fn subscribe(&self) -> Option<broadcast::Receiver<StepEvent>> {
        self.feed.as_ref().map(broadcast::Sender::subscribe)
    }

    /// Changes one device's entry, creating it when absent.
    pub fn update(&self, serial: &str, change: impl FnOnce(&mut DeviceStatus)) {
        let mut shard = self.shard(serial);
        let status = shard
            .entry(serial.to_owned())
            .or_insert_with(|| DeviceStatus::new(serial));
        change(status);
    }

    /// Appends a step to a device and announces it.
    pub fn step(&self, serial: &str, step: Step) {
        if let Some(feed) = &self.feed {
            // No subscriber means no browser is watching.
            let _ = feed.send(StepEvent {
                serial: serial.to_owned(),
                step: step.clone(),
            });
        }
        self.update(serial, |status| status.push_step(step));
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.shard(serial).contains_key(serial)
    }

    /// A device by serial number, or else by thing name.
    pub fn find(&self, key: &str) -> Option<DeviceStatus> {
        if let Some(found) = self.shard(key).get(key) {
            return Some(found.clone());
        }
        self.shards.iter().find_map(|shard| {
            lock(shard)
                .values()
                .find(|s| s.thing.as_deref() == Some(key))
                .cloned()
        })
    }

    /// Up to `limit` serials that contain `text`, sorted, with their state.
    pub fn search(&self, text: &str, limit: usize) -> Vec<(String, DeviceState)> {
        let mut found: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .values()
                    .filter(|s| s.serial.contains(text) || thing_contains(s, text))
                    .map(|s| (s.serial.clone(), s.state))
                    .collect::<Vec<_>>()
            })
            .collect();
        found.sort();
        found.truncate(limit);
        found
    }

    /// The fewest rotations of any provisioned device, `None` when none is.
    pub fn min_rotations(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|shard| {
                lock(shard)
                    .values()
                    .filter(|s| s.thing.is_some())
                    .map(|s| s.rotations)
                    .min()
            })
            .min()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, serial: &str) -> MutexGuard<'_, HashMap<String, DeviceStatus>> {
        let index = (self.hasher.hash_one(serial) as usize) % SHARDS;
        lock(&self.shards[index])
    }
}

fn thing_contains(status: &DeviceStatus, text: &str) -> bool {
    status.thing.as_deref().is_some_and(|t| t.contains(text))
}

/// Entries are plain data replaced field by field, so a panic elsewhere
/// cannot leave one half-written in a way that matters to a viewer.
fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str, ok: bool) -> Step {
        Step {
            name,
            at: SystemTime::now(),
            duration: Duration::from_millis(3),
            ok,
            detail: String::new(),
        }
    }

    #[test]
    fn steps_and_errors_are_bounded_and_keep_the_newest() {
        let table = LiveTable::new();
        for i in 0..(MAX_STEPS + 5) {
            table.step(
                "sn-1",
                step(if i % 2 == 0 { "connect" } else { "publish" }, i % 2 == 0),
            );
        }
        let status = table.find("sn-1").unwrap();
        assert_eq!(status.steps.len(), MAX_STEPS);
        assert_eq!(status.errors.len(), MAX_ERRORS);
        assert_eq!(status.steps.back().unwrap().name, "connect");
    }

    #[test]
    fn a_device_is_found_by_serial_or_thing_name() {
        let table = LiveTable::new();
        table.update("sn-7", |s| s.thing = Some("fleetsim-sn-7".into()));
        table.update("sn-8", |s| s.state = DeviceState::Online);
        assert_eq!(table.find("fleetsim-sn-7").unwrap().serial, "sn-7");
        assert_eq!(table.find("sn-8").unwrap().state, DeviceState::Online);
        assert!(table.find("sn-9").is_none());
        assert_eq!(table.search("sn-", 1).len(), 1);
        assert_eq!(table.min_rotations(), Some(0));
    }

    #[test]
    fn a_table_with_a_feed_announces_steps() {
        let table = LiveTable::with_feed(8);
        let mut feed = table.subscribe().unwrap();
        table.step("sn-1", step("subscribe", true));
        assert_eq!(feed.try_recv().unwrap().step.name, "subscribe");
    }
}
