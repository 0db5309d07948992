//! The `fleetsim` command line: parses arguments, sets up logging, runs the
//! chosen command and maps its outcome to an exit code that a CI job can
//! act on (0: every SLO held; 1: an SLO or invariant was missed; 2: the run
//! could not start).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    },
    /// Check a scenario file without running it.
    Validate {
        /// The scenario file (YAML).
        scenario: PathBuf,
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
        } => {
            let options = RunOptions {
                report_path: report,
                metrics: (!no_metrics).then_some(metrics),
                policies_dir: policies,
                progress: true,
            };
            run(&scenario, options)
        }
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
                if summary.report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_SLO_MISSED)
                }
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
