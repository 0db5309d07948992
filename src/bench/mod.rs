//! `fleetsim bench`: benchmarks that drive the product's own paths (the run,
//! the emulator, the device's MQTT client) and write their results as JSON.
//! No benchmark takes a shortcut the real run does not: a fleet benchmark is
//! a `fleetsim run` of a generated scenario, watched through its recorder.
//!
//! [`crypto`] is the ceiling every throughput is divided by; [`fleet`]
//! provisions, idles, rotates or publishes a fleet; [`mosquitto`] puts the
//! emulator beside a mosquitto broker with the same CA and certificates.
//! [`host`] reads what the machine was doing (RSS, load) next to each number.

pub mod child;
pub mod crypto;
pub mod fleet;
pub mod host;
pub mod micro;
pub mod mosquitto;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::identity::tls::KeyExchange;
use child::{EmulatorProcess, TempDir};
use crypto::CryptoCeiling;
use fleet::{FleetBench, FleetResults, Then};

/// Why a benchmark could not run or could not write its results.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark setup failed: {0}")]
    Setup(String),
    #[error("benchmark run failed: {0}")]
    Run(String),
    #[error("{path}: cannot write results: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The crypto ceiling for every key exchange a device can offer; the
/// default one first.
pub async fn ceilings(seconds: f64) -> Result<Vec<CryptoCeiling>, BenchError> {
    let mut all = Vec::new();
    for key_exchange in KeyExchange::ALL {
        all.push(ceiling(key_exchange, seconds).await?);
    }
    Ok(all)
}

/// The ceiling on blocking threads, so the runtime's own threads stay free.
pub async fn ceiling(key_exchange: KeyExchange, seconds: f64) -> Result<CryptoCeiling, BenchError> {
    tokio::task::spawn_blocking(move || crypto::measure(key_exchange, seconds))
        .await
        .map_err(|e| BenchError::Run(format!("crypto ceiling: {e}")))?
}

/// Provisioning and a rotation wave, with the ceiling measured just before
/// and just after in the same process (the ratios take the higher). Without
/// a `rate`, devices arrive at 80% of the first ceiling, which a fleetsim
/// that reaches its target keeps up with. `lanes` as `fleetsim run --lanes`.
pub async fn provision(
    devices: u64,
    rate: Option<f64>,
    ceiling_seconds: f64,
    lanes: Option<usize>,
) -> Result<FleetResults, BenchError> {
    let ceiling = ceiling(KeyExchange::default(), ceiling_seconds).await?;
    let rate = rate.unwrap_or(0.8 * ceiling.provisionings_per_second);
    let bench = FleetBench {
        devices,
        rate,
        then: Then::Rotate,
        standalone: None,
        lanes,
    };
    let results = bench.run(Some(ceiling)).await?;
    let after = self::ceiling(KeyExchange::default(), ceiling_seconds).await?;
    Ok(results.with_ceiling_after(after))
}

/// Memory of an idle online fleet with the emulator in its own process, so
/// that the simulator's share and the emulator's are measured apart.
pub async fn memory(devices: u64, rate: f64) -> Result<FleetResults, BenchError> {
    let state = TempDir::new()?;
    let emulator = EmulatorProcess::start(state.path()).await?;
    let bench = FleetBench {
        devices,
        rate,
        then: Then::Idle,
        standalone: Some((state.path().to_owned(), emulator.pid())),
        lanes: None,
    };
    let results = bench.run(None).await;
    emulator.stop().await;
    results
}

/// QoS 1 telemetry from an online fleet, through the in-process emulator
/// or, with `standalone`, through a `fleetsim emulator` child process (which
/// halves the open files this process needs).
pub async fn telemetry(
    devices: u64,
    rate: f64,
    interval: Duration,
    seconds: f64,
    standalone: bool,
) -> Result<FleetResults, BenchError> {
    let then = Then::Publish { interval, seconds };
    if !standalone {
        let bench = FleetBench {
            devices,
            rate,
            then,
            standalone: None,
            lanes: None,
        };
        return bench.run(None).await;
    }
    let state = TempDir::new()?;
    let emulator = EmulatorProcess::start(state.path()).await?;
    let bench = FleetBench {
        devices,
        rate,
        then,
        standalone: Some((state.path().to_owned(), emulator.pid())),
        lanes: None,
    };
    let results = bench.run(None).await;
    emulator.stop().await;
    results
}

/// Writes `results` as pretty JSON to `path`, creating its folder.
pub fn write_results(path: &Path, results: &impl Serialize) -> Result<String, BenchError> {
    let text = serde_json::to_string_pretty(results).expect("invariant: plain data serializes");
    let write = |source| BenchError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    std::fs::write(path, &text).map_err(write)?;
    Ok(text)
}

/// The median of `values` (sorted in place); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
