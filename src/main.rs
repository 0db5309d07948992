//! The `fleetsim` command line: parses arguments, sets up logging, runs the
//! chosen command and maps its outcome to an exit code that a CI job can
//! act on (0: every SLO held; 1: an SLO or invariant was missed; 2: the run
//! could not start, or the reports to merge could not be read or merged).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleetsim::console::Access;
use fleetsim::control::ControlPlane;
use fleetsim::fleet::Shard;
use fleetsim::observe::Report;
use fleetsim::run::{ConsoleOptions, RunError, RunOptions};
use fleetsim::scenario::Scenario;
use fleetsim::standalone::{Standalone, StandaloneOptions};
use fleetsim::target::{self, AwsAccess, CleanupRequest, Prefix, SetupRequest, TargetConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fleetsim",
    version,
    about = "Load simulator for AWS IoT Core fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and report how provisioning and rotation behaved.
    Run {
        /// The scenario file (YAML).
        scenario: PathBuf,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Where to serve Prometheus metrics.
        #[arg(long, default_value = "127.0.0.1:9464", env = "FLEETSIM_METRICS")]
        metrics: SocketAddr,
        /// Do not serve Prometheus metrics.
        #[arg(long)]
        no_metrics: bool,
        /// Folder holding the claim policy, device policy and provisioning
        /// template (defaults to the copies built into fleetsim).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Target a running `fleetsim emulator` (its state directory or its
        /// emulator.json) instead of starting one inside this process.
        #[arg(long, value_name = "STATE_DIR")]
        emulator: Option<PathBuf>,
        /// Serve the web console on this address (127.0.0.1:8080 when no
        /// address is given). Access needs FLEETSIM_CONSOLE_TOKEN, or the
        /// random token printed at start.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = fleetsim::console::DEFAULT_ADDR)]
        console: Option<SocketAddr>,
        /// Let anyone who can reach the console use it, without a token
        /// (loopback addresses only).
        #[arg(long, requires = "console")]
        console_no_auth: bool,
        /// Simulate only shard I of N: devices I, I+N, I+2N, ... at their
        /// single-process arrival times.
        #[arg(long, value_name = "I/N", conflicts_with = "shards")]
        shard: Option<Shard>,
        /// Split the fleet into N shards and take this process's index from
        /// JOB_COMPLETION_INDEX (set by Kubernetes Indexed Jobs).
        #[arg(long, value_name = "N", env = "FLEETSIM_SHARDS")]
        shards: Option<u32>,
        /// Local addresses to start device connections from, in turn
        /// (comma-separated), so one machine is not limited to one
        /// address's ephemeral ports.
        #[arg(
            long,
            value_name = "IP,...",
            value_delimiter = ',',
            env = "FLEETSIM_SOURCE_ADDRESSES"
        )]
        source_addresses: Vec<std::net::IpAddr>,
        /// Run against the target `fleetsim setup` described in this file
        /// (default for `target: aws`: certs/aws/target.json).
        #[arg(long, value_name = "FILE", conflicts_with = "emulator")]
        target_config: Option<PathBuf>,
        /// Start a run against AWS without asking.
        #[arg(long, short)]
        yes: bool,
        /// Make the in-process emulator throttle like AWS: NAME=RATE per
        /// second, as `fleetsim emulator --quota`.
        #[arg(long = "emulator-quota", value_name = "NAME=RATE")]
        emulator_quotas: Vec<String>,
        /// Spread the fleet's sockets over N threads with descriptor tables
        /// of their own, each up to the open-file limit (default: as many
        /// as the limit requires, none when the fleet fits; 0: none).
        #[arg(long, value_name = "N")]
        lanes: Option<usize>,
    },
    /// Work with run reports.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Run the IoT Core emulator on its own until Ctrl-C or SIGTERM.
    Emulator(EmulatorArgs),
    /// Measure fleetsim on this machine and write the results as JSON
    /// (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        kind: BenchKind,
        /// Where to write the results (default benches/results/local/<kind>.json,
        /// which git ignores; the recorded results are beside it).
        #[arg(long, global = true)]
        output: Option<PathBuf>,
    },
    /// Check a scenario file without running it.
    Validate {
        /// The scenario file (YAML).
        scenario: PathBuf,
    },
    /// Create what runs against AWS need (policies, template, claim
    /// certificate, target description), only what is missing.
    Setup(SetupArgs),
    /// Remove everything setup and runs created under a prefix.
    Cleanup(CleanupArgs),
}

/// Where the account is and how to confirm, shared by setup and cleanup.
#[derive(clap::Args)]
struct TargetArgs {
    /// What every resource name starts with (cleanup: the target's, else fleetsim).
    #[arg(long)]
    prefix: Option<String>,
    /// The target's name: its files go to <certs-dir>/<target>/.
    #[arg(long, default_value = "aws")]
    target: String,
    /// Folder of the targets' files.
    #[arg(long, default_value = "certs")]
    certs_dir: PathBuf,
    /// AWS region (default: the SDK's chain, AWS_REGION or the profile).
    #[arg(long)]
    region: Option<String>,
    /// AWS profile (default: AWS_PROFILE or `default`).
    #[arg(long)]
    profile: Option<String>,
    /// Send control-plane calls here instead of AWS (a `fleetsim emulator`).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Do it without asking.
    #[arg(long, short)]
    yes: bool,
    /// Print the plan and change nothing.
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
}

#[derive(clap::Args)]
struct SetupArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Account id for the policy documents (default: the role ARN's).
    #[arg(long)]
    account: Option<String>,
    /// An existing provisioning role (trusts iot.amazonaws.com, has AWSIoTThingsRegistration).
    #[arg(long, value_name = "ARN")]
    role_arn: Option<String>,
    /// A pre-provisioning hook Lambda for the template.
    #[arg(long, value_name = "ARN")]
    hook_arn: Option<String>,
    /// Connect devices to HOST[:PORT] instead of DescribeEndpoint's answer.
    #[arg(long, value_name = "HOST[:PORT]")]
    data_endpoint: Option<String>,
    /// Trust this root CA instead of the shipped Amazon Root CA 1.
    #[arg(long, value_name = "FILE")]
    root_ca: Option<PathBuf>,
    /// Folder holding the claim policy, device policy and provisioning
    /// template (defaults to the copies built into fleetsim).
    #[arg(long)]
    policies: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CleanupArgs {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Subcommand)]
enum BenchKind {
    /// The crypto ceiling of one provisioning and one rotation on every
    /// core, for each key exchange a device can offer.
    Crypto {
        /// Seconds per flow and key exchange.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Provision a fleet with the emulator in-process, hold it idle, then
    /// rotate every certificate once; the ceiling is measured first.
    Provision {
        /// Simulated devices in the fleet.
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        /// Arrivals per second (default: 80% of the measured ceiling).
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds per flow of the crypto ceiling.
        #[arg(long, default_value_t = 3.0)]
        ceiling_seconds: f64,
        /// Descriptor lanes, as for `fleetsim run --lanes`.
        #[arg(long)]
        lanes: Option<usize>,
    },
    /// Memory of an online idle fleet, the emulator in its own process.
    Memory {
        /// Simulated devices in the fleet.
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        /// Arrivals per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
    },
    /// QoS 1 telemetry through the in-process emulator.
    Telemetry {
        /// Simulated devices in the fleet.
        #[arg(long, default_value_t = 10_000)]
        devices: u64,
        /// Arrivals per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Time between two messages of one device.
        #[arg(long, default_value = "1s", value_parser = fleetsim::scenario::parse_duration)]
        interval: Duration,
        /// How long the fleet publishes.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Publish through a `fleetsim emulator` child process instead of
        /// the in-process emulator.
        #[arg(long)]
        standalone: bool,
    },
    /// Micro-benchmarks of topic matching, policy evaluation and MQTT
    /// encoding and decoding.
    Micro {
        /// Operations per round (11 rounds; the median is reported).
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
    },
    /// The same fleet against a standalone emulator and against mosquitto
    /// (mutual TLS, same CA and certificates): connect and publish only.
    Mosquitto {
        /// Simulated devices in the fleet.
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        /// QoS 1 messages each device publishes.
        #[arg(long, default_value_t = 10)]
        messages: u64,
    },
}

impl BenchKind {
    fn default_output(&self) -> PathBuf {
        let name = match self {
            BenchKind::Crypto { .. } => "crypto".to_owned(),
            BenchKind::Micro { .. } => "micro".to_owned(),
            BenchKind::Provision { devices, .. } => format!("provision-{devices}"),
            BenchKind::Memory { devices, .. } => format!("memory-{devices}"),
            BenchKind::Telemetry { devices, .. } => format!("telemetry-{devices}"),
            BenchKind::Mosquitto { devices, .. } => format!("mosquitto-{devices}"),
        };
        // Not beside the recorded results that BENCHMARKS.md quotes: a run
        // on another machine must not overwrite them unasked.
        PathBuf::from("benches/results/local").join(format!("{name}.json"))
    }

    /// Whether the benchmark's fleet can go over descriptor lanes: those
    /// that are a `fleetsim run` can; the others open their sockets here.
    fn spread(&self) -> Spread {
        match self {
            // The memory benchmark's emulator is a child process with one
            // table; only fleets with the emulator in this process spread.
            BenchKind::Provision { .. } => Spread::Lanes,
            BenchKind::Telemetry { standalone, .. } if !*standalone => Spread::Lanes,
            _ => Spread::OneTable,
        }
    }

    /// Open files the benchmark needs: a client and a server end for
    /// every device of an in-process fleet.
    fn open_files(&self) -> u64 {
        match self {
            BenchKind::Crypto { .. } | BenchKind::Micro { .. } => 0,
            // A rotating device briefly holds its old, its new and a refused
            // connection, and each revocation may open a control-plane one.
            BenchKind::Provision { devices, .. } => 2 * devices + devices / 4,
            BenchKind::Telemetry {
                devices,
                standalone,
                ..
            } => devices * if *standalone { 1 } else { 2 },
            BenchKind::Memory { devices, .. } => *devices,
            BenchKind::Mosquitto { devices, .. } => *devices,
        }
    }
}

#[derive(clap::Args)]
struct EmulatorArgs {
    /// Port of the MQTT endpoint (mutual TLS); 0 picks a free one.
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// Port of the control-plane REST API (plain HTTP); 0 picks a free one.
    #[arg(long, default_value_t = 8443)]
    control_port: u16,
    /// Address both listeners bind to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Where the CA, the registry, the claim credentials and emulator.json live.
    #[arg(long, default_value = "emulator-state")]
    state_dir: PathBuf,
    /// Real lifetime of the certificates the emulator issues (2s, 10m, 30d, ...;
    /// at least 2s).
    #[arg(long, default_value = "365d", value_parser = parse_validity)]
    certificate_validity: Duration,
    /// Provisioning template to create and name in emulator.json.
    #[arg(long, default_value = "fleetsim-fleet")]
    template: String,
    /// Folder holding the claim policy, device policy and provisioning
    /// template (defaults to the copies built into fleetsim).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Serve the web console's registry view on this address (127.0.0.1:8080
    /// when no address is given). Access needs FLEETSIM_CONSOLE_TOKEN, or the
    /// random token printed at start.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = fleetsim::console::DEFAULT_ADDR)]
    console: Option<SocketAddr>,
    /// Let anyone who can reach the console use it, without a token
    /// (loopback addresses only).
    #[arg(long, requires = "console")]
    console_no_auth: bool,
    /// Throttle like AWS: NAME=RATE per second (connect,
    /// connect_per_client_id, create_certificate, register_thing,
    /// control_plane); repeat for several. Unlimited by default.
    #[arg(long = "quota", value_name = "NAME=RATE")]
    quotas: Vec<String>,
    /// Accept MQTT connections on N more threads, each with a descriptor
    /// table of its own, so that about N+1 times the open-file limit's
    /// connections fit (default 0: one table).
    #[arg(long, value_name = "N", default_value_t = 0)]
    lanes: usize,
}

/// A run's report is written at its end: a folder that is not there is
/// refused before the run, not after it.
fn report_folder_exists(path: &std::path::Path) -> Result<(), String> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => std::path::Path::new("."),
    };
    if folder.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "--report {}: the folder {} does not exist; create it first",
            path.display(),
            folder.display()
        ))
    }
}

/// The emulator's quotas named on the command line, on top of "unlimited".
/// The emulator does not throttle MQTT connects, so a connect quota is
/// refused rather than accepted and ignored.
fn parse_quotas(assignments: &[String]) -> Result<fleetsim::pacing::Quotas, String> {
    let mut quotas = fleetsim::pacing::Quotas::default();
    for assignment in assignments {
        quotas.set(assignment).map_err(|e| format!("--quota {e}"))?;
    }
    if quotas.connect.is_some() || quotas.connect_per_client_id.is_some() {
        return Err(
            "--quota connect and connect_per_client_id: the emulator does not throttle MQTT \
             connects; the scenario's `pacing` section paces the fleet's own connects"
                .to_owned(),
        );
    }
    Ok(quotas)
}

fn parse_validity(text: &str) -> Result<Duration, String> {
    let validity = fleetsim::scenario::parse_duration(text)?;
    if validity < Duration::from_secs(2) {
        return Err("must be at least 2s: X.509 times have one-second resolution".into());
    }
    Ok(validity)
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Merge the JSON reports of every shard of one run into the fleet's
    /// report: exact percentiles, totals and SLO verdicts.
    Merge {
        /// The shard reports (JSON), one per shard.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Also write the merged report as JSON to this file.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

const EXIT_SLO_MISSED: u8 = 1;
const EXIT_CANNOT_START: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Validate { scenario } => validate(&scenario),
        Command::Run {
            scenario,
            report,
            metrics,
            no_metrics,
            policies,
            emulator,
            console,
            console_no_auth,
            shard,
            shards,
            source_addresses,
            target_config,
            yes,
            emulator_quotas,
            lanes,
        } => {
            let emulator_quotas = match parse_quotas(&emulator_quotas) {
                Ok(quotas) => quotas,
                Err(error) => return cannot(error),
            };
            if let Some(Err(error)) = report.as_deref().map(report_folder_exists) {
                return cannot(error);
            }
            let console = match console.map(|addr| console_options(addr, console_no_auth)) {
                Some(Err(code)) => return code,
                Some(Ok(options)) => Some(options),
                None => None,
            };
            let shard = match choose_shard(shard, shards) {
                Ok(shard) => shard,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CANNOT_START);
                }
            };
            let options = RunOptions {
                report_path: report,
                metrics: (!no_metrics).then_some(metrics),
                policies_dir: policies,
                progress: true,
                emulator,
                console,
                shard,
                source_addresses,
                recorder_tap: None,
                aws_target: None,
                emulator_quotas,
                lanes,
            };
            run(&scenario, options, target_config, yes)
        }
        Command::Emulator(args) => standalone(args),
        Command::Bench { kind, output } => bench(kind, output),
        Command::Setup(args) => with_runtime(setup(args)),
        Command::Cleanup(args) => with_runtime(cleanup(args)),
        Command::Report {
            command: ReportCommand::Merge { reports, output },
        } => merge(&reports, output.as_deref()),
    }
}

fn with_runtime(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts on any supported platform")
        .block_on(command)
}

/// Prints an error and gives the exit code of a command that could not act.
fn cannot(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_CANNOT_START)
}

async fn setup(args: SetupArgs) -> ExitCode {
    let t = &args.target;
    let prefix = match Prefix::new(t.prefix.as_deref().unwrap_or(target::DEFAULT_PREFIX)) {
        Ok(prefix) => prefix,
        Err(error) => return cannot(error),
    };
    let request = SetupRequest {
        prefix,
        target_name: t.target.clone(),
        certs_dir: t.certs_dir.clone(),
        access: access(t, None),
        account_id: args.account.clone(),
        role_arn: args.role_arn.clone(),
        hook_arn: args.hook_arn.clone(),
        data_endpoint: args.data_endpoint.clone(),
        root_ca: args.root_ca.clone(),
        policies_dir: args.policies.clone(),
    };
    let sdk = match request.access.load().await {
        Ok(sdk) => sdk,
        Err(error) => return cannot(error),
    };
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_default();
    let control = aws_control_plane(&sdk);
    let iam = iam_unless_overridden(&request.access, &sdk);
    let planned = match target::plan_setup(&request, &control, iam.as_ref(), &region).await {
        Ok(planned) => planned,
        Err(error) => return cannot(error),
    };
    println!(
        "fleetsim setup: prefix {}, region {region}\n{}",
        request.prefix,
        planned.plan.render()
    );
    if planned.plan.is_empty() {
        println!("nothing to change: every resource already exists");
        return ExitCode::SUCCESS;
    }
    if !go_ahead(t, &format!("create {} resources?", planned.plan.creates())) {
        return ExitCode::SUCCESS;
    }
    match target::setup(&request, &control, iam.as_ref(), &planned).await {
        Ok(_) => {
            let file = request.target_dir().join(target::TARGET_FILE);
            println!("setup complete; `fleetsim run` reads {}", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => cannot(format!(
            "{error}\n(what was created is kept: run setup again to finish, or cleanup to remove it)"
        )),
    }
}

async fn cleanup(args: CleanupArgs) -> ExitCode {
    let t = &args.target;
    let target_dir = t.certs_dir.join(&t.target);
    let previous = TargetConfig::load(&target_dir.join(target::TARGET_FILE)).ok();
    let prefix_text = t
        .prefix
        .clone()
        .or_else(|| previous.as_ref().map(|c| c.prefix.clone()))
        .unwrap_or_else(|| target::DEFAULT_PREFIX.to_owned());
    let prefix = match Prefix::new(&prefix_text) {
        Ok(prefix) => prefix,
        Err(error) => return cannot(error),
    };
    let sdk = match access(t, previous.as_ref()).load().await {
        Ok(sdk) => sdk,
        Err(error) => return cannot(error),
    };
    let control = aws_control_plane(&sdk);
    let iam = iam_unless_overridden(&access(t, previous.as_ref()), &sdk);
    let request = CleanupRequest { prefix, target_dir };
    let found = match target::plan_cleanup(&request, &control, iam.as_ref()).await {
        Ok(found) => found,
        Err(error) => return cannot(error),
    };
    if found.plan.deletes() == 0 {
        println!("nothing to delete under prefix {}", request.prefix);
        return ExitCode::SUCCESS;
    }
    println!(
        "fleetsim cleanup: prefix {}\n{}",
        request.prefix,
        found.plan.render()
    );
    if !go_ahead(t, "delete all of this?") {
        return ExitCode::SUCCESS;
    }
    match target::cleanup(&control, iam.as_ref(), &found).await {
        Ok(()) => {
            println!(
                "cleanup complete: nothing is left under prefix {}",
                request.prefix
            );
            ExitCode::SUCCESS
        }
        Err(error) => cannot(format!("{error}\n(run cleanup again to remove the rest)")),
    }
}

/// The control plane for setup and cleanup, kept to AWS's default TPS so
/// that cleaning up a large fleet is not throttled into failure.
fn aws_control_plane(sdk: &aws_config::SdkConfig) -> ControlPlane {
    let pacer = fleetsim::pacing::Pacer::new(&fleetsim::pacing::Quotas::aws_defaults());
    ControlPlane::from_sdk_config(sdk).paced(std::sync::Arc::new(pacer))
}

/// IAM, unless control-plane calls go to an endpoint override: that is a
/// stand-in for IoT only (the emulator), and IAM must not be called there.
fn iam_unless_overridden(
    access: &AwsAccess,
    sdk: &aws_config::SdkConfig,
) -> Option<target::ProvisioningRole> {
    access
        .endpoint_url
        .is_none()
        .then(|| target::ProvisioningRole::from_sdk_config(sdk))
}

/// Flags first, then what the target description recorded, then the chain.
fn access(args: &TargetArgs, previous: Option<&TargetConfig>) -> AwsAccess {
    let recorded = previous.map(TargetConfig::access).unwrap_or_default();
    AwsAccess {
        region: args.region.clone().or(recorded.region),
        profile: args.profile.clone().or(recorded.profile),
        endpoint_url: args.endpoint_url.clone().or(recorded.endpoint_url),
    }
}

/// Whether to carry out the printed plan: never on a dry run, at once with
/// `--yes`, else when the person at the terminal answers yes.
fn go_ahead(args: &TargetArgs, question: &str) -> bool {
    if args.dry_run {
        println!("dry run: nothing changed");
        return false;
    }
    if args.yes || confirm(question) {
        return true;
    }
    println!("not confirmed: nothing changed");
    false
}

/// Asks on stderr and reads one line from stdin; anything but y/yes is no.
fn confirm(question: &str) -> bool {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `--shard I/N`, or `--shards N` with the index from the environment, or
/// the whole fleet.
fn choose_shard(
    shard: Option<Shard>,
    shards: Option<u32>,
) -> Result<Shard, fleetsim::fleet::ShardError> {
    match (shard, shards) {
        (Some(shard), _) => Ok(shard),
        (None, Some(count)) => {
            let variable = Shard::INDEX_VARIABLE;
            let value = std::env::var(variable).ok();
            Shard::from_index_variable(variable, value.as_deref(), count)
        }
        (None, None) => Ok(Shard::WHOLE),
    }
}

fn merge(reports: &[PathBuf], output: Option<&std::path::Path>) -> ExitCode {
    let merged = match fleetsim::observe::merge::merge_files(reports) {
        Ok(merged) => merged,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    if let Some(path) = output
        && let Err(error) = write_json(&merged, path)
    {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CANNOT_START);
    }
    println!("{}", merged.render_table());
    verdict_exit_code(&merged)
}

fn write_json(report: &Report, path: &std::path::Path) -> Result<(), String> {
    let json = report.to_json_pretty().map_err(|e| e.to_string())?;
    std::fs::write(path, json)
        .map_err(|e| format!("{}: cannot write merged report: {e}", path.display()))
}

fn verdict_exit_code(report: &Report) -> ExitCode {
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_SLO_MISSED)
    }
}

/// The console's access: no token when asked (with a warning), else the
/// token from the environment or a random one that is printed at start.
fn console_options(addr: SocketAddr, no_auth: bool) -> Result<ConsoleOptions, ExitCode> {
    let (access, print_token) = if no_auth {
        eprintln!(
            "warning: the console has no token; anyone who can reach {addr} can drive devices"
        );
        (Access::Open, false)
    } else {
        let from_env = std::env::var(fleetsim::console::TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
        let print_token = from_env.is_none();
        let access = Access::token_or_random(from_env).map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CANNOT_START)
        })?;
        (access, print_token)
    };
    Ok(ConsoleOptions {
        addr,
        access,
        print_token,
        announce: None,
    })
}

fn validate(path: &std::path::Path) -> ExitCode {
    match Scenario::load(path) {
        Ok(scenario) => {
            println!("{}: scenario {:?} is valid", path.display(), scenario.name);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

fn run(
    path: &std::path::Path,
    mut options: RunOptions,
    target_config: Option<PathBuf>,
    yes: bool,
) -> ExitCode {
    let scenario = match Scenario::load(path) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    let connections = fleetsim::run::connections_needed(&scenario, &options);
    if let Err(error) = raise_open_file_limit(connections, Spread::Lanes) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CANNOT_START);
    }
    let target_config = target_config.or_else(|| {
        (scenario.target == fleetsim::scenario::Target::Aws)
            .then(|| PathBuf::from("certs/aws").join(target::TARGET_FILE))
    });
    if let Some(file) = target_config {
        let config = match TargetConfig::load(&file) {
            Ok(config) => config,
            Err(error) => return cannot(error),
        };
        println!(
            "run {:?} against account {} in {} (prefix {}) will create:\n{}",
            scenario.name,
            config.account_id,
            config.region,
            config.prefix,
            target::RunEstimate::of(&scenario).render()
        );
        println!("the fleet keeps to: {}", scenario.quotas());
        println!(
            "`fleetsim cleanup --prefix {}` removes it afterwards",
            config.prefix
        );
        if !yes && !confirm("start the run?") {
            // Not 0: a CI job without --yes must not pass a run that never ran.
            return cannot("not confirmed: nothing started (pass --yes to run without asking)");
        }
        options.aws_target = Some(config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts on any supported platform");
    runtime.block_on(async {
        let interrupt = CancellationToken::new();
        spawn_ctrl_c_handler(interrupt.clone());
        match fleetsim::run::execute(&scenario, &options, interrupt).await {
            Ok(summary) => {
                println!("{}", summary.report.render_table());
                verdict_exit_code(&summary.report)
            }
            Err(error @ RunError::CannotStart(_)) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_CANNOT_START)
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_SLO_MISSED)
            }
        }
    })
}

fn bench(kind: BenchKind, output: Option<PathBuf>) -> ExitCode {
    if let Err(error) = raise_open_file_limit(kind.open_files(), kind.spread()) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CANNOT_START);
    }
    let output = output.unwrap_or_else(|| kind.default_output());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts on any supported platform");
    let written = runtime.block_on(async {
        use fleetsim::bench;
        let host = fleetsim::bench::host::HostInfo::now();
        let results = match kind {
            BenchKind::Crypto { seconds } => bench::ceilings(seconds)
                .await
                .map(|all| serde_json::json!({ "host": host, "ceilings": all })),
            BenchKind::Micro { ops } => Ok(serde_json::json!({
                "host": host,
                "micro": bench::micro::run_all(ops),
            })),
            BenchKind::Provision {
                devices,
                rate,
                ceiling_seconds,
                lanes,
            } => bench::provision(devices, rate, ceiling_seconds, lanes)
                .await
                .map(to_json),
            BenchKind::Memory { devices, rate } => bench::memory(devices, rate).await.map(to_json),
            BenchKind::Telemetry {
                devices,
                rate,
                interval,
                seconds,
                standalone,
            } => bench::telemetry(devices, rate, interval, seconds, standalone)
                .await
                .map(to_json),
            BenchKind::Mosquitto { devices, messages } => {
                bench::mosquitto::compare(devices, messages)
                    .await
                    .map(to_json)
            }
        }?;
        bench::write_results(&output, &results)
    });
    match written {
        Ok(text) => {
            println!("{text}");
            eprintln!("results written to {}", output.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

fn to_json(results: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(results).expect("invariant: benchmark results are plain data")
}

/// Whether a command can spread its sockets over descriptor lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spread {
    Lanes,
    OneTable,
}

/// Headroom for the listeners, the control plane, logs and the state
/// directory beside the connections.
const SPARE_OPEN_FILES: u64 = 1024;

/// Raises this process's open-file limit to fit `connections` sockets.
/// The soft limit goes up to the hard one; a root process may raise the
/// hard limit too (up to the kernel's `fs.nr_open`). Where the hard limit
/// stays below what is needed, the run spreads its sockets over descriptor
/// lanes (threads with tables of their own, `fleetsim::lanes`); only a fleet
/// that even the most lanes cannot hold is refused, with what to do about it.
fn raise_open_file_limit(connections: u64, lanes: Spread) -> Result<u64, String> {
    use rlimit::Resource;
    let wanted = connections + SPARE_OPEN_FILES;
    let (soft, hard) = Resource::NOFILE
        .get()
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard >= wanted {
        Resource::NOFILE
            .set(wanted, hard)
            .map_err(|e| format!("cannot raise the open-file limit to {wanted}: {e}"))?;
        return Ok(wanted);
    }
    let refused = match Resource::NOFILE.set(wanted, wanted) {
        Ok(()) => return Ok(wanted),
        Err(refused) => refused,
    };
    if lanes == Spread::OneTable {
        return Err(format!(
            "{connections} connections need about {wanted} open files, but the limit is \
             {soft} (hard {hard}) and cannot be raised: {refused}; raise it with `ulimit -n \
             {wanted}` (as root) or in /etc/security/limits.conf"
        ));
    }
    Resource::NOFILE
        .set(hard, hard)
        .map_err(|e| format!("cannot raise the open-file limit to {hard}: {e}"))?;
    match fleetsim::lanes::needed(connections, hard) {
        None => Ok(hard),
        Some(lanes) if lanes <= fleetsim::lanes::MAX_LANES => {
            tracing::info!(
                connections,
                limit = hard,
                lanes,
                "the open-file limit cannot be raised ({refused}): connections go over descriptor lanes"
            );
            Ok(hard)
        }
        _ => Err(format!(
            "{connections} connections need about {wanted} open files, but the limit is \
             {soft} (hard {hard}) and cannot be raised: {refused}; even {} descriptor lanes \
             of {hard} would not hold them; raise it with `ulimit -n {wanted}` (as root) or \
             in /etc/security/limits.conf, or split the fleet with --shard",
            fleetsim::lanes::MAX_LANES
        )),
    }
}

/// Connections a standalone emulator makes room for; fewer is a warning,
/// not a refusal, since nothing says how many clients will come.
const STANDALONE_CONNECTIONS: u64 = 256 * 1024;

/// The standalone emulator cannot know how many clients will come: it takes
/// as many open files as it may, and says how many connections fit only
/// when that is fewer than it makes room for.
fn make_room_for_connections(lanes: usize) {
    if raise_open_file_limit(STANDALONE_CONNECTIONS, Spread::OneTable).is_ok() {
        return;
    }
    use rlimit::Resource;
    let Ok((_, hard)) = Resource::NOFILE.get() else {
        return;
    };
    let _ = Resource::NOFILE.set(hard, hard);
    // Each lane's table holds as many as the process's own.
    let tables = 1 + lanes as u64;
    let fit = tables * hard.saturating_sub(SPARE_OPEN_FILES);
    tracing::info!(
        connections = fit,
        lanes,
        "the open-file limit ({hard}) allows about this many client connections"
    );
}

fn standalone(args: EmulatorArgs) -> ExitCode {
    make_room_for_connections(args.lanes);
    let console = match args
        .console
        .map(|addr| console_options(addr, args.console_no_auth))
    {
        Some(Err(code)) => return code,
        Some(Ok(options)) => Some(options),
        None => None,
    };
    let quotas = match parse_quotas(&args.quotas) {
        Ok(quotas) => quotas,
        Err(error) => return cannot(error),
    };
    let options = StandaloneOptions {
        quotas,
        bind: args.bind,
        mqtt_port: args.mqtt_port,
        control_port: args.control_port,
        state_dir: args.state_dir,
        certificate_validity: args.certificate_validity,
        template: args.template,
        policies_dir: args.policies,
        lanes: args.lanes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts on any supported platform");
    runtime.block_on(async {
        let emulator = match Standalone::start(&options).await {
            Ok(emulator) => emulator,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_CANNOT_START);
            }
        };
        println!("{}", emulator.describe());
        let console = match console {
            Some(options) => match registry_console(&options, &emulator).await {
                Ok(handle) => Some(handle),
                Err(code) => return code,
            },
            None => None,
        };
        wait_for_stop_signal().await;
        tracing::info!("stopping the emulator");
        if let Some(console) = console {
            console.shutdown().await;
        }
        emulator.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The console of a standalone emulator: its registry, nothing else (there
/// is no fleet and no hands-on context beside it).
async fn registry_console(
    options: &ConsoleOptions,
    emulator: &Standalone,
) -> Result<fleetsim::console::ConsoleHandle, ExitCode> {
    let sources = fleetsim::console::ConsoleSources {
        fleet: None,
        registry: Some(std::sync::Arc::clone(emulator.emulator().registry())),
        metrics: None,
        hands_on: None,
    };
    let handle = fleetsim::console::start(options.addr, options.access.clone(), sources)
        .await
        .map_err(|error| {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CANNOT_START)
        })?;
    fleetsim::run::announce_console(options, handle.local_addr());
    Ok(handle)
}

/// Ctrl-C or SIGTERM, whichever comes first.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match terminate.as_mut() {
            Some(terminate) => _ = terminate.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}

/// The first Ctrl-C ends the run early but still writes the report; a
/// second one exits at once.
fn spawn_ctrl_c_handler(interrupt: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: stopping arrivals and disconnecting the fleet");
            interrupt.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
