//! The fleet: when each device arrives, which devices this process owns
//! when the run is sharded, and the spawner that starts device tasks on that
//! schedule until the fleet (or its shard) is complete or the run stops.

pub mod arrival;
pub mod drill;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::device::{DeviceContext, DeviceOutcome, task};
use crate::lanes::Lanes;
use crate::scenario::SerialPattern;

pub use arrival::ArrivalSchedule;
pub use shard::{Shard, ShardError};

/// The whole fleet, and which slice of it this process simulates.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    /// Devices in the whole fleet, every shard together.
    pub size: u64,
    pub serials: SerialPattern,
    pub arrivals: ArrivalSchedule,
    pub shard: Shard,
}

/// One device this process simulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// Its index in the whole fleet (the serial's `{seq}`).
    pub index: u64,
    pub serial: String,
    /// When it arrives, from the start of the run: the single-process offset.
    pub offset: Duration,
}

impl FleetPlan {
    /// Devices this process simulates.
    pub fn shard_size(&self) -> u64 {
        self.shard.size_of(self.size)
    }

    /// This shard's devices in arrival order, each at the offset it has in
    /// the single-process schedule.
    pub fn devices(&self) -> impl Iterator<Item = PlannedDevice> + '_ {
        let shard = self.shard;
        (0..self.size)
            .zip(self.arrivals.offsets())
            .filter(move |&(index, _)| shard.owns(index))
            .map(|(index, offset)| PlannedDevice {
                index,
                serial: self.serials.serial(index),
                offset,
            })
    }
}

/// Spawns every device at its arrival time (measured from `start`) and
/// waits for all of them. Cancelling `spawning` stops new arrivals; the
/// devices themselves stop on the context's own token. With descriptor
/// lanes, device `i` of the fleet lives on lane `i` modulo their number, so
/// its sockets and files stay in that lane's descriptor table.
pub async fn run(
    plan: &FleetPlan,
    context: Arc<DeviceContext>,
    start: Instant,
    spawning: CancellationToken,
    lanes: Option<&Lanes>,
) -> Vec<DeviceOutcome> {
    let mut devices = JoinSet::new();
    for device in plan.devices() {
        let due = start + device.offset;
        tokio::select! {
            _ = spawning.cancelled() => break,
            _ = sleep_until(due) => {}
        }
        let life = task::run(Arc::clone(&context), device.serial, due);
        match lanes {
            Some(lanes) => devices.spawn_on(life, lanes.handle(device.index)),
            None => devices.spawn(life),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Arrival, Phase, Rate};
    use proptest::prelude::*;

    fn plan(size: u64, shard: Shard) -> FleetPlan {
        let rate = |per_second| Rate { per_second };
        FleetPlan {
            size,
            serials: SerialPattern {
                prefix: "dev-".into(),
                width: 4,
                suffix: String::new(),
            },
            arrivals: ArrivalSchedule::new(&Arrival {
                rate: rate(40.0),
                phases: vec![Phase {
                    rate: rate(400.0),
                    duration: Duration::from_millis(250),
                }],
            }),
            shard,
        }
    }

    #[test]
    fn a_whole_plan_is_the_single_process_schedule() {
        let whole = plan(5, Shard::WHOLE);
        let serials: Vec<_> = whole.devices().map(|d| d.serial).collect();
        assert_eq!(
            serials,
            ["dev-0000", "dev-0001", "dev-0002", "dev-0003", "dev-0004"]
        );
        assert_eq!(whole.shard_size(), 5);
    }

    #[test]
    fn a_shard_keeps_each_device_at_its_single_process_offset() {
        let shard = plan(10, Shard::new(1, 3).unwrap());
        let devices: Vec<_> = shard.devices().map(|d| (d.serial, d.offset)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            devices,
            [
                ("dev-0001".to_owned(), ms(2) + Duration::from_micros(500)),
                ("dev-0004".to_owned(), ms(10)),
                ("dev-0007".to_owned(), ms(17) + Duration::from_micros(500)),
            ]
        );
    }

    proptest! {
        #[test]
        fn shards_together_are_exactly_the_whole_fleet(size in 0u64..400, count in 1u32..9) {
            let whole: Vec<PlannedDevice> = plan(size, Shard::WHOLE).devices().collect();
            let mut union: Vec<PlannedDevice> = (0..count)
                .flat_map(|index| plan(size, Shard::new(index, count).unwrap()).devices().collect::<Vec<_>>())
                .collect();
            union.sort_by_key(|d| d.index);
            prop_assert_eq!(union, whole, "same devices, serials and offsets, none twice");
        }
    }
}
