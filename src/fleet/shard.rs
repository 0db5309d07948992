//! Which slice of the fleet one process simulates when a run is split over
//! several processes (`--shard I/N`, or a Kubernetes Indexed Job's
//! `JOB_COMPLETION_INDEX`).
//!
//! Devices are interleaved: device `k` belongs to shard `k mod N` and arrives
//! at exactly the offset it has in the single-process schedule. Every shard
//! then carries a 1/N scaled copy of the whole load profile (each phase, each
//! rate change, the same first and last arrival), so shards finish together,
//! share latency conditions, and the union of their arrivals is the
//! single-process schedule device for device. Contiguous ranges would instead
//! give shard 0 the whole first phase and the last shard nothing but the
//! steady tail.

use std::fmt;
use std::str::FromStr;

/// One shard out of `count`; `Shard::WHOLE` is the whole fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Why a shard could not be formed; always the caller's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard `{0}` is not of the form I/N (for example 0/3)")]
    Syntax(String),
    #[error("shard count must be at least 1, got {0}")]
    NoShards(u32),
    #[error("shard index {index} is out of range: it must be below the shard count {count}")]
    OutOfRange { index: u32, count: u32 },
    #[error("{variable}=`{value}` is not a shard index (a whole number from 0)")]
    BadEnvironment { variable: String, value: String },
    #[error("{variable} is not set; give --shard I/N or set it (Kubernetes Indexed Jobs do)")]
    MissingEnvironment { variable: String },
}

impl Shard {
    /// The whole fleet in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The environment variable a Kubernetes Indexed Job sets in each pod.
    pub const INDEX_VARIABLE: &str = "JOB_COMPLETION_INDEX";

    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::NoShards(count));
        }
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// The shard whose index is in `variable`'s `value`, out of `count`.
    pub fn from_index_variable(
        variable: &str,
        value: Option<&str>,
        count: u32,
    ) -> Result<Shard, ShardError> {
        let value = value.ok_or_else(|| ShardError::MissingEnvironment {
            variable: variable.to_owned(),
        })?;
        let index = value
            .trim()
            .parse()
            .map_err(|_| ShardError::BadEnvironment {
                variable: variable.to_owned(),
                value: value.to_owned(),
            })?;
        Shard::new(index, count)
    }

    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// Whether device `device` (its index in the whole fleet) is this shard's.
    pub fn owns(self, device: u64) -> bool {
        device % u64::from(self.count) == u64::from(self.index)
    }

    /// How many of the first `fleet_size` devices this shard owns.
    pub fn size_of(self, fleet_size: u64) -> u64 {
        let (count, index) = (u64::from(self.count), u64::from(self.index));
        fleet_size / count + u64::from(index < fleet_size % count)
    }

    /// The fleet indexes this shard owns among the first `fleet_size`, in order.
    pub fn devices(self, fleet_size: u64) -> impl Iterator<Item = u64> {
        (u64::from(self.index)..fleet_size).step_by(self.count as usize)
    }
}

impl Default for Shard {
    fn default() -> Shard {
        Shard::WHOLE
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(text.to_owned());
        let (index, count) = text.split_once('/').ok_or_else(syntax)?;
        let index = index.trim().parse().map_err(|_| syntax())?;
        let count = count.trim().parse().map_err(|_| syntax())?;
        Shard::new(index, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_text_is_index_slash_count() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(Shard { index: 2, count: 3 }.to_string(), "2/3");
    }

    #[test]
    fn an_index_at_or_past_the_count_is_refused() {
        assert_eq!(
            "3/3".parse::<Shard>(),
            Err(ShardError::OutOfRange { index: 3, count: 3 })
        );
        assert_eq!("0/0".parse::<Shard>(), Err(ShardError::NoShards(0)));
        for bad in ["3", "a/3", "1/b", "-1/3", "1/3/4", ""] {
            assert_eq!(bad.parse::<Shard>(), Err(ShardError::Syntax(bad.into())));
        }
    }

    #[test]
    fn the_index_can_come_from_the_job_completion_index() {
        let shard = Shard::from_index_variable("JOB_COMPLETION_INDEX", Some("4"), 5);
        assert_eq!(shard, Ok(Shard { index: 4, count: 5 }));
        let missing = Shard::from_index_variable("JOB_COMPLETION_INDEX", None, 5);
        assert!(matches!(
            missing,
            Err(ShardError::MissingEnvironment { .. })
        ));
        let garbage = Shard::from_index_variable("JOB_COMPLETION_INDEX", Some("x"), 5);
        assert!(matches!(garbage, Err(ShardError::BadEnvironment { .. })));
        let past = Shard::from_index_variable("JOB_COMPLETION_INDEX", Some("5"), 5);
        assert_eq!(past, Err(ShardError::OutOfRange { index: 5, count: 5 }));
    }

    #[test]
    fn devices_are_interleaved() {
        let shard = Shard { index: 1, count: 3 };
        assert_eq!(shard.devices(10).collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(shard.size_of(10), 3);
        assert_eq!(Shard { index: 0, count: 3 }.size_of(10), 4);
    }

    proptest! {
        #[test]
        fn shards_partition_the_fleet(fleet in 0u64..2_000, count in 1u32..17) {
            let mut owners = vec![0u32; fleet as usize];
            for index in 0..count {
                let shard = Shard::new(index, count).unwrap();
                let devices: Vec<u64> = shard.devices(fleet).collect();
                prop_assert_eq!(devices.len() as u64, shard.size_of(fleet));
                for device in devices {
                    prop_assert!(shard.owns(device));
                    owners[device as usize] += 1;
                }
            }
            prop_assert!(owners.iter().all(|&n| n == 1), "every device has exactly one shard");
        }

        #[test]
        fn shard_sizes_differ_by_at_most_one(fleet in 0u64..100_000, count in 1u32..64) {
            let sizes: Vec<u64> = (0..count).map(|i| Shard::new(i, count).unwrap().size_of(fleet)).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(max - min <= 1);
            prop_assert_eq!(sizes.iter().sum::<u64>(), fleet);
        }
    }
}
