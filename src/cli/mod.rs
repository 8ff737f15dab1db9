//! The command line: `dsmake build|plan|status|graph|gc|worker|remote|kinds|completions`.

mod build;
mod copy;
mod error;
mod gc;
mod graph;
mod kinds;
mod remote;
mod search;
mod status;
mod worker;
mod workspace;

pub use crate::error::UsageError;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;

pub use error::{EXIT_CODES, Error};

#[derive(Parser, Debug)]
#[command(
    name = "dsmake",
    version,
    about = "A declarative build system for datasets: content-hashed shard targets, built only when missing or stale",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail: every target in plans, every built target in builds.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build every target that is missing or stale.
    #[command(after_help = EXIT_CODES)]
    Build(build::BuildArgs),
    /// Show what a build would do, and why (same as `build --dry-run`).
    #[command(after_help = EXIT_CODES)]
    Plan(build::PlanArgs),
    /// What the store holds for each step: fresh, stale, missing, sizes, rows and failures.
    #[command(after_help = EXIT_CODES)]
    Status(status::StatusArgs),
    /// The pipeline as a Graphviz DOT graph (steps, or targets with --shards).
    #[command(after_help = EXIT_CODES)]
    Graph(graph::GraphArgs),
    /// List store files that no target of the current plan owns; delete them with --yes.
    #[command(after_help = EXIT_CODES)]
    Gc(gc::GcArgs),
    /// Copy built targets to another store (local ↔ S3) without rebuilding them.
    #[command(after_help = EXIT_CODES)]
    Copy(copy::CopyArgs),
    /// Build one target from its serialised job (what local and remote executors run).
    #[command(after_help = EXIT_CODES)]
    Worker(worker::WorkerArgs),
    /// Remote executors: log in to Databricks, make a remote file from Terraform outputs.
    #[command(subcommand, after_help = EXIT_CODES)]
    Remote(remote::RemoteCommand),
    /// Search a pipeline's knn-index with a text (or --image): the top k with score, url and caption.
    #[command(after_help = EXIT_CODES)]
    Search(search::SearchArgs),
    /// The step kinds this dsmake knows, with their settings.
    Kinds,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What selects and configures a pipeline, shared by the commands that plan.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// A pipeline name under pipelines/ (looked up from here upwards) or a path to a .toml file.
    pub pipeline: String,
    /// Override a param: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub set: Vec<(String, String)>,
    /// Only this step, or one target (STEP/SHARD), and what it needs (repeatable).
    #[arg(long, value_name = "STEP[/SHARD]")]
    pub target: Vec<String>,
    /// Rebuild this step's targets even when fresh (repeatable).
    #[arg(long, value_name = "STEP")]
    pub force: Vec<String>,
    /// Re-attempt only the failed rows (downloads) of this step's built targets, keeping what succeeded;
    /// what reads those targets is rebuilt (repeatable).
    #[arg(long, value_name = "STEP")]
    pub retry_failed: Vec<String>,
    /// Let downloads reach this host although it is loopback or private (repeatable; also
    /// DSMAKE_ALLOW_HOSTS=a,b). The pipeline's `allow_hosts` setting does the same for one step.
    #[arg(long, value_name = "HOST", env = "DSMAKE_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_host: Vec<String>,
    /// Where outputs live: a folder (default ./dsmake-store), file:///path or s3://bucket/prefix.
    #[arg(long, env = "DSMAKE_STORE")]
    pub store: Option<String>,
    /// A remote definition: remotes/NAME.toml (looked up from here upwards) or a path; gives the store.
    #[arg(long, env = "DSMAKE_REMOTE", value_name = "NAME")]
    pub remote: Option<String>,
    /// The ~/.databrickscfg profile for a databricks remote (as the Databricks CLI's -p).
    #[arg(short = 'p', long, env = "DATABRICKS_CONFIG_PROFILE", value_name = "PROFILE")]
    pub profile: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
}

fn parse_set(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, found `{raw}`"))
}

/// Output settings every command shares.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub verbose: bool,
    pub quiet: bool,
    pub terminal: bool,
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let out = Output { verbose: cli.verbose, quiet: cli.quiet, terminal: std::io::stderr().is_terminal() };
    // A panic is a bug whatever the command: it ends as an internal error with its own code, not as a crash
    // that looks like an environment problem.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command, out))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Internal(format!("panicked: {what}")).into())
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            let error = Error::classify(e);
            if let Some(message) = error.message() {
                eprintln!("{message}");
            }
            error.exit_code()
        }
    }
}

fn run(command: Command, out: Output) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => build::build(args, out),
        Command::Plan(args) => build::plan(args, out),
        Command::Status(args) => status::status(args, out),
        Command::Graph(args) => graph::graph(args),
        Command::Gc(args) => gc::gc(args, out),
        Command::Copy(args) => copy::copy(args, out),
        Command::Worker(args) => worker::worker(args),
        Command::Remote(command) => remote::remote(command, out),
        Command::Search(args) => search::search(args),
        Command::Kinds => kinds::kinds(),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dsmake", &mut std::io::stdout());
            Ok(())
        }
    }
}
