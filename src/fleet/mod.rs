//! The fleet: when each device arrives, and the spawner that starts device
//! tasks on that schedule until the fleet is complete or the run stops.

pub mod arrival;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::device::{DeviceContext, DeviceOutcome, task};
use crate::scenario::SerialPattern;

pub use arrival::ArrivalSchedule;

/// Which slice of the fleet this process simulates.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub size: u64,
    pub serials: SerialPattern,
    pub arrivals: ArrivalSchedule,
}

/// Spawns every device at its arrival time (measured from `start`) and
/// waits for all of them. Cancelling `spawning` stops new arrivals; the
/// devices themselves stop on the context's own token.
pub async fn run(
    plan: &FleetPlan,
    context: Arc<DeviceContext>,
    start: Instant,
    spawning: CancellationToken,
) -> Vec<DeviceOutcome> {
    let mut devices = JoinSet::new();
    for (index, offset) in plan.arrivals.offsets().take(plan.size as usize).enumerate() {
        let due = start + offset;
        tokio::select! {
            _ = spawning.cancelled() => break,
            _ = sleep_until(due) => {}
        }
        let serial = plan.serials.serial(index as u64);
        devices.spawn(task::run(Arc::clone(&context), serial, due));
    }
    info!(devices = devices.len(), "arrivals finished");
    let mut outcomes = Vec::with_capacity(devices.len());
    while let Some(joined) = devices.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            // A device task that panicked is a bug in fleetsim; surface it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    outcomes.sort_by(|a, b| a.serial.cmp(&b.serial));
    outcomes
}
