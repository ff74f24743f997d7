//! `lockstep run`: one VM, no fault tolerance.

use crate::cli::RunArgs;
use crate::commands::live::{LiveOptions, run_live};
use crate::exit_status::ExitStatus;

pub fn run(args: RunArgs) -> anyhow::Result<ExitStatus> {
    run_live(
        &args.vm,
        LiveOptions {
            log: None,
            ft: None,
            join: None,
            role: lockstep_status::Role::Standalone,
            pacer: None,
        },
    )
}
