//! `lockstep run`: one VM, no fault tolerance.

use crate::cli::RunArgs;
use crate::commands::live::{LiveOptions, run_live};

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    run_live(
        &args.vm,
        LiveOptions {
            log: None,
            ft: None,
            role: crate::status::Role::Standalone,
        },
    )
}
