//! Scenario files: the YAML model of a run, validated before anything starts.
//!
//! A scenario maps onto the typed structs below. Unknown fields, bad values
//! and impossible combinations are rejected with file, line, column, field
//! and reason. Fields under `certificates` and `rotation` are in *simulated*
//! time and are scaled by `clock.speedup`; every other duration and rate is
//! wall-clock time.

mod build;
mod faults;
mod fields;
mod rules;
mod syntax;
mod tree;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::identity::tls::KeyExchange;
pub use faults::{ClockSkew, Crash, DropPoint, Drops, EmulatorRestart, Faults, ProvisioningFaults};
pub use values::{format_duration, parse_duration};

/// The field name used for problems that belong to no field in particular.
const TOP_LEVEL: &str = "(top level)";

/// A whole run, as written in a scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub target: Target,
    pub fleet: Fleet,
    pub arrival: Arrival,
    pub provisioning: Provisioning,
    pub tls: Tls,
    pub clock: Clock,
    pub certificates: Certificates,
    pub rotation: Rotation,
    pub telemetry: Telemetry,
    pub run: RunLimits,
    pub credentials: CredentialStorage,
    pub slo: Slo,
    /// What goes wrong on purpose; nothing by default.
    pub faults: Faults,
    /// The fleet's own rate limits. `None` (no `pacing` section) means AWS's
    /// default quotas on the `aws` target and none on `local`.
    pub pacing: Option<crate::pacing::Quotas>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The in-process emulator (default).
    Local,
    /// Real AWS IoT Core, prepared by `fleetsim setup`.
    Aws,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub size: u64,
    pub serial_pattern: SerialPattern,
}

/// A serial-number pattern such as `qs-{seq:05}`: literal text around one
/// `{seq}` placeholder with an optional zero-padded width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPattern {
    pub prefix: String,
    pub width: usize,
    pub suffix: String,
}

/// Devices per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub rate: Rate,
    /// Optional phases run in order; after the last phase, devices keep
    /// arriving at `rate` until the fleet is complete.
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub rate: Rate,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provisioning {
    pub method: ProvisioningMethod,
    /// Name of the provisioning template devices call RegisterThing on.
    pub template: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningMethod {
    /// CreateCertificateFromCsr with an EC P-256 key generated on the device.
    CsrEcP256,
    /// CreateKeysAndCertificate: the server generates an RSA-2048 key and
    /// sends it with the certificate, as AWS does.
    CreateKeysRsa,
}

impl ProvisioningMethod {
    /// The device key type this method produces, as the report names it.
    pub fn key_type(self) -> &'static str {
        match self {
            ProvisioningMethod::CsrEcP256 => "ec_p256",
            ProvisioningMethod::CreateKeysRsa => "rsa_2048",
        }
    }
}

/// What every device connection offers in its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tls {
    /// The one (EC)DHE group devices offer, and so the one negotiated.
    pub key_exchange: KeyExchange,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// Simulated seconds per real second.
    pub speedup: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Certificates {
    /// Simulated lifetime of every issued device certificate.
    pub validity: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub enabled: bool,
    /// Simulated interval between a device's expiry checks.
    pub check_every: Duration,
    /// Rotate when less than this (simulated) remains before notAfter.
    pub renew_before: Duration,
    /// Up to this much (simulated) random delay added to each check.
    pub jitter: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub enabled: bool,
    /// Wall-clock interval between two messages of one device.
    pub interval: Duration,
    pub qos: Qos,
    pub payload_bytes: usize,
    /// Topic suffix under the device's own prefix `fleetsim/<thing>/`.
    pub topic: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunLimits {
    /// Wall-clock length of the run, from the first arrival.
    pub duration: Duration,
    /// Deadline of every single step (connect, request, reply).
    pub step_timeout: Duration,
    /// First retry delay; doubles up to `backoff_max`, with full jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Attempts per step before the device gives up with a failure.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CredentialStorage {
    /// Files under `<dir>/<run name>/<serial>/`.
    Disk {
        dir: PathBuf,
    },
    Memory,
}

/// Service-level objectives; an absent one is not checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Slo {
    pub connect_p99: Option<Duration>,
    pub provisioning_p99: Option<Duration>,
    pub max_failure_ratio: Option<f64>,
    pub min_rotations_per_device: Option<u64>,
}

/// Why a scenario was refused; `Display` reads `file:line:column: field: reason`.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read scenario: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        reason: String,
    },
}

impl ScenarioError {
    fn invalid(path: &Path, problem: fields::Problem) -> ScenarioError {
        ScenarioError::Invalid {
            path: path.to_owned(),
            line: problem.at.line,
            column: problem.at.column,
            field: problem.field,
            reason: problem.reason,
        }
    }
}

impl Scenario {
    /// The rate limits the fleet keeps to (see [`Scenario::pacing`]).
    pub fn quotas(&self) -> crate::pacing::Quotas {
        match (self.pacing, self.target) {
            (Some(quotas), _) => quotas,
            (None, Target::Aws) => crate::pacing::Quotas::aws_defaults(),
            (None, Target::Local) => crate::pacing::Quotas::default(),
        }
    }

    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let bytes = read_bounded(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|error| not_utf8(path, &bytes, &error))?;
        Scenario::parse(text, path)
    }

    /// Parses and validates scenario text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let root = tree::parse(text).map_err(|error| syntax::problem(text, &error));
        root.and_then(|root| build::scenario(&root))
            .map_err(|problem| ScenarioError::invalid(path, problem))
    }

    /// Converts a simulated duration into wall-clock time.
    pub fn to_real(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.clock.speedup)
    }
}

/// The largest scenario file read. Real ones are a few hundred bytes; the bound keeps a
/// mistaken path (a log, `/dev/zero`) from being read into memory whole.
pub const MAX_SCENARIO_BYTES: u64 = 1024 * 1024;

fn read_bounded(path: &Path) -> Result<Vec<u8>, ScenarioError> {
    use std::io::Read;
    let read_error = |source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_SCENARIO_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        let problem = fields::Problem {
            at: tree::Pos { line: 1, column: 1 },
            field: TOP_LEVEL.to_owned(),
            reason: format!(
                "the file is larger than {MAX_SCENARIO_BYTES} bytes; is it a scenario?"
            ),
        };
        return Err(ScenarioError::invalid(path, problem));
    }
    Ok(bytes)
}

/// Points at the first byte that is not UTF-8, inside the field it interrupts.
fn not_utf8(path: &Path, bytes: &[u8], error: &std::str::Utf8Error) -> ScenarioError {
    let valid = std::str::from_utf8(&bytes[..error.valid_up_to()])
        .expect("invariant: bytes up to valid_up_to are UTF-8");
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    let at = tree::Pos {
        line: valid.matches('\n').count() + 1,
        column: valid[line_start..].chars().count() + 1,
    };
    // The field is the one whose token holds the byte: replay the parser over the text with
    // the bad bytes replaced, up to that token's start.
    let line = &valid[line_start..];
    let token = line
        .rfind([' ', '\t', ':', ',', '[', '{'])
        .map_or(0, |i| i + 1);
    let token_at = tree::Pos {
        line: at.line,
        column: line[..token].chars().count() + 1,
    };
    let lossy = String::from_utf8_lossy(bytes);
    let byte = bytes[error.valid_up_to()];
    let problem = fields::Problem {
        at,
        field: syntax::field_path_at(&lossy, token_at),
        reason: format!("byte {byte:#04x} is not UTF-8; a scenario must be UTF-8 text"),
    };
    ScenarioError::invalid(path, problem)
}

impl SerialPattern {
    /// The serial number of the device with this zero-based index.
    pub fn serial(&self, index: u64) -> String {
        format!(
            "{}{:0width$}{}",
            self.prefix,
            index,
            self.suffix,
            width = self.width
        )
    }
}
