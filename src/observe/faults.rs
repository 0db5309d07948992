//! What a fault-injection run did to its fleet and how the fleet answered:
//! each injected fault counted by kind, and each recovery by what the
//! device did (reconnected, resumed from its store, finished or rolled back
//! an interrupted rotation, provisioned again). The counts feed the
//! report's faults section and two Prometheus counters.

use std::array;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Prometheus: faults injected, by `fault`.
pub const FAULTS_INJECTED: &str = "fleetsim_faults_injected_total";
/// Prometheus: what devices did after a fault, by `response`.
pub const FAULT_RESPONSES: &str = "fleetsim_fault_responses_total";

/// A fault a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// A connection dropped at random after a message or reply.
    RandomDrop,
    /// Dropped after the new certificate arrived, before RegisterThing.
    DropAfterCertificate,
    /// Dropped after the new files were written, before the reconnect.
    DropAfterStore,
    /// Dropped after the reconnect, before the old certificate was revoked.
    DropAfterReconnect,
    /// Dropped together with every other connected device.
    ReconnectStorm,
    /// The device task aborted and started again from its store.
    Crash,
    /// A device whose clock is off (counted once per device).
    ClockSkew,
    /// RegisterThing denied by the pre-provisioning hook.
    HookDenial,
    /// A Fleet Provisioning request answered with a throttle.
    Throttle,
    /// A Fleet Provisioning answer delayed.
    Latency,
    /// The claim certificate replaced and the old one revoked mid-run.
    ClaimCompromise,
    /// The emulator stopped and started again mid-run.
    EmulatorRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::RandomDrop,
        FaultKind::DropAfterCertificate,
        FaultKind::DropAfterStore,
        FaultKind::DropAfterReconnect,
        FaultKind::ReconnectStorm,
        FaultKind::Crash,
        FaultKind::ClockSkew,
        FaultKind::HookDenial,
        FaultKind::Throttle,
        FaultKind::Latency,
        FaultKind::ClaimCompromise,
        FaultKind::EmulatorRestart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::RandomDrop => "random_drop",
            FaultKind::DropAfterCertificate => "drop_after_certificate",
            FaultKind::DropAfterStore => "drop_after_store",
            FaultKind::DropAfterReconnect => "drop_after_reconnect",
            FaultKind::ReconnectStorm => "reconnect_storm",
            FaultKind::Crash => "crash",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::HookDenial => "hook_denial",
            FaultKind::Throttle => "throttle",
            FaultKind::Latency => "latency",
            FaultKind::ClaimCompromise => "claim_compromise",
            FaultKind::EmulatorRestart => "emulator_restart",
        }
    }
}

/// What a device did about a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultResponse {
    /// Connected as itself again after losing its connection.
    Reconnected,
    /// Restarted with an identity on disk and connected with it.
    ResumedOnline,
    /// Restarted mid-rotation; the new certificate worked, the old was retired.
    RotationFinished,
    /// Restarted mid-rotation; the new certificate was refused, the old restored.
    RotationRolledBack,
    /// Restarted with nothing usable on disk and provisioned by claim again.
    Reprovisioned,
}

impl FaultResponse {
    pub const ALL: [FaultResponse; 5] = [
        FaultResponse::Reconnected,
        FaultResponse::ResumedOnline,
        FaultResponse::RotationFinished,
        FaultResponse::RotationRolledBack,
        FaultResponse::Reprovisioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultResponse::Reconnected => "reconnected",
            FaultResponse::ResumedOnline => "resumed_online",
            FaultResponse::RotationFinished => "rotation_finished",
            FaultResponse::RotationRolledBack => "rotation_rolled_back",
            FaultResponse::Reprovisioned => "reprovisioned",
        }
    }
}

/// Reconnect pauses are counted in this many equal slices of their ceiling.
pub const PAUSE_SLICES: usize = 8;

/// Counters of one run's faults; share it as `Arc<FaultLog>`.
pub struct FaultLog {
    run: String,
    injected: [AtomicU64; FaultKind::ALL.len()],
    responses: [AtomicU64; FaultResponse::ALL.len()],
    pauses: [AtomicU64; PAUSE_SLICES],
}

impl FaultLog {
    pub fn new(run: &str) -> FaultLog {
        FaultLog {
            run: run.to_owned(),
            injected: array::from_fn(|_| AtomicU64::new(0)),
            responses: array::from_fn(|_| AtomicU64::new(0)),
            pauses: array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// A pause drawn before reconnecting after a lost connection, counted
    /// by the slice of `ceiling` it fell in: how well a fleet dropped at
    /// once is spread out.
    pub fn reconnect_paused(&self, pause: std::time::Duration, ceiling: std::time::Duration) {
        let share = pause.as_secs_f64() / ceiling.as_secs_f64().max(f64::MIN_POSITIVE);
        let slice = ((share * PAUSE_SLICES as f64) as usize).min(PAUSE_SLICES - 1);
        self.pauses[slice].fetch_add(1, Relaxed);
    }

    pub fn injected(&self, kind: FaultKind) {
        self.add_injected(kind, 1);
    }

    /// Adds faults counted elsewhere (by the emulator).
    pub fn add_injected(&self, kind: FaultKind, count: u64) {
        if count == 0 {
            return;
        }
        self.injected[kind as usize].fetch_add(count, Relaxed);
        ::metrics::counter!(FAULTS_INJECTED, "fault" => kind.as_str(), "run" => self.run.clone())
            .increment(count);
    }

    pub fn responded(&self, response: FaultResponse) {
        self.responses[response as usize].fetch_add(1, Relaxed);
        ::metrics::counter!(FAULT_RESPONSES, "response" => response.as_str(), "run" => self.run.clone())
            .increment(1);
    }

    pub fn injected_count(&self, kind: FaultKind) -> u64 {
        self.injected[kind as usize].load(Relaxed)
    }

    pub fn response_count(&self, response: FaultResponse) -> u64 {
        self.responses[response as usize].load(Relaxed)
    }

    /// The report's faults section: every fault injected at least once and
    /// every response seen at least once.
    pub fn section(&self, devices_failed: Vec<FailedDevices>) -> FaultSection {
        let injected = FaultKind::ALL
            .into_iter()
            .map(|kind| FaultCount {
                name: kind.as_str().to_owned(),
                count: self.injected_count(kind),
            })
            .filter(|c| c.count > 0)
            .collect();
        let responses = FaultResponse::ALL
            .into_iter()
            .map(|r| FaultCount {
                name: r.as_str().to_owned(),
                count: self.response_count(r),
            })
            .filter(|c| c.count > 0)
            .collect();
        let pauses: Vec<u64> = self.pauses.iter().map(|p| p.load(Relaxed)).collect();
        let reconnect_pauses = if pauses.iter().any(|p| *p > 0) {
            pauses
        } else {
            Vec::new()
        };
        FaultSection {
            injected,
            responses,
            devices_failed,
            reconnect_pauses,
        }
    }
}

/// The report's faults section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FaultSection {
    /// Each fault injected, and how often.
    pub injected: Vec<FaultCount>,
    /// What the fleet did about them.
    pub responses: Vec<FaultCount>,
    /// Devices that ended failed, by the step and reason that ended them.
    pub devices_failed: Vec<FailedDevices>,
    /// Reconnect pauses after lost connections, counted in eighths of
    /// `run.backoff_max` (first slice the shortest); empty if none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconnect_pauses: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDevices {
    pub op: String,
    pub reason: String,
    pub devices: u64,
}

impl FaultSection {
    pub fn is_empty(&self) -> bool {
        self.injected.is_empty() && self.responses.is_empty() && self.devices_failed.is_empty()
    }

    pub fn injected(&self, kind: FaultKind) -> u64 {
        count_of(&self.injected, kind.as_str())
    }

    pub fn responses(&self, response: FaultResponse) -> u64 {
        count_of(&self.responses, response.as_str())
    }

    /// Sums another shard's section into this one.
    pub fn add(&mut self, other: &FaultSection) {
        add_counts(&mut self.injected, &other.injected);
        add_counts(&mut self.responses, &other.responses);
        if self.reconnect_pauses.is_empty() {
            self.reconnect_pauses = vec![0; other.reconnect_pauses.len()];
        }
        for (mine, theirs) in self
            .reconnect_pauses
            .iter_mut()
            .zip(&other.reconnect_pauses)
        {
            *mine += theirs;
        }
        for failed in &other.devices_failed {
            match self
                .devices_failed
                .iter_mut()
                .find(|f| f.op == failed.op && f.reason == failed.reason)
            {
                Some(mine) => mine.devices += failed.devices,
                None => self.devices_failed.push(failed.clone()),
            }
        }
    }
}

fn count_of(counts: &[FaultCount], name: &str) -> u64 {
    counts
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.count)
}

fn add_counts(mine: &mut Vec<FaultCount>, theirs: &[FaultCount]) {
    for count in theirs {
        match mine.iter_mut().find(|c| c.name == count.name) {
            Some(c) => c.count += count.count,
            None => mine.push(count.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_lists_only_what_happened() {
        let log = FaultLog::new("t");
        log.injected(FaultKind::Crash);
        log.add_injected(FaultKind::Throttle, 3);
        log.responded(FaultResponse::ResumedOnline);
        let section = log.section(Vec::new());
        assert_eq!(section.injected(FaultKind::Crash), 1);
        assert_eq!(section.injected(FaultKind::Throttle), 3);
        assert_eq!(section.injected.len(), 2);
        assert_eq!(section.responses(FaultResponse::ResumedOnline), 1);
        let mut merged = section.clone();
        merged.add(&section);
        assert_eq!(merged.injected(FaultKind::Throttle), 6);
    }
}
