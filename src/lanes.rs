//! Descriptor lanes: threads of this process that each own a file-descriptor
//! table and a single-threaded tokio runtime, so that one process can hold
//! more sockets than its open-file limit lets one table hold.
//!
//! Linux checks `RLIMIT_NOFILE` against the descriptor table a thread uses,
//! not against the process: a thread that calls `unshare(CLONE_FILES)` gets
//! a private copy of the table and may fill it up to the limit again. Where
//! the hard limit cannot be raised (no `CAP_SYS_RESOURCE`), this is how a
//! fleet of 100,000 devices, two sockets each with the emulator in-process,
//! fits one process whose limit is 20,000.
//!
//! A descriptor is a number in one table, so everything that uses one must
//! stay on the lane that opened it. That holds because:
//! - each lane runs a current-thread runtime: a task spawned onto a lane is
//!   polled only by that lane's thread, and the tasks it spawns, the sockets
//!   it opens and the blocking threads its runtime starts (which share the
//!   table of the thread that starts them) stay there too;
//! - every runtime's own descriptors (its epoll instance and the eventfd that
//!   other threads write to wake it) are made in the shared table before any
//!   lane unshares it, so a wake-up from any thread reaches the right runtime;
//!   lanes are therefore built, all of them, before the first one starts;
//! - a lane's runtime is dropped on the lane's own thread, which closes what
//!   its tasks still held in the right table.
//!
//! What must never happen is moving an open socket or file from a task on one
//! lane to a task on another (or to the caller's runtime): the number would
//! name something else there. Devices and broker connections never do.
//!
//! A lane starts with a copy of the descriptors its creator had open, and
//! keeps those files open until it ends; lanes are therefore started before
//! a run opens its listeners and connections.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;
use tracing::debug;

/// Most lanes one process starts: far more than any fleet a machine's
/// memory can hold needs, and a bound on threads.
pub const MAX_LANES: usize = 256;

/// Blocking threads per lane (credential files, DNS): lanes are many, and
/// their devices' file work is small and bursty.
const LANE_BLOCKING_THREADS: usize = 8;

/// How long a lane may take to set itself up before starting is given up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("descriptor lanes: {0} lanes asked for, at most {MAX_LANES}")]
    TooMany(usize),
    #[error("descriptor lane {lane}: cannot build its runtime: {source}")]
    Runtime { lane: usize, source: std::io::Error },
    #[error("descriptor lane {lane}: cannot start its thread: {source}")]
    Thread { lane: usize, source: std::io::Error },
    #[error("descriptor lane {lane}: cannot get a descriptor table of its own: {source}")]
    Unshare { lane: usize, source: nix::Error },
    #[error("descriptor lane {lane} did not start within {START_TIMEOUT:?}")]
    Silent { lane: usize },
}

/// Running lanes. Clones share them; they stop when the last clone is
/// dropped, each dropping (on its own thread) whatever tasks it still runs.
#[derive(Clone)]
pub struct Lanes {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("count", &self.len())
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Builds `count` runtimes here, then starts a thread for each that
    /// unshares its descriptor table and runs its runtime until the lanes
    /// are dropped. Returns once every lane has its own table.
    pub fn start(count: usize) -> Result<Lanes, LaneError> {
        if count == 0 || count > MAX_LANES {
            return Err(LaneError::TooMany(count));
        }
        let runtimes = build_runtimes(count)?;
        let mut inner = Inner {
            handles: runtimes.iter().map(|r| r.handle().clone()).collect(),
            stops: Vec::with_capacity(count),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for (lane, runtime) in runtimes.into_iter().enumerate() {
            let (stop, stopped) = oneshot::channel();
            let ready = ready_tx.clone();
            // Detached: a lane ends on its own once told to stop.
            std::thread::Builder::new()
                .name(format!("fleetsim-lane-{lane}"))
                .spawn(move || run_lane(lane, runtime, stopped, ready))
                .map_err(|source| LaneError::Thread { lane, source })?;
            inner.stops.push(stop);
        }
        drop(ready_tx);
        let lanes = Lanes {
            inner: Arc::new(inner),
        };
        let mut started = vec![false; count];
        for _ in 0..count {
            match ready_rx.recv_timeout(START_TIMEOUT) {
                Ok((lane, Ok(()))) => started[lane] = true,
                Ok((lane, Err(source))) => return Err(LaneError::Unshare { lane, source }),
                Err(_) => {
                    let lane = started.iter().position(|s| !s).unwrap_or(0);
                    return Err(LaneError::Silent { lane });
                }
            }
        }
        debug!(lanes = count, "descriptor lanes started");
        Ok(lanes)
    }

    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// The runtime of lane `index` modulo the number of lanes: spreading
    /// work by index spreads its descriptors evenly.
    pub fn handle(&self, index: u64) -> &Handle {
        let lanes = self.inner.handles.len() as u64;
        &self.inner.handles[(index % lanes) as usize]
    }

    pub fn handles(&self) -> &[Handle] {
        &self.inner.handles
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Each lane drops its runtime (and its tasks' sockets) on its own
        // thread; nothing here waits for it, since this may run inside a
        // runtime that must not block.
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Every runtime is built on the calling thread, before any lane unshares
/// the table, so that each runtime's epoll and wake-up descriptors have the
/// same number and meaning in every table.
fn build_runtimes(count: usize) -> Result<Vec<Runtime>, LaneError> {
    (0..count)
        .map(|lane| {
            Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(LANE_BLOCKING_THREADS)
                .thread_name(format!("fleetsim-lane-{lane}-blocking"))
                .build()
                .map_err(|source| LaneError::Runtime { lane, source })
        })
        .collect()
}

type Ready = mpsc::Sender<(usize, Result<(), nix::Error>)>;

/// One lane's thread: its own descriptor table, then its runtime until the
/// lanes stop. The runtime is dropped here, so its tasks close their
/// descriptors in this table.
fn run_lane(lane: usize, runtime: Runtime, stopped: oneshot::Receiver<()>, ready: Ready) {
    let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES);
    let failed = unshared.is_err();
    let _ = ready.send((lane, unshared));
    if failed {
        return;
    }
    runtime.block_on(async {
        let _ = stopped.await;
    });
    drop(runtime);
    debug!(lane, "descriptor lane stopped");
}

/// Descriptors one table keeps for what is not a connection: listeners,
/// the control plane, logs, the state directory, credential files.
pub fn reserve(limit: u64) -> u64 {
    (limit / 4).min(1024)
}

/// Lanes needed so that `connections` sockets fit tables of `limit`
/// descriptors each, with room to spare for uneven spreading and for
/// connections a rotation briefly holds beside the old one; `None` when one
/// table (the process's own) is enough.
pub fn needed(connections: u64, limit: u64) -> Option<usize> {
    let room = limit.saturating_sub(reserve(limit));
    if connections <= room {
        return None;
    }
    // A lane is filled to two thirds at most: devices spread evenly by
    // index, but the broker's share of a lane follows the kernel's hash of
    // each connection's addresses and ports.
    let per_lane = (room * 2 / 3).max(1);
    Some(usize::try_from(connections.div_ceil(per_lane)).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_is_enough_until_the_reserve() {
        assert_eq!(needed(18_976, 20_000), None);
        assert_eq!(needed(18_977, 20_000), Some(2));
        assert_eq!(needed(384, 512), None);
    }

    #[test]
    fn a_hundred_thousand_devices_fit_a_twenty_thousand_limit() {
        // In-process: a client and a server end per device, a quarter more
        // while rotating.
        let lanes = needed(250_000, 20_000).unwrap();
        assert_eq!(lanes, 20);
        assert!(lanes <= MAX_LANES);
    }
}
