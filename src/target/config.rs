//! `certs/<target>/target.json`: what `fleetsim setup` created and where a
//! run connects, read by `fleetsim run` and `fleetsim cleanup`. Every file
//! of a target is written with mode 0600 in a 0700 folder, because the
//! claim key can provision any number of devices.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TargetError;
use crate::emulator::persist;

/// The target description's file name inside `certs/<target>/`.
pub const TARGET_FILE: &str = "target.json";
pub(super) const CLAIM_CERTIFICATE_FILE: &str = "claim-certificate.pem";
pub(super) const CLAIM_KEY_FILE: &str = "claim-private.key";
pub(super) const ROOT_CA_FILE: &str = "root-ca.pem";
const VERSION: u32 = 1;

/// What `setup` leaves for `run` and `cleanup`. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetConfig {
    pub version: u32,
    pub prefix: String,
    pub region: String,
    pub account_id: String,
    /// The AWS profile setup used, so that run and cleanup use it too.
    #[serde(default)]
    pub profile: Option<String>,
    /// A control-plane endpoint override (the emulator); `None` is AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `host` or `host:port` of the MQTT data endpoint (`iot:Data-ATS`).
    pub data_endpoint: String,
    pub root_ca: PathBuf,
    pub claim_certificate: PathBuf,
    pub claim_private_key: PathBuf,
    pub claim_certificate_id: String,
    pub claim_policy: String,
    pub device_policy: String,
    pub template: String,
    pub provisioning_role_arn: String,
    /// Whether setup created the role (cleanup then deletes it).
    pub role_created: bool,
    #[serde(default)]
    pub pre_provisioning_hook_arn: Option<String>,
}

impl TargetConfig {
    pub(super) fn version() -> u32 {
        VERSION
    }

    /// Reads a target description from its file.
    pub fn load(path: &Path) -> Result<TargetConfig, TargetError> {
        let text = std::fs::read(path).map_err(|e| {
            TargetError::file(
                path,
                format!("cannot read the target description ({e}); run `fleetsim setup` first"),
            )
        })?;
        let config: TargetConfig = serde_json::from_slice(&text)
            .map_err(|e| TargetError::file(path, format!("not a target description: {e}")))?;
        if config.version != VERSION {
            return Err(TargetError::file(
                path,
                format!("version {} is not {VERSION}", config.version),
            ));
        }
        Ok(config)
    }

    /// The description as its file holds it.
    pub(super) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("invariant: the description always encodes")
    }

    /// The MQTT host and port (AWS serves 8883 when none is named).
    pub fn mqtt_endpoint(&self) -> Result<(String, u16), TargetError> {
        match self.data_endpoint.rsplit_once(':') {
            None => Ok((self.data_endpoint.clone(), 8883)),
            Some((host, port)) => {
                let port = port.parse().map_err(|_| {
                    TargetError::Invalid(format!(
                        "data endpoint {}: port {port} is not a number",
                        self.data_endpoint
                    ))
                })?;
                Ok((host.to_owned(), port))
            }
        }
    }

    /// How to reach the account this target lives in.
    pub fn access(&self) -> super::AwsAccess {
        super::AwsAccess {
            region: Some(self.region.clone()),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }
}

/// Writes one of the target's files, 0600, replacing it atomically.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), TargetError> {
    persist::write_atomically(path, contents, 0o600).map_err(|e| TargetError::file(path, e))
}

/// Whether `path` already holds exactly `contents`.
pub(super) fn holds(path: &Path, contents: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|existing| existing == contents)
}
