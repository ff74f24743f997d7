//! `lockstep primary --spares`: re-protection by live clone. Whenever the
//! primary runs alone, a thread of its own joins the first waiting backup
//! that accepts — of the list, or of those registered in etcd at that
//! moment — with back-off between rounds (docs/join.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use lockstep_ft::failure::Liveness;
use lockstep_ft::join::control::Protection;
use lockstep_ft::join::primary::{JoinSetup, reprotect};
use lockstep_ft::lag::LagShared;
use lockstep_vmm::replay::recorder::DigestPolicy;
use lockstep_vmm::snapshot::stream::CopyOptions;
use logchan::LogConfig;

use crate::cli::FtArgs;
use crate::commands::live::{JoinEnv, KEEPALIVE_EVERY, StartJoin};
use crate::commands::pair::{claimant, open_arbiter, security};

/// The join thread's start, for joins where `control` (the spares, and
/// the operator's actions: docs/operator-actions.md) says.
#[allow(clippy::too_many_arguments)]
pub fn start(
    control: Arc<Protection>,
    ft: &FtArgs,
    role: &str,
    live: Liveness,
    lease: Duration,
    log: LogConfig,
    policy: DigestPolicy,
    hb_port: u16,
    lag: Option<(Arc<LagShared>, Option<Duration>)>,
) -> anyhow::Result<Box<StartJoin>> {
    // Handles of their own: the join thread begins epochs and opens
    // channels while the main thread supervises.
    let arbiter = open_arbiter(ft)?;
    let who = claimant(ft, role)?;
    let security = security(ft, role)?;
    Ok(Box::new(move |env: JoinEnv| {
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
            lag,
            control: control.clone(),
        };
        match control.describe() {
            None => {
                tracing::info!("no spares: a backup joins where `lockstep ft on HOST:PORT` says")
            }
            Some(from) => tracing::info!(
                "re-protection on: a backup joins from {from} whenever this primary runs alone"
            ),
        }
        std::thread::Builder::new()
            .name("join".into())
            .spawn(move || reprotect(setup, current))
            .context("starting the join thread")?;
        Ok(())
    }))
}

/// Log buffers of `mib` MiB: the primary's default and stall rule
/// (`primary.rs`), for a backup gone live that takes a backup itself.
pub fn log_config(mib: usize, live: Liveness) -> LogConfig {
    let mut config = LogConfig {
        wake_consumer: false,
        ..LogConfig::new(mib, 1 << 20)
    };
    config.stall_timeout = config
        .stall_timeout
        .max(4 * (live.ack_timeout + live.timeout));
    config
}
