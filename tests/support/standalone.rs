//! A `fleetsim emulator` process for tests: started on free loopback ports
//! with a state directory, ready once it says so, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fleetsim::standalone::EmulatorInfo;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const STARTUP: Duration = Duration::from_secs(30);

pub struct StandaloneProcess {
    pub child: Child,
    pub info: EmulatorInfo,
}

impl StandaloneProcess {
    /// Starts the emulator on `state_dir` with `validity` for the
    /// certificates it issues, and waits until it is ready.
    pub fn start(state_dir: &Path, validity: &str) -> StandaloneProcess {
        StandaloneProcess::start_on(state_dir, validity, 0, 0)
    }

    /// Like `start`, on the given ports (0 picks free ones): a restart on
    /// the ports of the previous start keeps the endpoint clients know.
    pub fn start_on(
        state_dir: &Path,
        validity: &str,
        mqtt_port: u16,
        control_port: u16,
    ) -> StandaloneProcess {
        StandaloneProcess::start_with(state_dir, validity, (mqtt_port, control_port), &[])
    }

    /// Like `start_on`, with more command-line arguments.
    pub fn start_with(
        state_dir: &Path,
        validity: &str,
        (mqtt_port, control_port): (u16, u16),
        more: &[&str],
    ) -> StandaloneProcess {
        let (mqtt_port, control_port) = (mqtt_port.to_string(), control_port.to_string());
        let mut child = Command::new(BINARY)
            .args([
                "emulator",
                "--mqtt-port",
                &mqtt_port,
                "--control-port",
                &control_port,
            ])
            .args(["--certificate-validity", validity, "--state-dir"])
            .arg(state_dir)
            .args(more)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("fleetsim emulator ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let ready = ready.recv_timeout(STARTUP).is_ok();
        let info = ready.then(|| EmulatorInfo::load(state_dir).ok()).flatten();
        match info {
            Some(info) => StandaloneProcess { child, info },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the emulator did not get ready and write emulator.json within {STARTUP:?}");
            }
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, "-TERM");
        wait(&mut self.child)
    }

    /// SIGKILL: the crash a state directory must survive.
    pub fn crash(mut self) {
        signal(&self.child, "-KILL");
        wait(&mut self.child);
    }
}

impl Drop for StandaloneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn wait(child: &mut Child) -> ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().expect("wait on the emulator") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the emulator did not exit within 10 s");
}
