//! `--app PATH [-- ARGS...]`: a stock Linux program as the guest
//! (`lockstep_vmm::app`). A primary or a lone VM checks it and writes it to
//! the disk; a backup checks that its copy is the primary's program.

use anyhow::bail;

use lockstep_vmm::app::{self, PreparedApp};
use lockstep_vmm::spec::GuestSpec;

use crate::cli::AppArgs;

/// Reads and checks `--app`, if given, for a guest whose command line
/// (before the app names itself in it) is `cmdline`.
pub fn prepare(args: &AppArgs, cmdline: &str) -> anyhow::Result<Option<PreparedApp>> {
    let Some(path) = &args.app else {
        if !args.app_args.is_empty() {
            bail!("arguments after `--` are for an app; name it with --app");
        }
        return Ok(None);
    };
    let rewrite = !app::traps_syscalls(cmdline);
    Ok(Some(PreparedApp::prepare(path, &args.app_args, rewrite)?))
}

/// A backup given `--app` refuses a primary that runs another program.
pub fn check_backup(args: &AppArgs, spec: &GuestSpec) -> anyhow::Result<()> {
    match &args.app {
        Some(path) => Ok(app::check_same(path, &spec.cmdline)?),
        None => Ok(()),
    }
}
