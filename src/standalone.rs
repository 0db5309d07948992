//! `fleetsim emulator`: the emulator on its own, with its state in a directory, set up
//! like a run sets it up (policies, template, claim certificate through its own control
//! plane), so that any MQTT client can provision by claim at once and `fleetsim run
//! --emulator <dir>` can aim a fleet at it.
//!
//! What clients need is written into the directory: `emulator.json` ([`EmulatorInfo`])
//! names the endpoints and the files of the root CA and the claim certificate and key.
//! The claim identity is kept across restarts while it is still active in the registry.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{ControlPlane, SetupOutput, SetupSpec};
use crate::emulator::persist::{self, PersistError};
use crate::emulator::registry::CertificateStatus;
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::lanes::Lanes;
use crate::scenario::format_duration;

/// The file in the state directory that describes a running emulator.
pub const INFO_FILE: &str = "emulator.json";
const INFO_VERSION: u32 = 1;
const CLAIM_CERTIFICATE_FILE: &str = "claim/claim-certificate.pem";
const CLAIM_KEY_FILE: &str = "claim/claim-private.key";

/// How `fleetsim emulator` was asked to run.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub bind: IpAddr,
    pub mqtt_port: u16,
    pub control_port: u16,
    pub state_dir: PathBuf,
    /// Real lifetime of every device certificate the emulator issues.
    pub certificate_validity: Duration,
    pub template: String,
    /// Folder with the policy and template files; the built-in ones when absent.
    pub policies_dir: Option<PathBuf>,
    /// AWS's rate quotas to enforce with throttled answers; unlimited by default.
    pub quotas: crate::pacing::Quotas,
    /// Descriptor lanes that accept MQTT connections beside the main runtime,
    /// each with a descriptor table of its own (see [`crate::lanes`]); 0: none.
    pub lanes: usize,
}

/// What `emulator.json` holds: where to connect and which files to use. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmulatorInfo {
    pub version: u32,
    /// Host name the server certificate carries, for the MQTT endpoint.
    pub mqtt_host: String,
    pub mqtt_port: u16,
    pub control_url: String,
    pub region: String,
    pub root_ca: PathBuf,
    pub claim_certificate: PathBuf,
    pub claim_private_key: PathBuf,
    pub claim_certificate_id: String,
    /// The emulator's certificate lifetime, in the scenario's duration syntax (`365d`).
    pub certificate_validity: String,
    pub certificate_validity_seconds: u64,
    pub template: String,
    /// The process serving these endpoints, for scripts that want to stop it.
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("{}: cannot use the state directory: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Emulator(#[from] emulator::EmulatorError),
    #[error(transparent)]
    State(#[from] PersistError),
    #[error("setting up the emulator through its control plane: {0}")]
    Setup(String),
    #[error("{}: {reason}", path.display())]
    Info { path: PathBuf, reason: String },
    #[error("claim credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Lanes(#[from] crate::lanes::LaneError),
}

/// A running standalone emulator.
pub struct Standalone {
    emulator: Emulator,
    info: EmulatorInfo,
    info_path: PathBuf,
}

impl Standalone {
    /// Starts the emulator on the state directory, sets it up when the directory is new
    /// (or its claim certificate is no longer active), and writes `emulator.json`.
    pub async fn start(options: &StandaloneOptions) -> Result<Standalone, StandaloneError> {
        // Before the state directory's lock and journal are open: a lane
        // keeps a copy of every descriptor open when it starts.
        let lanes = match options.lanes {
            0 => None,
            count => Some(Lanes::start(count)?),
        };
        let state_dir = absolute_dir(&options.state_dir)?;
        let emulator = Emulator::start(emulator_config(options, &state_dir, lanes)).await?;
        let info_path = state_dir.join(INFO_FILE);
        let claim_id = match reusable_claim(&emulator, &info_path, &options.template) {
            Some(id) => id,
            None => set_up(&emulator, options, &state_dir).await?,
        };
        let info = EmulatorInfo {
            version: INFO_VERSION,
            mqtt_host: mqtt_host(options.bind),
            mqtt_port: emulator.mqtt_addr().port(),
            control_url: emulator.control_url(),
            region: emulator::REGION.to_owned(),
            root_ca: persist::StateDir::new(&state_dir).root_certificate(),
            claim_certificate: state_dir.join(CLAIM_CERTIFICATE_FILE),
            claim_private_key: state_dir.join(CLAIM_KEY_FILE),
            claim_certificate_id: claim_id,
            certificate_validity: format_duration(options.certificate_validity),
            certificate_validity_seconds: options.certificate_validity.as_secs(),
            template: options.template.clone(),
            pid: std::process::id(),
        };
        let json = serde_json::to_vec_pretty(&info).expect("invariant: the info always encodes");
        persist::write_atomically(&info_path, &json, 0o644)?;
        Ok(Standalone {
            emulator,
            info,
            info_path,
        })
    }

    pub fn info(&self) -> &EmulatorInfo {
        &self.info
    }

    pub fn info_path(&self) -> &Path {
        &self.info_path
    }

    pub fn emulator(&self) -> &Emulator {
        &self.emulator
    }

    /// What to tell the person who started it: every address and file a client needs.
    pub fn describe(&self) -> String {
        let info = &self.info;
        format!(
            "fleetsim emulator ready\n\
             \x20 MQTT endpoint:        {}:{} (MQTT 3.1.1 and 5 over mutual TLS)\n\
             \x20 control plane:        {} (region {})\n\
             \x20 root CA:              {}\n\
             \x20 claim certificate:    {}\n\
             \x20 claim private key:    {}\n\
             \x20 provisioning template: {}\n\
             \x20 certificate validity: {}\n\
             \x20 described in:         {}\n\
             Ctrl-C or SIGTERM stops it; the state directory keeps every identity.",
            info.mqtt_host,
            info.mqtt_port,
            info.control_url,
            info.region,
            info.root_ca.display(),
            info.claim_certificate.display(),
            info.claim_private_key.display(),
            info.template,
            info.certificate_validity,
            self.info_path.display(),
        )
    }

    /// Stops the listeners and writes the registry's last changes and snapshot.
    pub async fn shutdown(self) {
        self.emulator.shutdown().await;
    }
}

impl EmulatorInfo {
    /// Reads `emulator.json` from a state directory, or from the file itself.
    pub fn load(path: &Path) -> Result<EmulatorInfo, StandaloneError> {
        let file = if path.is_dir() {
            path.join(INFO_FILE)
        } else {
            path.to_owned()
        };
        let fault = |reason: String| StandaloneError::Info {
            path: file.clone(),
            reason,
        };
        let text = std::fs::read(&file).map_err(|e| {
            fault(format!(
                "cannot read the emulator description ({e}); is `fleetsim emulator` running on this state directory?"
            ))
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| fault(format!("not an emulator description: {e}")))
    }

    /// The claim certificate and key the emulator wrote, checked as a pair: a damaged,
    /// swapped or exposed file is refused here, by name, before any device starts.
    pub fn claim(&self) -> Result<SetupOutput, StandaloneError> {
        let claim =
            crate::identity::files::read_pair(&self.claim_certificate, &self.claim_private_key)
                .map_err(|e| StandaloneError::Credentials(e.to_string()))?;
        Ok(SetupOutput {
            claim_certificate_id: self.claim_certificate_id.clone(),
            claim_certificate_pem: claim.certificate_pem,
            claim_private_key_pem: claim.private_key_pem,
            endpoint: format!("{}:{}", self.mqtt_host, self.mqtt_port),
        })
    }

    pub fn root_pem(&self) -> Result<String, StandaloneError> {
        std::fs::read_to_string(&self.root_ca).map_err(|e| StandaloneError::Info {
            path: self.root_ca.clone(),
            reason: format!("cannot read: {e}"),
        })
    }

    pub fn certificate_validity(&self) -> Duration {
        Duration::from_secs(self.certificate_validity_seconds)
    }
}

fn emulator_config(
    options: &StandaloneOptions,
    state_dir: &Path,
    lanes: Option<Lanes>,
) -> EmulatorConfig {
    EmulatorConfig {
        mqtt_bind: SocketAddr::new(options.bind, options.mqtt_port),
        control_bind: SocketAddr::new(options.bind, options.control_port),
        certificate_validity: options.certificate_validity,
        state_dir: Some(state_dir.to_owned()),
        quotas: options.quotas,
        broker: emulator::broker::BrokerConfig {
            lanes,
            ..Default::default()
        },
        ..EmulatorConfig::default()
    }
}

/// Creates the directory (mode 0700) and returns it as an absolute path, so that
/// `emulator.json` names files a client can open from anywhere.
fn absolute_dir(dir: &Path) -> Result<PathBuf, StandaloneError> {
    use std::os::unix::fs::DirBuilderExt;
    let fault = |source| StandaloneError::StateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fault)?;
    std::fs::canonicalize(dir).map_err(fault)
}

/// The server certificate names `localhost`; a specific non-loopback address is its own name.
fn mqtt_host(bind: IpAddr) -> String {
    if bind.is_loopback() || bind.is_unspecified() {
        "localhost".to_owned()
    } else {
        bind.to_string()
    }
}

/// The claim certificate of an earlier start, when its files are there, it is still
/// active, and it was set up for the same template.
fn reusable_claim(emulator: &Emulator, info_path: &Path, template: &str) -> Option<String> {
    let previous = EmulatorInfo::load(info_path).ok()?;
    let files_exist = previous.claim_certificate.exists() && previous.claim_private_key.exists();
    let active = emulator
        .registry()
        .certificate_status(&previous.claim_certificate_id)
        == Some(CertificateStatus::Active);
    let same_template = emulator.registry().template(template).is_some();
    (files_exist && active && same_template).then_some(previous.claim_certificate_id)
}

/// Runs the same setup as `fleetsim run` through the emulator's own control plane and
/// stores the claim certificate (0644) and key (0600).
async fn set_up(
    emulator: &Emulator,
    options: &StandaloneOptions,
    state_dir: &Path,
) -> Result<String, StandaloneError> {
    let names = crate::run::setup_names(&options.template);
    let spec = match &options.policies_dir {
        Some(dir) => SetupSpec::load(names, dir),
        None => SetupSpec::builtin(names),
    }
    .map_err(|e| StandaloneError::Setup(e.to_string()))?;
    let control = ControlPlane::for_endpoint(&emulator.control_url(), emulator::REGION);
    let output = control
        .setup(&spec)
        .await
        .map_err(|e| StandaloneError::Setup(e.to_string()))?;
    let key_path = state_dir.join(CLAIM_KEY_FILE);
    persist::write_atomically(&key_path, output.claim_private_key_pem.as_bytes(), 0o600)?;
    let cert_path = state_dir.join(CLAIM_CERTIFICATE_FILE);
    persist::write_atomically(&cert_path, output.claim_certificate_pem.as_bytes(), 0o644)?;
    Ok(output.claim_certificate_id)
}
