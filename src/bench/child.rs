//! A `fleetsim emulator` child process for the benchmarks that measure the
//! emulator apart from the simulator: started from this very executable on a
//! fresh state directory with ephemeral ports, ready once its
//! `emulator.json` names its process id, and stopped by its pid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::BenchError;
use crate::standalone::EmulatorInfo;

/// How long a standalone emulator may take to write its `emulator.json`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `fleetsim emulator` that this benchmark started.
pub struct EmulatorProcess {
    child: Child,
    pid: u32,
}

impl EmulatorProcess {
    /// Starts the emulator on `state_dir` and waits until it is set up.
    pub async fn start(state_dir: &Path) -> Result<EmulatorProcess, BenchError> {
        let exe = std::env::current_exe()
            .map_err(|e| BenchError::Setup(format!("cannot find the fleetsim executable: {e}")))?;
        let child = Command::new(exe)
            .args([
                "emulator",
                "--mqtt-port",
                "0",
                "--control-port",
                "0",
                "--state-dir",
            ])
            .arg(state_dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("cannot start `fleetsim emulator`: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Setup("the emulator exited at once".into()))?;
        let process = EmulatorProcess { child, pid };
        process.wait_ready(state_dir).await?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait_ready(&self, state_dir: &Path) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        while tokio::time::Instant::now() < deadline {
            if EmulatorInfo::load(state_dir).is_ok_and(|info| info.pid == self.pid) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::Setup(format!(
            "the standalone emulator did not write {}/emulator.json within {READY_WITHIN:?}",
            state_dir.display()
        )))
    }

    /// Kills the emulator and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A folder under the system's temporary directory, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Result<TempDir, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("fleetsim-bench-{}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
