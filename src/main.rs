//! The `fleetsim` command line: parses arguments, sets up logging, runs the
//! chosen command and maps its outcome to an exit code that a CI job can
//! act on (0: every SLO held; 1: an SLO or invariant was missed; 2: the run
//! could not start, or the reports to merge could not be read or merged).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetsim::fleet::Shard;
use fleetsim::observe::Report;
use fleetsim::run::{RunError, RunOptions};
use fleetsim::scenario::Scenario;
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
    },
    /// Work with run reports.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Check a scenario file without running it.
    Validate {
        /// The scenario file (YAML).
        scenario: PathBuf,
    },
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
            shard,
            shards,
            source_addresses,
        } => {
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
                shard,
                source_addresses,
            };
            run(&scenario, options)
        }
        Command::Report {
            command: ReportCommand::Merge { reports, output },
        } => merge(&reports, output.as_deref()),
    }
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

fn run(path: &std::path::Path, options: RunOptions) -> ExitCode {
    let scenario = match Scenario::load(path) {
        Ok(scenario) => scenario,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
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
        .init();
}
