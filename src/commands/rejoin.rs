//! `lockstep primary --spares`: re-protection by live clone. Whenever the
//! primary runs alone, a thread of its own joins the first waiting backup
//! of the list that accepts, with back-off between rounds (docs/join.md).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use lockstep_ft::failure::Liveness;
use lockstep_ft::join::primary::{JoinSetup, reprotect};
use lockstep_vmm::replay::recorder::DigestPolicy;
use lockstep_vmm::snapshot::stream::CopyOptions;
use logchan::LogConfig;

use crate::cli::PrimaryArgs;
use crate::commands::live::{JoinEnv, KEEPALIVE_EVERY, StartJoin};
use crate::commands::pair::{claimant, open_arbiter, resolve, security};

/// The join thread's start, if `--spares` names any backup.
pub fn start(
    args: &PrimaryArgs,
    live: Liveness,
    lease: Duration,
    log: LogConfig,
    policy: DigestPolicy,
    hb_port: u16,
) -> anyhow::Result<Option<Box<StartJoin>>> {
    if args.spares.is_empty() {
        return Ok(None);
    }
    let targets = args
        .spares
        .iter()
        .map(|s| resolve("--spares", s))
        .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
    // Handles of their own: the join thread begins epochs and opens
    // channels while the main thread supervises.
    let arbiter = open_arbiter(&args.ft)?;
    let who = claimant(&args.ft, "primary")?;
    let security = security(&args.ft, "primary")?;
    Ok(Some(Box::new(move |env: JoinEnv| {
        let JoinEnv {
            vm,
            mem,
            ctl,
            shared,
            spec,
            kernel,
            main_thread,
            rebind,
            current,
        } = env;
        let setup = JoinSetup {
            vm,
            mem,
            ctl,
            shared,
            identity: spec.identity(&kernel),
            boot: spec.encode(),
            security,
            arbiter,
            who,
            live,
            lease,
            log,
            policy,
            keepalive: KEEPALIVE_EVERY,
            hb_port,
            rebind: rebind.unwrap_or_default(),
            main_thread,
            copy: CopyOptions::default(),
            settling: Default::default(),
        };
        tracing::info!(
            "re-protection on: a backup joins from {} whenever this primary runs alone",
            targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::thread::Builder::new()
            .name("join".into())
            .spawn(move || reprotect(setup, targets, current))
            .context("starting the join thread")?;
        Ok(())
    })))
}
