//! A whole run, start to finish: start the target, set it up through the
//! control plane, spawn the fleet on its arrival schedule, stop it when the
//! run's time is up (or on Ctrl-C), check every device's identity, and
//! build the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::control::{ControlPlane, SetupNames, SetupOutput, SetupSpec};
use crate::device::lifecycle::{RetryPolicy, RotationSchedule};
use crate::device::mqtt::{ConnectSettings, Endpoint, Session};
use crate::device::task::prove_refused;
use crate::device::{DeviceContext, DeviceOutcome, TelemetrySettings};
use crate::emulator::{self, Emulator, EmulatorConfig};
use crate::fleet::{self, ArrivalSchedule, FleetPlan};
use crate::identity::Credentials;
use crate::identity::store::CredentialStore;
use crate::identity::tls::client_config;
use crate::observe::progress::Progress;
use crate::observe::report::{FinalCheck, Report};
use crate::observe::{Recorder, metrics};
use crate::scenario::{CredentialStorage, ProvisioningMethod, Qos, Scenario, Target};

/// How many end-of-run identity checks run at once.
const CHECK_CONCURRENCY: usize = 32;

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
}

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
    /// The in-process emulator, still running, on the `local` target.
    pub emulator: Option<Emulator>,
    /// Where device credentials were written, with disk storage.
    pub credentials_dir: Option<PathBuf>,
}

/// The names `setup` gives the resources of a run.
fn setup_names(scenario: &Scenario) -> SetupNames {
    SetupNames {
        account_id: emulator::ACCOUNT_ID.to_owned(),
        region: emulator::REGION.to_owned(),
        claim_policy: "fleetsim-claim".to_owned(),
        device_policy: "fleetsim-device".to_owned(),
        template: scenario.provisioning.template.clone(),
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
    if scenario.target == Target::Aws {
        return Err(RunError::CannotStart(
            "target `aws` needs resources created by `fleetsim setup`, which this build does not provide yet; use target `local`".into(),
        ));
    }
    if let Some(addr) = options.metrics {
        metrics::install_exporter(addr).map_err(|e| RunError::CannotStart(e.to_string()))?;
    }
    let emulator = start_emulator(scenario).await?;
    let control = Arc::new(ControlPlane::for_endpoint(
        &emulator.control_url(),
        emulator::REGION,
    ));
    let setup = set_up(scenario, options, &control).await?;
    let (store, credentials_dir) = credential_store(scenario)?;
    let recorder = Arc::new(Recorder::new(&scenario.name));
    let stop = CancellationToken::new();
    let context = Arc::new(device_context(
        scenario, &emulator, &setup, store, control, &recorder, &stop,
    )?);
    let started = Instant::now();
    let outcomes = run_fleet(
        scenario,
        options,
        Arc::clone(&context),
        &recorder,
        interrupt,
        stop,
    )
    .await;
    let elapsed = started.elapsed();
    let check = final_check(&context, &outcomes, scenario.fleet.size).await;
    let mut report = Report::build(&recorder, &scenario.slo, &check, elapsed)
        .map_err(|e| RunError::Failed(e.to_string()))?;
    report.key_type = Some(scenario.provisioning.method.key_type().to_owned());
    write_report(&report, options.report_path.as_deref())?;
    Ok(RunSummary {
        report,
        outcomes,
        emulator: Some(emulator),
        credentials_dir,
    })
}

async fn start_emulator(scenario: &Scenario) -> Result<Emulator, RunError> {
    let config = EmulatorConfig {
        certificate_validity: scenario.to_real(scenario.certificates.validity),
        key_pool_size: key_pool_size(scenario),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config)
        .await
        .map_err(|e| RunError::CannotStart(e.to_string()))?;
    info!(mqtt = %emulator.mqtt_addr(), control = %emulator.control_url(), "emulator started");
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
    let names = setup_names(scenario);
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

/// Opens the credential store. A disk store starts empty: credentials left
/// by an earlier run of the same scenario were issued by an emulator that
/// no longer exists.
fn credential_store(scenario: &Scenario) -> Result<(CredentialStore, Option<PathBuf>), RunError> {
    match &scenario.credentials {
        CredentialStorage::Memory => Ok((CredentialStore::memory(), None)),
        CredentialStorage::Disk { dir } => {
            let root = dir.join(&scenario.name);
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
    emulator: &Emulator,
    setup: &SetupOutput,
    store: CredentialStore,
    control: Arc<ControlPlane>,
    recorder: &Arc<Recorder>,
    stop: &CancellationToken,
) -> Result<DeviceContext, RunError> {
    let endpoint = Endpoint {
        host: "localhost".to_owned(),
        port: emulator.mqtt_addr().port(),
    };
    Ok(DeviceContext {
        connect: ConnectSettings {
            endpoint,
            keep_alive: std::time::Duration::from_secs(60),
            step_timeout: scenario.run.step_timeout,
        },
        root_pem: emulator.root_pem().to_owned(),
        claim: Credentials {
            certificate_pem: setup.claim_certificate_pem.clone(),
            private_key_pem: setup.claim_private_key_pem.clone(),
        },
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
    })
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
/// interrupts; either way every device is told to disconnect.
async fn run_fleet(
    scenario: &Scenario,
    options: &RunOptions,
    context: Arc<DeviceContext>,
    recorder: &Arc<Recorder>,
    interrupt: CancellationToken,
    stop: CancellationToken,
) -> Vec<DeviceOutcome> {
    let plan = FleetPlan {
        size: scenario.fleet.size,
        serials: scenario.fleet.serial_pattern.clone(),
        arrivals: ArrivalSchedule::new(&scenario.arrival),
    };
    let progress = options
        .progress
        .then(|| Progress::start(Arc::clone(recorder), scenario.fleet.size, stop.clone()));
    let duration = scenario.run.duration;
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => info!("run duration reached: stopping the fleet"),
                _ = interrupt.cancelled() => {}
            }
            stop.cancel();
        }
    });
    info!(run = %scenario.name, devices = plan.size, "fleet starting");
    let outcomes = fleet::run(&plan, context, Instant::now(), stop.clone()).await;
    timer.abort();
    if let Some(progress) = progress {
        progress.finish();
    }
    outcomes
}

/// Proves, from the outside, what every device left behind: its current
/// certificate still connects, and every certificate it retired is refused.
async fn final_check(
    context: &Arc<DeviceContext>,
    outcomes: &[DeviceOutcome],
    devices: u64,
) -> FinalCheck {
    let limit = Arc::new(Semaphore::new(CHECK_CONCURRENCY));
    let mut checks = JoinSet::new();
    for outcome in outcomes {
        let Some(thing) = outcome.thing_name.clone() else {
            continue;
        };
        let (context, limit) = (Arc::clone(context), Arc::clone(&limit));
        let (current, retired) = (outcome.current.clone(), outcome.retired.clone());
        checks.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let works = match &current {
                Some(credentials) => identity_works(&context, &thing, credentials).await,
                None => false,
            };
            let mut accepted = 0;
            for old in &retired {
                if !prove_refused(&context.connect, &context.root_pem, &thing, old).await {
                    accepted += 1;
                }
            }
            (works, retired.len() as u64, accepted)
        });
    }
    let mut check = FinalCheck {
        devices,
        rotations_per_device: outcomes
            .iter()
            .filter(|o| o.thing_name.is_some())
            .map(|o| o.rotations)
            .collect(),
        ..FinalCheck::default()
    };
    while let Some(Ok((works, retired, accepted))) = checks.join_next().await {
        if works {
            check.provisioned += 1;
        } else {
            check.bricked += 1;
        }
        check.retired_certificates += retired;
        check.retired_still_accepted += accepted;
    }
    info!(
        provisioned = check.provisioned,
        bricked = check.bricked,
        retired = check.retired_certificates,
        "end-of-run identity check done"
    );
    check
}

async fn identity_works(context: &DeviceContext, thing: &str, credentials: &Credentials) -> bool {
    let Ok(tls) = client_config(&context.root_pem, credentials) else {
        return false;
    };
    match Session::connect(&context.connect, thing, tls).await {
        Ok(session) => {
            session.disconnect().await;
            true
        }
        Err(_) => false,
    }
}

fn write_report(report: &Report, path: Option<&Path>) -> Result<(), RunError> {
    let Some(path) = path else { return Ok(()) };
    let json = report
        .to_json_pretty()
        .map_err(|e| RunError::Failed(e.to_string()))?;
    std::fs::write(path, json)
        .map_err(|e| RunError::Failed(format!("{}: cannot write report: {e}", path.display())))
}
