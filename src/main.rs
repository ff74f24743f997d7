//! The `lockstep` command: the command line and one module per subcommand,
//! on top of the `lockstep-vmm`, `lockstep-ft` and `lockstep-status`
//! libraries (docs/architecture.md).

mod cli;
mod commands;
mod exit_status;
#[cfg(feature = "failpoints")]
mod failpoints;
mod launch;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};
use exit_status::ExitStatus;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Test builds only: fail points from the environment (none otherwise).
    #[cfg(feature = "failpoints")]
    let _failpoints = failpoints::setup();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => commands::run(args),
        Command::Record(args) => commands::record(args),
        Command::Replay(args) => commands::replay(args),
        Command::Status(args) => commands::status(args),
        Command::Ft(args) => commands::ft(args),
        Command::Primary(args) => commands::primary(args),
        Command::Backup(args) => commands::backup(args),
        Command::Keygen(args) => commands::keygen(args),
    };
    match result {
        Ok(status) => ExitCode::from(status.code()),
        Err(e) => {
            eprintln!("lockstep: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(ExitStatus::Error.code())
        }
    }
}
