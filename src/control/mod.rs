//! The AWS IoT control plane through `aws-sdk-iot`: setup of policies,
//! template and claim certificate, and the detach-and-revoke step that ends
//! a rotation. The same client drives real AWS and the local emulator.
//!
//! A [`ControlPlane`] is built once and cloned cheaply; the SDK keeps its
//! default retry policy (which retries throttling), the timeouts are ours.

mod error;
mod policy_set;
mod setup;
mod throttle;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_iot::Client;
use aws_sdk_iot::config::timeout::TimeoutConfig;
use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iot::primitives::DateTime;
use aws_sdk_iot::types::CertificateStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::error::ControlError;
pub use self::policy_set::{
    CLAIM_POLICY_FILE, DEVICE_POLICY_FILE, PROVISIONING_TEMPLATE_FILE, PolicySet, render,
};
pub use self::setup::{SetupNames, SetupOutput, SetupSpec};
use self::throttle::ThrottleCount;
use crate::pacing::Pacer;

/// Time allowed to open a connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for one attempt, from sending to the whole answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an operation, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Device-driven operations in flight at once over one client. The SDK
/// opens a connection for every request that finds none idle, and keeps it
/// pooled: a rotation wave of a large fleet would otherwise hold thousands
/// of connections on both ends, enough to exhaust the open-file limit of
/// the control plane's process and of the fleet's. Beyond this many,
/// requests queue here, which also spares a real account's API rate.
pub const MAX_IN_FLIGHT: usize = 64;

/// A shared control-plane client.
#[derive(Clone)]
pub struct ControlPlane {
    client: Client,
    /// `arn:<partition>:iot:<region>:<account>:cert/`, learned from the
    /// first certificate described, so that later calls can name a
    /// certificate by ARN without asking again.
    certificate_arn_prefix: Arc<OnceLock<String>>,
    /// Throttled answers seen, SDK retries included.
    throttled: ThrottleCount,
    /// The fleet's rate limit per operation, when the run paces itself.
    pacer: Option<Arc<Pacer>>,
    /// Permits for device-driven operations, [`MAX_IN_FLIGHT`] in all.
    in_flight: Arc<Semaphore>,
}

/// What DescribeCertificate says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    pub id: String,
    /// AWS's wire name: `ACTIVE`, `INACTIVE`, `REVOKED`, ...
    pub status: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl ControlPlane {
    /// A client for an endpoint override such as the local emulator, with
    /// static credentials: the SDK must sign, the emulator does not check.
    pub fn for_endpoint(url: &str, region: &str) -> ControlPlane {
        let credentials =
            Credentials::new("fleetsim", "fleetsim-local", None, None, "fleetsim-static");
        let config = aws_sdk_iot::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(credentials)
            .endpoint_url(url)
            .timeout_config(timeouts())
            .retry_config(retries());
        ControlPlane::from_config(config)
    }

    /// A client for real AWS, configured by the SDK's default chain
    /// (environment, profile, SSO, instance role); `region` overrides it.
    pub async fn from_environment(region: Option<String>) -> ControlPlane {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts());
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        let shared = loader.load().await;
        ControlPlane::from_sdk_config(&shared)
    }

    /// A client on an already loaded AWS configuration (the `aws` target's
    /// credentials, region and optional endpoint override), with our timeouts.
    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> ControlPlane {
        let config = aws_sdk_iot::config::Builder::from(shared)
            .timeout_config(timeouts())
            .retry_config(retries());
        ControlPlane::from_config(config)
    }

    fn from_config(config: aws_sdk_iot::config::Builder) -> ControlPlane {
        let throttled = ThrottleCount::default();
        let config = config.interceptor(throttled.clone()).build();
        ControlPlane {
            client: Client::from_conf(config),
            certificate_arn_prefix: Arc::new(OnceLock::new()),
            throttled,
            pacer: None,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The same client, waiting on `pacer` before each call it makes.
    pub fn paced(mut self, pacer: Arc<Pacer>) -> ControlPlane {
        self.pacer = Some(pacer);
        self
    }

    /// How many answers were ThrottlingException, SDK retries included.
    pub fn throttled(&self) -> u64 {
        self.throttled.get()
    }

    /// Waits for `operation`'s rate limit, when the run paces itself.
    pub async fn pace(&self, operation: &str) {
        if let Some(pacer) = &self.pacer {
            pacer.control_plane(operation).await;
        }
    }

    /// Waits for a free place among the operations in flight; the place is
    /// held until the returned permit is dropped.
    async fn place(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed")
    }

    /// The raw SDK client, for operations this type does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends a certificate's life after rotation: detaches it from `thing`,
    /// then revokes it, which closes its connections. Safe to repeat.
    pub async fn retire_certificate(
        &self,
        thing: &str,
        certificate_id: &str,
    ) -> Result<(), ControlError> {
        let arn = self.certificate_arn(certificate_id).await?;
        let _place = self.place().await;
        self.pace("DetachThingPrincipal").await;
        self.client
            .detach_thing_principal()
            .thing_name(thing)
            .principal(&arn)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk("DetachThingPrincipal", thing, e))?;
        self.pace("UpdateCertificate").await;
        self.client
            .update_certificate()
            .certificate_id(certificate_id)
            .new_status(CertificateStatus::Revoked)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk("UpdateCertificate", certificate_id, e))?;
        tracing::debug!(thing, certificate_id, "certificate detached and revoked");
        Ok(())
    }

    pub async fn describe_certificate(
        &self,
        certificate_id: &str,
    ) -> Result<CertificateSummary, ControlError> {
        const OPERATION: &str = "DescribeCertificate";
        let _place = self.place().await;
        self.pace(OPERATION).await;
        let output = self
            .client
            .describe_certificate()
            .certificate_id(certificate_id)
            .send()
            .await
            .map_err(|e| ControlError::from_sdk(OPERATION, certificate_id, e))?;
        let missing = |field: &str| ControlError::Protocol {
            operation: OPERATION,
            resource: certificate_id.to_owned(),
            cause: format!("{field} missing or out of range"),
        };
        let description = output
            .certificate_description
            .ok_or_else(|| missing("certificateDescription"))?;
        if let Some(arn) = description.certificate_arn() {
            self.remember_arn_prefix(arn);
        }
        let validity = description.validity().ok_or_else(|| missing("validity"))?;
        Ok(CertificateSummary {
            id: certificate_id.to_owned(),
            status: description
                .status()
                .ok_or_else(|| missing("status"))?
                .as_str()
                .to_owned(),
            not_before: system_time(validity.not_before()).ok_or_else(|| missing("notBefore"))?,
            not_after: system_time(validity.not_after()).ok_or_else(|| missing("notAfter"))?,
        })
    }

    /// The ids of every certificate attached to `thing`, across all pages.
    pub async fn list_thing_principals(&self, thing: &str) -> Result<Vec<String>, ControlError> {
        let mut pages = self
            .client
            .list_thing_principals()
            .thing_name(thing)
            .into_paginator()
            .send();
        let mut ids = Vec::new();
        let _place = self.place().await;
        self.pace("ListThingPrincipals").await;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ControlError::from_sdk("ListThingPrincipals", thing, e))?;
            self.pace("ListThingPrincipals").await;
            ids.extend(
                page.principals()
                    .iter()
                    .filter_map(|arn| certificate_id_of(arn)),
            );
        }
        Ok(ids)
    }

    /// The ARN of a certificate of this account, learned once.
    pub async fn certificate_arn_of(&self, certificate_id: &str) -> Result<String, ControlError> {
        self.certificate_arn(certificate_id).await
    }

    async fn certificate_arn(&self, certificate_id: &str) -> Result<String, ControlError> {
        if self.certificate_arn_prefix.get().is_none() {
            self.describe_certificate(certificate_id).await?;
        }
        let prefix = self
            .certificate_arn_prefix
            .get()
            .ok_or_else(|| ControlError::Protocol {
                operation: "DescribeCertificate",
                resource: certificate_id.to_owned(),
                cause: "certificateArn missing from the answer".to_owned(),
            })?;
        Ok(format!("{prefix}{certificate_id}"))
    }

    fn remember_arn_prefix(&self, arn: &str) {
        if let Some(end) = arn.rfind(":cert/") {
            let _ = self
                .certificate_arn_prefix
                .set(arn[..end + ":cert/".len()].to_owned());
        }
    }
}

/// The SDK's standard retries (exponential backoff with jitter, throttling
/// included), with more attempts than its default three so that a paced
/// run rides out a throttled second.
fn retries() -> aws_sdk_iot::config::retry::RetryConfig {
    aws_sdk_iot::config::retry::RetryConfig::standard().with_max_attempts(6)
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The id of a certificate ARN; principals of other kinds give `None`.
fn certificate_id_of(arn: &str) -> Option<String> {
    arn.rsplit_once(":cert/").map(|(_, id)| id.to_owned())
}

fn system_time(time: Option<&DateTime>) -> Option<SystemTime> {
    time.and_then(|t| SystemTime::try_from(*t).ok())
}
