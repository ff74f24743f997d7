//! `lockstep run`: one VM, no fault tolerance — or, given the FT options,
//! a VM that `lockstep ft on` can protect later without a restart.

use crate::cli::{DigestArgs, PrimaryArgs, RunArgs};
use crate::commands::live::{LiveOptions, run_live};
use crate::commands::primary;
use crate::exit_status::ExitStatus;

pub fn run(args: RunArgs) -> anyhow::Result<ExitStatus> {
    let RunArgs { vm, ft } = args;
    if let Some(ft) = ft {
        // The path of `primary --spares` without `--backup` (a VM started
        // alone), with no spares and re-protection turned off: the same
        // VMM, arbiter epoch and join thread, so `ft on` is an ordinary
        // join (docs/operator-actions.md). The primary's tuning keeps its
        // defaults.
        return primary::primary_as(
            PrimaryArgs {
                vm,
                backup: None,
                connect_timeout: 30,
                log_buffer_mib: 16,
                lag_target_ms: 100,
                spares: Vec::new(),
                ft,
                digest: DigestArgs {
                    digest_every: 256,
                    mem_digest_every: 0,
                },
            },
            lockstep_status::protection::Hold::Off,
        );
    }
    run_live(
        &vm,
        LiveOptions {
            log: None,
            ft: None,
            join: None,
            role: lockstep_status::Role::Standalone,
            pacer: None,
            operator: None,
        },
    )
}
