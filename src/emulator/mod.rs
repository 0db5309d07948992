//! The local IoT Core emulator: certificate authority, registry, MQTT broker
//! over mutual TLS, Fleet Provisioning, policies and the control-plane API.
//!
//! [`Emulator::start`] brings all of it up on loopback ports inside the
//! calling process; `fleetsim run` on the `local` target does exactly that,
//! then configures it through the control plane as it would configure AWS.
//! With a state directory (`fleetsim emulator`), the CA and the registry are
//! loaded from it and every change is journaled there ([`persist`]).

pub mod broker;
pub mod ca;
pub mod control_api;
pub mod faults;
pub mod fleet_provisioning;
pub mod hook;
pub mod persist;
pub mod policy;
pub mod registry;
pub mod template;
pub mod tls;
pub mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use broker::{Broker, BrokerConfig, BrokerHandle};
use ca::CertificateAuthority;
use control_api::{ControlApi, ControlApiHandle, ControlApiSettings};
use fleet_provisioning::keys::ServerKeyType;
use fleet_provisioning::{FleetProvisioning, ProvisioningSettings};
use hook::HookRegistry;
use persist::{PersistError, PersistHandle, StateDir};
use registry::Registry;

/// The account id the emulator reports, AWS's documentation example.
pub const ACCOUNT_ID: &str = "123456789012";
pub const REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Where the MQTT/TLS listener binds (port 0 picks a free one).
    pub mqtt_bind: SocketAddr,
    /// Where the control-plane HTTP API binds.
    pub control_bind: SocketAddr,
    /// Real lifetime of the device certificates the emulator issues.
    pub certificate_validity: Duration,
    pub broker: BrokerConfig,
    /// Where the CA and registry persist; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// Lifetime of Fleet Provisioning ownership tokens (AWS: one hour).
    pub token_lifetime: Duration,
    /// The key CreateKeysAndCertificate generates (AWS: RSA-2048).
    pub server_key: ServerKeyType,
    /// Server-generated keys kept ready ahead of demand; 0 makes each on request.
    pub key_pool_size: usize,
    /// Pre-provisioning hooks, by the Lambda function name templates use.
    pub hooks: Arc<HookRegistry>,
    /// Delay before DetachThingPrincipal takes effect (AWS: seconds; default none).
    pub detach_propagation_delay: Duration,
    /// Delay before AttachPolicy and DetachPolicy take effect, like AWS's
    /// policy cache (AWS: 6 to 8 minutes; default none).
    pub policy_propagation_delay: Duration,
    /// Faults injected on purpose into Fleet Provisioning; none by default.
    pub faults: Option<Arc<faults::EmulatorFaults>>,
    /// AWS's rate quotas, enforced with throttled answers (429 rejections
    /// on Fleet Provisioning, ThrottlingException on the control plane);
    /// unlimited by default.
    pub quotas: crate::pacing::Quotas,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let loopback_any = SocketAddr::from(([127, 0, 0, 1], 0));
        EmulatorConfig {
            mqtt_bind: loopback_any,
            control_bind: loopback_any,
            certificate_validity: Duration::from_secs(365 * 86_400),
            broker: BrokerConfig::default(),
            state_dir: None,
            token_lifetime: fleet_provisioning::TOKEN_LIFETIME,
            server_key: ServerKeyType::Rsa2048,
            key_pool_size: 0,
            hooks: Arc::default(),
            detach_propagation_delay: Duration::ZERO,
            policy_propagation_delay: Duration::ZERO,
            faults: None,
            quotas: crate::pacing::Quotas::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator certificate authority: {0}")]
    Ca(#[from] ca::CaError),
    #[error("emulator TLS configuration: {0}")]
    Tls(String),
    #[error("emulator state directory: {0}")]
    State(#[from] PersistError),
    #[error("emulator cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running emulator. Dropping it stops the listeners.
pub struct Emulator {
    ca: Arc<CertificateAuthority>,
    registry: Arc<Registry>,
    broker: BrokerHandle,
    control: ControlApiHandle,
    persist: Option<PersistHandle>,
    provisioning: Arc<FleetProvisioning>,
    hooks: Arc<HookRegistry>,
}

impl Emulator {
    /// Creates the CA and server certificate, then starts the broker and
    /// the control-plane API.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let (ca, registry, persist) = open_state(config.state_dir.as_deref())?;
        let names = server_names(config.mqtt_bind.ip());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let server = ca.issue_server(&names)?;
        let tls = tls::server_config(ca.root_der().clone(), server, Arc::clone(&registry))
            .map_err(|e| EmulatorError::Tls(e.to_string()))?;
        let provisioning_settings = ProvisioningSettings {
            certificate_validity: config.certificate_validity,
            token_lifetime: config.token_lifetime,
            server_key: config.server_key,
            key_pool_size: config.key_pool_size,
            faults: config.faults.clone(),
            quotas: config.quotas,
        };
        let provisioning = Arc::new(FleetProvisioning::with_settings(
            Arc::clone(&registry),
            Arc::clone(&ca),
            provisioning_settings,
            Arc::clone(&config.hooks),
        ));
        let broker_config = BrokerConfig {
            bind: config.mqtt_bind,
            ..config.broker
        };
        let broker = Broker::start(
            broker_config,
            tls,
            Arc::clone(&registry),
            Arc::clone(&provisioning),
        )
        .map_err(|source| EmulatorError::Bind {
            addr: config.mqtt_bind,
            source,
        })?;
        let settings = ControlApiSettings {
            endpoint_address: control_api::endpoint_address(broker.local_addr()),
            certificate_validity: control_api::aws_certificate_validity(),
            detach_propagation_delay: config.detach_propagation_delay,
            policy_propagation_delay: config.policy_propagation_delay,
            server_key: config.server_key,
            quotas: config.quotas,
        };
        let control = ControlApi::start(
            config.control_bind,
            Arc::clone(&registry),
            Arc::clone(&ca),
            settings,
        )
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: config.control_bind,
            source,
        })?;
        Ok(Emulator {
            ca,
            registry,
            broker,
            control,
            persist,
            provisioning,
            hooks: config.hooks,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// The control-plane endpoint to give `aws-sdk-iot`.
    pub fn control_url(&self) -> String {
        self.control.url()
    }

    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn provisioning(&self) -> &Arc<FleetProvisioning> {
        &self.provisioning
    }

    /// Where pre-provisioning hooks are registered, also while running.
    pub fn hooks(&self) -> &Arc<HookRegistry> {
        &self.hooks
    }

    pub fn connection_count(&self) -> usize {
        self.broker.connection_count()
    }

    pub async fn shutdown(self) {
        self.broker.shutdown().await;
        self.control.shutdown().await;
        if let Some(persist) = self.persist {
            persist.close().await;
        }
    }
}

/// `localhost` and loopback, plus the bind address when clients must use it by number.
fn server_names(bind: std::net::IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !bind.is_loopback() && !bind.is_unspecified() {
        names.push(bind.to_string());
    }
    names
}

type State = (
    Arc<CertificateAuthority>,
    Arc<Registry>,
    Option<PersistHandle>,
);

/// A fresh CA and empty registry in memory, or both loaded from `state_dir`.
fn open_state(state_dir: Option<&std::path::Path>) -> Result<State, EmulatorError> {
    let registry = Arc::new(Registry::new(REGION, ACCOUNT_ID));
    let Some(dir) = state_dir else {
        let ca = CertificateAuthority::generate("fleetsim emulator root CA")?;
        return Ok((Arc::new(ca), registry, None));
    };
    let dir = StateDir::new(dir);
    let lock = persist::lock(&dir)?;
    let ca = Arc::new(persist::load_or_create_ca(&dir)?);
    let persist = persist::open_registry(&dir, &registry, lock)?;
    Ok((ca, registry, Some(persist)))
}
