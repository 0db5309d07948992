//! Credential writes are atomic under `kill -9`: a real `fleetsim run`
//! process is killed with SIGKILL at random moments while its fleet
//! provisions and rotates against a standalone emulator (which survives
//! every kill), ten times. After each kill, every device folder the run
//! left must hold a key and certificate that match and that the emulator
//! accepts.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleetsim::device::mqtt::{ConnectSettings, Endpoint};
use fleetsim::device::prove_works;
use fleetsim::identity::store::CredentialStore;
use fleetsim::identity::tls::{KeyExchange, TlsSettings};
use rand::Rng;
use support::standalone::StandaloneProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_fleetsim");
const KILLS: usize = 10;

/// 30 simulated days are 3 real seconds, as the emulator issues them:
/// devices rotate 2 s after each certificate arrives.
fn write_scenario(path: &Path, certs: &Path) {
    let yaml = format!(
        r#"name: killed
fleet:
  size: 20
  serial_pattern: "k-{{seq:03}}"
arrival:
  rate: 20/s
clock:
  speedup: 864000
certificates:
  validity: 30d
rotation:
  check_every: 6h
  renew_before: 10d
  jitter: 6h
telemetry:
  interval: 500ms
run:
  duration: 60s
  backoff_base: 50ms
  backoff_max: 500ms
  max_attempts: 20
credentials:
  storage: disk
  dir: "{}"
"#,
        certs.display()
    );
    std::fs::write(path, yaml).unwrap();
}

fn settings(emulator: &StandaloneProcess) -> ConnectSettings {
    ConnectSettings {
        endpoint: Endpoint {
            host: emulator.info.mqtt_host.clone(),
            port: emulator.info.mqtt_port,
        },
        keep_alive: Duration::from_secs(60),
        step_timeout: Duration::from_secs(10),
        sources: Default::default(),
    }
}

/// Every device folder holds a matching pair the emulator accepts;
/// returns how many folders there were, and how many held a rotation's
/// backup (the kill came mid-rotation).
async fn check_every_device(
    root: &Path,
    emulator: &StandaloneProcess,
    kill: usize,
) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return (0, 0);
    };
    let mut mid_rotation = 0;
    let store = CredentialStore::disk(root).unwrap();
    let tls = TlsSettings {
        root_pem: emulator.info.root_pem().unwrap(),
        key_exchange: KeyExchange::default(),
    };
    let mut devices = 0;
    for entry in entries {
        let serial = entry.unwrap().file_name().into_string().unwrap();
        let stored = store
            .load(&serial)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("kill {kill}: {serial}'s folder holds no identity"));
        assert!(
            stored.current.key_matches_certificate().unwrap(),
            "kill {kill}: {serial}'s key and certificate match"
        );
        let thing = format!("fleetsim-{serial}");
        assert!(
            prove_works(&settings(emulator), &tls, &thing, &stored.current).await,
            "kill {kill}: the emulator accepts {serial}'s stored identity"
        );
        devices += 1;
        mid_rotation += usize::from(stored.previous.is_some());
    }
    (devices, mid_rotation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_run_at_random_moments_never_leaves_a_broken_credential_on_disk() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let emulator = StandaloneProcess::start(state.path(), "3s");
    let (scenario, certs) = (work.path().join("killed.yaml"), work.path().join("certs"));
    write_scenario(&scenario, &certs);
    let mut checked = 0;
    for kill in 1..=KILLS {
        let mut run = Command::new(BINARY)
            .arg("run")
            .arg(&scenario)
            .arg("--emulator")
            .arg(state.path())
            .arg("--no-metrics")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary runs");
        let after = Duration::from_millis(rand::rng().random_range(1_000..4_500));
        tokio::time::sleep(after).await;
        assert!(
            run.try_wait().unwrap().is_none(),
            "kill {kill}: the run was still going"
        );
        run.kill().expect("SIGKILL the run");
        run.wait().unwrap();
        let (devices, mid_rotation) =
            check_every_device(&certs.join("killed"), &emulator, kill).await;
        println!(
            "kill {kill} after {after:?}: {devices} device folders, all usable \
             ({mid_rotation} mid-rotation)"
        );
        checked += devices;
    }
    assert!(
        checked > KILLS * 10,
        "the kills found devices on disk: {checked}"
    );
    emulator.stop();
}
