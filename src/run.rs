//! A whole run, start to finish: start the target, set it up through the
//! control plane, spawn the fleet on its arrival schedule, stop it when the
//! run's time is up (or on Ctrl-C), check every device's identity, and
//! build the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::check;
use crate::console::{self, Access, ConsoleHandle, ConsoleSources, FleetSources, HandsOn};
use crate::control::{ControlPlane, SetupNames, SetupOutput, SetupSpec};
use crate::device::lifecycle::{RetryPolicy, RotationSchedule};
use crate::device::live::LiveTable;
use crate::device::mqtt::{ConnectSettings, Endpoint, SourceAddresses};
use crate::device::{ClaimSlot, DeviceContext, DeviceFaults, DeviceOutcome, TelemetrySettings};
use crate::emulator::faults::EmulatorFaults;
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::fleet::{self, ArrivalSchedule, FleetPlan, Shard};
use crate::identity::Credentials;
use crate::identity::store::CredentialStore;
use crate::identity::tls::TlsSettings;
use crate::lanes::{self, Lanes};
use crate::observe::faults::{FailedDevices, FaultKind, FaultLog, FaultSection};
use crate::observe::merge::ShardInfo;
use crate::observe::progress::Progress;
use crate::observe::report::Report;
use crate::observe::{Recorder, metrics};
use crate::pacing::Pacer;
use crate::scenario::{
    self, CredentialStorage, ProvisioningMethod, Qos, Scenario, SerialPattern, format_duration,
};
use crate::standalone::{EmulatorInfo, StandaloneError};
use crate::target::TargetConfig;

/// How a run is observed, beside what the scenario says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub report_path: Option<PathBuf>,
    /// Where to serve Prometheus metrics; `None` serves none.
    pub metrics: Option<SocketAddr>,
    /// Folder with the policy and template files; the built-in copies of
    /// the repository's `policies/` are used when absent.
    pub policies_dir: Option<PathBuf>,
    /// Show live progress while the fleet runs.
    pub progress: bool,
    /// A running `fleetsim emulator` to target (its state directory or its
    /// `emulator.json`) instead of starting one inside this process.
    pub emulator: Option<PathBuf>,
    /// Serve the web console while the run goes on.
    pub console: Option<ConsoleOptions>,
    /// The slice of the fleet this process simulates; the whole by default.
    pub shard: Shard,
    /// Local addresses device connections start from, in turn; empty lets
    /// the operating system choose.
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Told the run's recorder as soon as it exists, so that a caller (the
    /// benchmarks) can watch the fleet's counts while the run goes on.
    pub recorder_tap: Option<tokio::sync::mpsc::UnboundedSender<Arc<Recorder>>>,
    /// The `aws` target as `fleetsim setup` described it; required when the
    /// scenario says `target: aws`.
    pub aws_target: Option<TargetConfig>,
    /// AWS's quotas for the in-process emulator to enforce (throttling
    /// offline); unlimited by default.
    pub emulator_quotas: crate::pacing::Quotas,
    /// Descriptor lanes to spread the run's sockets over (see
    /// [`crate::lanes`]); `None` starts as many as the open-file limit
    /// requires, which is none while one descriptor table holds the fleet.
    pub lanes: Option<usize>,
}
/// Where and how the web console is served.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    pub addr: SocketAddr,
    pub access: Access,
    /// Print the token with the console's address (it was made up at start).
    pub print_token: bool,
    /// Told the console's address once it listens (tests bind port 0).
    pub announce: Option<tokio::sync::mpsc::UnboundedSender<SocketAddr>>,
}

/// How many hands-on steps the console's live feed buffers per browser.
const HANDS_ON_FEED: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run cannot start: {0}")]
    CannotStart(String),
    #[error("run failed: {0}")]
    Failed(String),
}

/// What a finished run leaves for its caller.
pub struct RunSummary {
    pub report: Report,
    pub outcomes: Vec<DeviceOutcome>,
    /// The in-process emulator, still running, on the `local` target
    /// (`None` when the run targeted a standalone emulator).
    pub emulator: Option<Emulator>,
    /// Where device credentials were written, with disk storage.
    pub credentials_dir: Option<PathBuf>,
    /// Descriptor lanes the run spread its sockets over (0: none).
    pub lanes: usize,
}

/// The names `setup` gives the resources of a run and of `fleetsim emulator`.
pub fn setup_names(template: &str) -> SetupNames {
    SetupNames {
        prefix: "fleetsim".to_owned(),
        account_id: emulator::ACCOUNT_ID.to_owned(),
        region: emulator::REGION.to_owned(),
        claim_policy: "fleetsim-claim".to_owned(),
        device_policy: "fleetsim-device".to_owned(),
        template: template.to_owned(),
        provisioning_role_arn: format!(
            "arn:aws:iam::{}:role/fleetsim-provisioning",
            emulator::ACCOUNT_ID
        ),
    }
}

pub async fn execute(
    scenario: &Scenario,
    options: &RunOptions,
    interrupt: CancellationToken,
) -> Result<RunSummary, RunError> {
    if scenario.target == scenario::Target::Aws && options.aws_target.is_none() {
        return Err(RunError::CannotStart(
            "target `aws` needs the target description `fleetsim setup` writes (certs/aws/target.json); pass --target-config".into(),
        ));
    }
    check_source_addresses(&options.source_addresses)?;
    // Before anything opens a socket: a lane keeps a copy of every
    // descriptor open when it starts.
    let lanes = start_lanes(scenario, options)?;
    let metrics_handle = match options.metrics {
        Some(addr) => {
            let handle = metrics::install_exporter(addr)
                .map_err(|e| RunError::CannotStart(e.to_string()))?;
            info!("Prometheus metrics served at http://{addr}/metrics");
            Some(handle)
        }
        None => None,
    };
    let emulator_faults = emulator_faults(scenario);
    let mut restart_plan = None;
    let (mut emulator, target) = match (&options.aws_target, &options.emulator) {
        (Some(config), _) => (None, Target::aws(scenario, config).await?),
        (None, None) => {
            let (emulator, config) = start_emulator(
                scenario,
                emulator_faults.clone(),
                options.emulator_quotas,
                lanes.clone(),
            )
            .await?;
            restart_plan = scenario
                .faults
                .emulator_restart
                .clone()
                .map(|r| (config, r));
            let target = Target::of(&emulator);
            (Some(emulator), target)
        }
        (None, Some(path)) => {
            refuse_emulator_faults(scenario, path)?;
            let target = Target::standalone(scenario, path)?;
            target.check_reachable(path).await?;
            (None, target)
        }
    };
    let pacer = Arc::new(Pacer::new(&scenario.quotas()));
    let control = Arc::new(
        match &target.control {
            Some(control) => control.clone(),
            None => ControlPlane::for_endpoint(&target.control_url, emulator::REGION),
        }
        .paced(Arc::clone(&pacer)),
    );
    let setup = match target.claim.clone() {
        Some(claim) => claim,
        None => set_up(scenario, options, &control).await?,
    };
    let plan = fleet_plan(scenario, options.shard);
    let (store, credentials_dir) = credential_store(scenario, plan.shard)?;
    let recorder = Arc::new(Recorder::new(&scenario.name));
    recorder.publish_objectives(&scenario.slo);
    if let Some(tap) = &options.recorder_tap {
        let _ = tap.send(Arc::clone(&recorder));
    }
    let stop = CancellationToken::new();
    let fault_log = Arc::new(FaultLog::new(&scenario.name));
    let mut context = device_context(
        scenario,
        &target,
        &setup,
        store,
        Arc::clone(&control),
        &recorder,
        &stop,
    )?;
    context.faults = device_faults(scenario, Arc::clone(&fault_log));
    context.pacer = pacer;
    let live = options.console.as_ref().map(|_| Arc::new(LiveTable::new()));
    context.live = live.clone();
    context.connect.sources = SourceAddresses::new(options.source_addresses.clone());
    let context = Arc::new(context);
    let console = match (&options.console, live) {
        (Some(console_options), Some(live)) => {
            let parts = ConsoleParts {
                registry: emulator.as_ref().map(|e| Arc::clone(e.registry())),
                context: &context,
                recorder: &recorder,
                live,
                metrics: metrics_handle,
            };
            Some(start_console(console_options, scenario, parts).await?)
        }
        _ => None,
    };
    let started = Instant::now();
    let restarting = start_restart(restart_plan, &mut emulator, started, &stop);
    let drill = start_drill(scenario, &context, &setup, started, &fault_log);
    let (outcomes, stopped_at) = run_fleet(
        scenario,
        &plan,
        options,
        Arc::clone(&context),
        &recorder,
        (interrupt, stop),
        lanes.as_ref(),
    )
    .await;
    let elapsed = started.elapsed();
    if let Some(drill) = drill {
        drill.abort();
    }
    if let Some(restarting) = restarting {
        emulator = Some(take_back(restarting, &fault_log).await?);
    }
    if let Some((console, hands_on_stop)) = console {
        hands_on_stop.cancel();
        console.shutdown().await;
    }
    let checker = Arc::new(check::Checker {
        connect: context.connect.clone(),
        tls: context.tls.clone(),
        control: Arc::clone(&context.control),
    });
    let check = check::final_check(&checker, &outcomes, plan.shard_size(), stopped_at).await;
    let mut report = Report::build(&recorder, &scenario.slo, &check, elapsed)
        .map_err(|e| RunError::Failed(e.to_string()))?;
    report.shard = ShardInfo::of(&plan);
    report.key_type = Some(scenario.provisioning.method.key_type().to_owned());
    report.key_exchange = Some(scenario.tls.key_exchange.label().to_owned());
    report.faults = fault_section(scenario, &fault_log, emulator_faults.as_deref(), &outcomes);
    report.control_plane_throttled = control.throttled();
    write_report(&report, options.report_path.as_deref())?;
    Ok(RunSummary {
        report,
        outcomes,
        emulator,
        credentials_dir,
        lanes: lanes.as_ref().map_or(0, Lanes::len),
    })
}

/// What a run hands its console.
struct ConsoleParts<'a> {
    registry: Option<Arc<crate::emulator::registry::Registry>>,
    context: &'a Arc<DeviceContext>,
    recorder: &'a Arc<Recorder>,
    live: Arc<LiveTable>,
    metrics: Option<metrics::MetricsHandle>,
}

/// Starts the console with the fleet, the registry and a hands-on context
/// that shares the run's target but not its store, measurements or
/// serials. Returns it with the token that stops the hands-on devices.
async fn start_console(
    options: &ConsoleOptions,
    scenario: &Scenario,
    parts: ConsoleParts<'_>,
) -> Result<(ConsoleHandle, CancellationToken), RunError> {
    let hands_on_stop = CancellationToken::new();
    let hands_on = HandsOn::new(
        parts.context.hands_on(
            hands_on_store(scenario)?,
            Arc::new(Recorder::new(&format!("{}-console", scenario.name))),
            Arc::new(LiveTable::with_feed(HANDS_ON_FEED)),
            hands_on_stop.clone(),
        ),
        fleet_serials(scenario, Arc::clone(&parts.live)),
    );
    let sources = ConsoleSources {
        fleet: Some(FleetSources {
            run: scenario.name.clone(),
            fleet_size: scenario.fleet.size,
            slo: scenario.slo.clone(),
            recorder: Arc::clone(parts.recorder),
            live: parts.live,
            started: Instant::now(),
        }),
        registry: parts.registry,
        metrics: parts.metrics,
        hands_on: Some(hands_on),
    };
    let handle = console::start(options.addr, options.access.clone(), sources)
        .await
        .map_err(|e| RunError::CannotStart(e.to_string()))?;
    announce_console(options, handle.local_addr());
    Ok((handle, hands_on_stop))
}

/// Tells the person who started the console where it is and how to get in.
pub fn announce_console(options: &ConsoleOptions, addr: SocketAddr) {
    match (&options.access, options.print_token) {
        (Access::Token(token), true) => eprintln!("console: http://{addr}/#token={token}"),
        (Access::Token(_), false) => {
            eprintln!("console: http://{addr}/#token=<{}>", console::TOKEN_ENV)
        }
        (Access::Open, _) => {
            eprintln!("console: http://{addr}/ (no token: anyone on this machine can use it)")
        }
    }
    if let Some(announce) = &options.announce {
        let _ = announce.send(addr);
    }
}

/// Hands-on devices keep their credentials beside the run's, in a folder
/// no run name can take (run names have no dot).
fn hands_on_store(scenario: &Scenario) -> Result<CredentialStore, RunError> {
    match &scenario.credentials {
        CredentialStorage::Memory => Ok(CredentialStore::memory()),
        CredentialStorage::Disk { dir } => {
            let root = dir.join(format!("{}.console", scenario.name));
            clear_previous_run(&root)?;
            CredentialStore::disk(&root).map_err(|e| RunError::CannotStart(e.to_string()))
        }
    }
}

/// Whether a serial is one the fleet has or will have: a hands-on device
/// with it would take over that device's thing.
fn fleet_serials(scenario: &Scenario, live: Arc<LiveTable>) -> console::SerialReserved {
    let (pattern, size) = (scenario.fleet.serial_pattern.clone(), scenario.fleet.size);
    Box::new(move |serial| live.contains(serial) || is_fleet_serial(&pattern, size, serial))
}

fn is_fleet_serial(pattern: &SerialPattern, size: u64, serial: &str) -> bool {
    serial
        .strip_prefix(pattern.prefix.as_str())
        .and_then(|rest| rest.strip_suffix(pattern.suffix.as_str()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .is_some_and(|index| index < size && pattern.serial(index) == serial)
}

/// Where the fleet connects: the in-process emulator, or a standalone one
/// that already holds a claim certificate.
struct Target {
    endpoint: Endpoint,
    control_url: String,
    root_pem: String,
    claim: Option<SetupOutput>,
    /// A control plane reached through the AWS chain (the `aws` target).
    control: Option<ControlPlane>,
}

impl Target {
    fn of(emulator: &Emulator) -> Target {
        Target {
            endpoint: Endpoint {
                host: "localhost".to_owned(),
                port: emulator.mqtt_addr().port(),
            },
            control_url: emulator.control_url(),
            root_pem: emulator.root_pem().to_owned(),
            claim: None,
            control: None,
        }
    }

    /// Reads what `fleetsim emulator` wrote. A different template is refused: devices
    /// would call RegisterThing on a template the emulator was not set up with.
    fn standalone(scenario: &Scenario, path: &Path) -> Result<Target, RunError> {
        let cannot = |e: StandaloneError| RunError::CannotStart(e.to_string());
        let info = EmulatorInfo::load(path).map_err(cannot)?;
        if info.template != scenario.provisioning.template {
            return Err(RunError::CannotStart(format!(
                "the emulator at {} was set up with template `{}` but the scenario uses `{}`; \
                 start it with `--template {}` or change provisioning.template",
                path.display(),
                info.template,
                scenario.provisioning.template,
                scenario.provisioning.template
            )));
        }
        warn_on_validity_mismatch(scenario, &info);
        info!(mqtt = info.mqtt_port, control = %info.control_url, "targeting a running emulator");
        Ok(Target {
            endpoint: Endpoint {
                host: info.mqtt_host.clone(),
                port: info.mqtt_port,
            },
            control_url: info.control_url.clone(),
            root_pem: info.root_pem().map_err(cannot)?,
            claim: Some(info.claim().map_err(cannot)?),
            control: None,
        })
    }

    /// What `fleetsim setup` prepared: its data endpoint, root CA, claim
    /// identity, and the control plane through the AWS chain. The template
    /// must be the one setup created.
    async fn aws(scenario: &Scenario, config: &TargetConfig) -> Result<Target, RunError> {
        let cannot = |e: crate::target::TargetError| RunError::CannotStart(e.to_string());
        if config.template != scenario.provisioning.template {
            return Err(RunError::CannotStart(format!(
                "the target was set up with template `{}` but the scenario uses `{}`; \
                 set provisioning.template: {}",
                config.template, scenario.provisioning.template, config.template
            )));
        }
        let (host, port) = config.mqtt_endpoint().map_err(cannot)?;
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| RunError::CannotStart(format!("{}: cannot read: {e}", path.display())))
        };
        let sdk = config.access().load().await.map_err(cannot)?;
        info!(%host, port, region = %config.region, "targeting AWS IoT Core");
        Ok(Target {
            endpoint: Endpoint { host, port },
            control_url: config.endpoint_url.clone().unwrap_or_default(),
            root_pem: read(&config.root_ca)?,
            claim: Some(SetupOutput {
                claim_certificate_id: config.claim_certificate_id.clone(),
                claim_certificate_pem: read(&config.claim_certificate)?,
                claim_private_key_pem: read(&config.claim_private_key)?,
                endpoint: config.data_endpoint.clone(),
            }),
            control: Some(ControlPlane::from_sdk_config(&sdk)),
        })
    }
}

/// How long a standalone emulator's ports get to accept a connection before the run.
const REACHABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

impl Target {
    /// A standalone emulator that is down would otherwise show only as every device
    /// failing to connect, one backoff at a time: its two ports must accept first.
    async fn check_reachable(&self, state: &Path) -> Result<(), RunError> {
        let control = self.control_url.trim_start_matches("http://");
        let control = control.trim_end_matches('/');
        let mqtt = format!("{}:{}", self.endpoint.host, self.endpoint.port);
        for (what, address) in [("MQTT", mqtt.as_str()), ("control plane", control)] {
            let connect = tokio::net::TcpStream::connect(address);
            let problem = match tokio::time::timeout(REACHABLE_WITHIN, connect).await {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {REACHABLE_WITHIN:?}"),
            };
            return Err(RunError::CannotStart(format!(
                "the emulator described in {} does not accept {what} connections at {address}: \
                 {problem}; is `fleetsim emulator` running?",
                state.display()
            )));
        }
        Ok(())
    }
}

/// The emulator, not the scenario, decides how long certificates last; rotation then
/// follows the certificates' real notAfter, so the scenario's timing does not hold.
fn warn_on_validity_mismatch(scenario: &Scenario, info: &EmulatorInfo) {
    let wanted = scenario.to_real(scenario.certificates.validity);
    let issued = info.certificate_validity();
    if wanted.as_secs() != issued.as_secs() {
        warn!(
            emulator = %info.certificate_validity,
            scenario = %format_duration(wanted),
            "the running emulator issues certificates with a different real validity than \
             certificates.validity / clock.speedup; rotations follow the emulator's validity \
             (restart it with --certificate-validity to match)"
        );
    }
}

/// A source address must be one of this machine's. Binding it is the check
/// the operating system would otherwise make at every device's connect,
/// where it would show up only as connection failures.
fn check_source_addresses(addresses: &[std::net::IpAddr]) -> Result<(), RunError> {
    for address in addresses {
        std::net::TcpListener::bind((*address, 0)).map_err(|e| {
            RunError::CannotStart(format!(
                "source address {address} cannot be used: {e} (it must be assigned to one of \
                 this machine's interfaces)"
            ))
        })?;
    }
    Ok(())
}

/// Starts the in-process emulator. It returns the configuration that
/// starts it again on the same ports: with an emulator restart injected,
/// the emulator keeps its state in a directory of its own so that the
/// restart finds its CA and registry.
async fn start_emulator(
    scenario: &Scenario,
    faults: Option<Arc<EmulatorFaults>>,
    quotas: crate::pacing::Quotas,
    lanes: Option<Lanes>,
) -> Result<(Emulator, EmulatorConfig), RunError> {
    let state_dir = scenario.faults.emulator_restart.as_ref().map(|_| {
        let unique = format!("fleetsim-{}-{:016x}", scenario.name, rand::random::<u64>());
        std::env::temp_dir().join(unique)
    });
    let mut config = EmulatorConfig {
        quotas,
        certificate_validity: scenario.to_real(scenario.certificates.validity),
        key_pool_size: key_pool_size(scenario),
        faults,
        state_dir,
        broker: emulator::broker::BrokerConfig {
            lanes,
            ..Default::default()
        },
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config.clone())
        .await
        .map_err(|e| RunError::CannotStart(e.to_string()))?;
    info!(mqtt = %emulator.mqtt_addr(), control = %emulator.control_url(), "emulator started");
    config.mqtt_bind = emulator.mqtt_addr();
    config.control_bind = control_addr(&emulator.control_url()).unwrap_or(config.control_bind);
    Ok((emulator, config))
}

/// The address in a control-plane URL such as `http://127.0.0.1:4567`.
fn control_addr(url: &str) -> Option<SocketAddr> {
    url.strip_prefix("http://")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

type Restarting = tokio::task::JoinHandle<Result<(Emulator, bool), emulator::EmulatorError>>;

/// Hands the in-process emulator to a task that restarts it at its time,
/// when the scenario asks for a restart.
fn start_restart(
    plan: Option<(EmulatorConfig, scenario::EmulatorRestart)>,
    emulator: &mut Option<Emulator>,
    started: Instant,
    stop: &CancellationToken,
) -> Option<Restarting> {
    let (config, restart) = plan?;
    let running = emulator.take()?;
    let (at, down_for) = (started + restart.at, restart.down_for);
    let restart = emulator::faults::restart_at(running, config, at, down_for, stop.clone());
    Some(tokio::spawn(restart))
}

/// Starts the claim-certificate compromise drill, when the scenario has one.
fn start_drill(
    scenario: &Scenario,
    context: &Arc<DeviceContext>,
    setup: &SetupOutput,
    started: Instant,
    log: &Arc<FaultLog>,
) -> Option<tokio::task::JoinHandle<Option<String>>> {
    let at = scenario.faults.claim_compromise?;
    Some(tokio::spawn(fleet::drill::replace_claim_at(
        Arc::clone(context),
        setup_names(&scenario.provisioning.template).claim_policy,
        setup.claim_certificate_id.clone(),
        started + at,
        Arc::clone(log),
    )))
}

/// The emulator back from its restart task, the restart counted if it happened.
async fn take_back(restarting: Restarting, log: &FaultLog) -> Result<Emulator, RunError> {
    let restarted = restarting
        .await
        .map_err(|e| RunError::Failed(format!("the emulator restart task failed: {e}")))?;
    let (emulator, restarted) = restarted
        .map_err(|e| RunError::Failed(format!("the emulator did not start again: {e}")))?;
    if restarted {
        log.injected(FaultKind::EmulatorRestart);
    }
    Ok(emulator)
}

/// RSA keys take tens of milliseconds each: with server-generated keys the
/// emulator keeps up to one burst's worth ready ahead of the devices.
fn key_pool_size(scenario: &Scenario) -> usize {
    match scenario.provisioning.method {
        ProvisioningMethod::CsrEcP256 => 0,
        ProvisioningMethod::CreateKeysRsa => {
            usize::try_from(scenario.fleet.size.min(256)).expect("invariant: at most 256")
        }
    }
}

/// Creates policies, template and claim certificate through the control
/// plane: the same calls `fleetsim setup` makes against AWS.
async fn set_up(
    scenario: &Scenario,
    options: &RunOptions,
    control: &ControlPlane,
) -> Result<SetupOutput, RunError> {
    let names = setup_names(&scenario.provisioning.template);
    let spec = match &options.policies_dir {
        Some(dir) => SetupSpec::load(names, dir),
        None => SetupSpec::builtin(names),
    }
    .map_err(|e| RunError::CannotStart(e.to_string()))?;
    control
        .setup(&spec)
        .await
        .map_err(|e| RunError::CannotStart(format!("setting up the target: {e}")))
}

fn fleet_plan(scenario: &Scenario, shard: Shard) -> FleetPlan {
    FleetPlan {
        size: scenario.fleet.size,
        serials: scenario.fleet.serial_pattern.clone(),
        arrivals: ArrivalSchedule::new(&scenario.arrival),
        shard,
    }
}

/// Opens the credential store. A disk store starts empty: credentials left
/// by an earlier run of the same scenario were issued by an emulator that
/// no longer exists. Each shard has its own folder, so that shards sharing
/// a disk do not clear each other's credentials.
fn credential_store(
    scenario: &Scenario,
    shard: Shard,
) -> Result<(CredentialStore, Option<PathBuf>), RunError> {
    match &scenario.credentials {
        CredentialStorage::Memory => Ok((CredentialStore::memory(), None)),
        CredentialStorage::Disk { dir } => {
            let mut root = dir.join(&scenario.name);
            if !shard.is_whole() {
                root.push(format!("shard-{}-of-{}", shard.index, shard.count));
            }
            clear_previous_run(&root)?;
            let store =
                CredentialStore::disk(&root).map_err(|e| RunError::CannotStart(e.to_string()))?;
            Ok((store, Some(root)))
        }
    }
}

fn clear_previous_run(root: &Path) -> Result<(), RunError> {
    match std::fs::remove_dir_all(root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RunError::CannotStart(format!(
            "{}: cannot clear credentials of the previous run: {e}",
            root.display()
        ))),
        _ => Ok(()),
    }
}

fn device_context(
    scenario: &Scenario,
    target: &Target,
    setup: &SetupOutput,
    store: CredentialStore,
    control: Arc<ControlPlane>,
    recorder: &Arc<Recorder>,
    stop: &CancellationToken,
) -> Result<DeviceContext, RunError> {
    let endpoint = target.endpoint.clone();
    let claim = ClaimSlot::new(Credentials {
        certificate_pem: setup.claim_certificate_pem.clone(),
        private_key_pem: setup.claim_private_key_pem.clone(),
    });
    let tls = TlsSettings {
        root_pem: target.root_pem.clone(),
        key_exchange: scenario.tls.key_exchange,
    };
    claim
        .tls(&tls)
        .map_err(|e| RunError::CannotStart(format!("claim credentials: {e}")))?;
    Ok(DeviceContext {
        connect: ConnectSettings {
            endpoint,
            keep_alive: std::time::Duration::from_secs(60),
            step_timeout: scenario.run.step_timeout,
            sources: SourceAddresses::default(),
        },
        tls,
        claim: Arc::new(claim),
        template: scenario.provisioning.template.clone(),
        method: scenario.provisioning.method,
        store,
        control,
        recorder: Arc::clone(recorder),
        telemetry: telemetry_settings(scenario),
        rotation: rotation_schedule(scenario),
        retry: RetryPolicy {
            base: scenario.run.backoff_base,
            max: scenario.run.backoff_max,
            max_attempts: scenario.run.max_attempts,
        },
        stop: stop.clone(),
        live: None,
        faults: DeviceFaults::none(Arc::new(FaultLog::new(&scenario.name))),
        pacer: Arc::new(Pacer::off()),
    })
}

/// What the in-process emulator is to do wrong, if anything.
fn emulator_faults(scenario: &Scenario) -> Option<Arc<EmulatorFaults>> {
    let wanted = &scenario.faults.provisioning;
    wanted.any().then(|| {
        Arc::new(EmulatorFaults::new(
            wanted.deny_rate,
            wanted.throttle_rate,
            wanted.latency,
        ))
    })
}

/// A standalone emulator runs in another process: this run cannot make it
/// deny, throttle or delay.
fn refuse_emulator_faults(scenario: &Scenario, path: &Path) -> Result<(), RunError> {
    if scenario.faults.emulator_restart.is_some() {
        return Err(RunError::CannotStart(format!(
            "faults.emulator_restart restarts the in-process emulator; the emulator at {} \
             runs in another process (kill and start it yourself, or leave out --emulator)",
            path.display()
        )));
    }
    if !scenario.faults.provisioning.any() {
        return Ok(());
    }
    Err(RunError::CannotStart(format!(
        "faults.provisioning needs the in-process emulator; the emulator at {} runs in \
         another process (leave out --emulator, or drop faults.provisioning)",
        path.display()
    )))
}

/// The scenario's device faults, with times and skew in real time.
fn device_faults(scenario: &Scenario, log: Arc<FaultLog>) -> DeviceFaults {
    let faults = &scenario.faults;
    let now = Instant::now();
    DeviceFaults {
        drop_rate: faults.drops.rate,
        drop_at: faults.drops.at.clone(),
        storms: faults.drops.all_at.iter().map(|at| now + *at).collect(),
        crash: faults
            .crash
            .as_ref()
            .map(|c| (c.per_device_per_second, c.max_per_device)),
        skew: faults
            .clock_skew
            .as_ref()
            .map(|s| (s.share, s.offset_seconds / scenario.clock.speedup)),
        log,
    }
}

/// The report's faults section, when the scenario injects any: the
/// emulator's injections added to the devices' own, and the failed devices
/// by the step and reason that ended them.
fn fault_section(
    scenario: &Scenario,
    log: &FaultLog,
    emulator: Option<&EmulatorFaults>,
    outcomes: &[DeviceOutcome],
) -> Option<FaultSection> {
    if scenario.faults == scenario::Faults::default() {
        return None;
    }
    if let Some(emulator) = emulator {
        let counts = emulator.injected();
        log.add_injected(FaultKind::HookDenial, counts.denied);
        log.add_injected(FaultKind::Throttle, counts.throttled);
        log.add_injected(FaultKind::Latency, counts.delayed);
    }
    let mut failed: Vec<FailedDevices> = Vec::new();
    for (op, reason) in outcomes.iter().filter_map(|o| o.failure) {
        let (op, reason) = (op.as_str(), reason.as_str());
        match failed.iter_mut().find(|f| f.op == op && f.reason == reason) {
            Some(entry) => entry.devices += 1,
            None => failed.push(FailedDevices {
                op: op.to_owned(),
                reason: reason.to_owned(),
                devices: 1,
            }),
        }
    }
    Some(log.section(failed))
}

fn telemetry_settings(scenario: &Scenario) -> Option<TelemetrySettings> {
    let telemetry = &scenario.telemetry;
    telemetry.enabled.then(|| TelemetrySettings {
        interval: telemetry.interval,
        qos: match telemetry.qos {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        },
        payload_bytes: telemetry.payload_bytes,
        topic: telemetry.topic.clone(),
    })
}

fn rotation_schedule(scenario: &Scenario) -> Option<RotationSchedule> {
    let rotation = &scenario.rotation;
    rotation.enabled.then(|| RotationSchedule {
        check_every: scenario.to_real(rotation.check_every),
        renew_before: scenario.to_real(rotation.renew_before),
        jitter: scenario.to_real(rotation.jitter),
    })
}

/// Runs the fleet until the scenario's duration is over or the user
/// interrupts; either way every device is told to disconnect. Returns the
/// devices' outcomes and when the fleet was told to stop.
async fn run_fleet(
    scenario: &Scenario,
    plan: &FleetPlan,
    options: &RunOptions,
    context: Arc<DeviceContext>,
    recorder: &Arc<Recorder>,
    (interrupt, stop): (CancellationToken, CancellationToken),
    lanes: Option<&Lanes>,
) -> (Vec<DeviceOutcome>, SystemTime) {
    let progress = options
        .progress
        .then(|| Progress::start(Arc::clone(recorder), plan.shard_size(), stop.clone()));
    let duration = scenario.run.duration;
    // Notes when the fleet was told to stop, whoever told it.
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => info!("run duration reached: stopping the fleet"),
                _ = interrupt.cancelled() => {}
                _ = stop.cancelled() => {}
            }
            stop.cancel();
            SystemTime::now()
        }
    });
    info!(run = %scenario.name, devices = plan.shard_size(), shard = %plan.shard, "fleet starting");
    let outcomes = fleet::run(plan, context, Instant::now(), stop.clone(), lanes).await;
    // Every device gave up before the run's end: the fleet stopped now.
    stop.cancel();
    let stopped_at = timer.await.unwrap_or_else(|_| SystemTime::now());
    if let Some(progress) = progress {
        progress.finish();
    }
    (outcomes, stopped_at)
}

/// Sockets a run holds at most: one per device of this shard, and the
/// emulator's end of each when it runs inside this process, with a quarter
/// more for rotations (a rotating device briefly holds its old connection,
/// its new one and a refused one, and a revocation may open a control-plane
/// connection).
pub fn connections_needed(scenario: &Scenario, options: &RunOptions) -> u64 {
    let devices = scenario
        .fleet
        .size
        .div_ceil(u64::from(options.shard.count.max(1)));
    let in_process = options.emulator.is_none() && options.aws_target.is_none();
    let ends = if in_process { 2 } else { 1 };
    devices * ends + devices / 4
}

/// Starts the descriptor lanes the run asks for, or those the open-file
/// limit makes necessary for its connections.
fn start_lanes(scenario: &Scenario, options: &RunOptions) -> Result<Option<Lanes>, RunError> {
    let count = match options.lanes {
        Some(0) => return Ok(None),
        Some(count) => count,
        None => {
            let (limit, _) = rlimit::Resource::NOFILE.get().map_err(|e| {
                RunError::CannotStart(format!("cannot read the open-file limit: {e}"))
            })?;
            match lanes::needed(connections_needed(scenario, options), limit) {
                Some(count) => count,
                None => return Ok(None),
            }
        }
    };
    let started = Lanes::start(count).map_err(|e| RunError::CannotStart(e.to_string()))?;
    info!(
        lanes = count,
        "the fleet's sockets are spread over descriptor lanes of their own"
    );
    Ok(Some(started))
}

fn write_report(report: &Report, path: Option<&Path>) -> Result<(), RunError> {
    let Some(path) = path else { return Ok(()) };
    let json = report
        .to_json_pretty()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    std::fs::write(path, json)
        .map_err(|e| RunError::Failed(format!("{}: cannot write report: {e}", path.display())))
}
