//! The `aws` target: `fleetsim setup` creates what a run against a real
//! account needs, `fleetsim cleanup` removes it and everything runs created
//! under the same prefix, and [`TargetConfig`] is the file between them and
//! `fleetsim run`.
//!
//! Both commands first read the account's state and print a [`Plan`]; they
//! change nothing until it is confirmed. Credentials and region come from
//! the SDK's standard chain (environment, profile), which flags override.

mod cleanup;
mod config;
mod cost;
mod names;
mod role;
mod root_ca;
mod setup;

use std::path::PathBuf;

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::control::ControlError;

pub use self::cleanup::{CleanupPlan, CleanupRequest, cleanup, plan_cleanup};
pub use self::config::{TARGET_FILE, TargetConfig};
pub use self::cost::RunEstimate;
pub use self::names::{DEFAULT_PREFIX, Prefix};
pub use self::role::{
    FoundRole, PREFIX_TAG, ProvisioningRole, THINGS_REGISTRATION_POLICY, TRUST_POLICY,
    managed_policy_arn,
};
pub use self::root_ca::{AMAZON_ROOT_CA_1, AMAZON_ROOT_CA_1_SHA256, verify_amazon_root_ca};
pub use self::setup::{SetupPlan, SetupRequest, plan_setup, setup};

/// How to reach the account: each `None` falls back to the SDK's chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsAccess {
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Sends every control-plane call here instead of AWS (the emulator).
    pub endpoint_url: Option<String>,
}

impl AwsAccess {
    /// Loads credentials and region through the standard chain, with the
    /// flags on top. No region anywhere is an error, not a guess.
    pub async fn load(&self) -> Result<SdkConfig, TargetError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(TargetError::NoRegion);
        }
        Ok(config)
    }
}

/// One line of a plan: what happens to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create(String),
    Keep(String),
    Delete(String),
}

/// What a command is about to do, in the order it will do it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether running it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.iter().all(|c| matches!(c, Change::Keep(_)))
    }

    pub fn creates(&self) -> usize {
        self.count(|c| matches!(c, Change::Create(_)))
    }

    pub fn deletes(&self) -> usize {
        self.count(|c| matches!(c, Change::Delete(_)))
    }

    fn count(&self, which: impl Fn(&Change) -> bool) -> usize {
        self.changes.iter().filter(|c| which(c)).count()
    }

    /// One line per resource: `+ create`, `- delete`, `= keep`.
    pub fn render(&self) -> String {
        let lines: Vec<String> = self
            .changes
            .iter()
            .map(|change| match change {
                Change::Create(what) => format!("  + create {what}"),
                Change::Delete(what) => format!("  - delete {what}"),
                Change::Keep(what) => format!("  = keep   {what}"),
            })
            .collect();
        lines.join("\n")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "no AWS region: set AWS_REGION, a region in the profile, or pass --region (local configuration)"
    )]
    NoRegion,
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{operation} {resource}: {message}")]
    Iam {
        operation: &'static str,
        resource: String,
        message: String,
    },
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl TargetError {
    pub(crate) fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> TargetError {
        TargetError::File {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}
