//! The arrival schedule: the offset from the start of the run at which
//! each device arrives, from the scenario's phases and steady rate.
//!
//! Arrivals are evenly spaced within a phase, so the offered load is exactly
//! the rate asked for; latency is then measured from these offsets, not
//! from when a busy process got round to starting the device.

use std::time::Duration;

use crate::scenario::{Arrival, Rate};

#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalSchedule {
    phases: Vec<(Rate, Duration)>,
    rate: Rate,
}

impl ArrivalSchedule {
    pub fn new(arrival: &Arrival) -> ArrivalSchedule {
        ArrivalSchedule {
            phases: arrival
                .phases
                .iter()
                .map(|p| (p.rate, p.duration))
                .collect(),
            rate: arrival.rate,
        }
    }

    /// The arrival offsets of the whole (unbounded) fleet, in order.
    pub fn offsets(&self) -> impl Iterator<Item = Duration> + '_ {
        let mut phase = 0;
        let mut phase_start = Duration::ZERO;
        let mut in_phase = 0u64;
        std::iter::from_fn(move || {
            loop {
                let (rate, length) = match self.phases.get(phase) {
                    Some(&(rate, length)) => (rate, Some(length)),
                    None => (self.rate, None),
                };
                let offset = Duration::from_secs_f64(in_phase as f64 / rate.per_second);
                if length.is_none_or(|length| offset < length) {
                    in_phase += 1;
                    return Some(phase_start + offset);
                }
                phase_start += length.expect("checked above");
                phase += 1;
                in_phase = 0;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Phase;

    fn rate(per_second: f64) -> Rate {
        Rate { per_second }
    }

    #[test]
    fn a_steady_rate_spaces_arrivals_evenly() {
        let schedule = ArrivalSchedule::new(&Arrival {
            rate: rate(50.0),
            phases: vec![],
        });
        let offsets: Vec<_> = schedule.offsets().take(3).collect();
        assert_eq!(offsets, [0, 20, 40].map(Duration::from_millis).to_vec());
    }

    #[test]
    fn phases_run_in_order_then_the_steady_rate_continues() {
        let schedule = ArrivalSchedule::new(&Arrival {
            rate: rate(1.0),
            phases: vec![
                Phase {
                    rate: rate(10.0),
                    duration: Duration::from_secs(1),
                },
                Phase {
                    rate: rate(2.0),
                    duration: Duration::from_secs(1),
                },
            ],
        });
        let offsets: Vec<_> = schedule.offsets().take(14).map(|d| d.as_millis()).collect();
        assert_eq!(
            &offsets[..10],
            &[0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
        );
        assert_eq!(&offsets[10..], &[1000, 1500, 2000, 3000]);
    }
}
