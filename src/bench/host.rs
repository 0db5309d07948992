//! What the machine was doing while a benchmark ran: resident memory of a
//! process, the load average and the core count, read from `/proc`, so that
//! every number in the results carries its context.

use serde::Serialize;

/// The machine beside a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub cores: usize,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages.
    pub load_average: [f64; 3],
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
}

impl HostInfo {
    pub fn now() -> HostInfo {
        HostInfo {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            load_average: load_average(),
            unix_time: crate::identity::unix_seconds(std::time::SystemTime::now()),
        }
    }
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [(); 3].map(|()| fields.next().unwrap_or(0.0))
}

/// Resident set size of a process in KiB (`VmRSS`), `None` when it cannot
/// be read (no such process, or no `/proc`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's resident set size in KiB.
pub fn own_rss_kib() -> Option<u64> {
    rss_kib(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size_and_the_host_a_core() {
        assert!(own_rss_kib().is_some_and(|kib| kib > 0));
        assert!(HostInfo::now().cores >= 1);
    }
}
