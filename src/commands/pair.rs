//! What both sides of a pair take from the command line: a name and a
//! claim token, the arbiter, heartbeat timing and timeouts, addresses.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

use lockstep_ft::arbiter::{self, Arbiter, Claimant};
use lockstep_ft::failure::Liveness;
use logchan::secure::{PairKey, Security};

use crate::cli::FtArgs;

/// The claimant this side is in the arbiter: its name (given, or host name,
/// role and pid) and a fresh random token.
pub fn claimant(ft: &FtArgs, role: &str) -> anyhow::Result<Claimant> {
    let name = ft.name.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        format!("{host}-{role}-{}", std::process::id())
    });
    Claimant::new(&name).with_context(|| format!("--name {name}"))
}

/// The arbiter `--arbiter` names.
pub fn open_arbiter(ft: &FtArgs) -> anyhow::Result<Box<dyn Arbiter>> {
    arbiter::parse(&ft.arbiter).with_context(|| format!("arbiter {}", ft.arbiter))
}

/// The first address `addr` (`HOST:PORT`, the value of `flag`) resolves to.
pub fn resolve(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("{flag} {addr}"))?
        .next()
        .with_context(|| format!("{flag} {addr}: no address"))
}

/// Heartbeat timing and the timeouts, checked against each other.
pub fn liveness(ft: &FtArgs) -> anyhow::Result<Liveness> {
    if ft.heartbeat_ms == 0 || ft.failure_timeout_ms <= ft.heartbeat_ms {
        bail!(
            "--failure-timeout-ms ({}) must be larger than --heartbeat-ms ({}), which must be positive",
            ft.failure_timeout_ms,
            ft.heartbeat_ms
        );
    }
    let ack_timeout_ms = ft.ack_timeout_ms.unwrap_or(ft.failure_timeout_ms);
    if ack_timeout_ms <= ft.heartbeat_ms {
        bail!(
            "--ack-timeout-ms ({ack_timeout_ms}) must be larger than --heartbeat-ms ({})",
            ft.heartbeat_ms
        );
    }
    Ok(Liveness {
        period: Duration::from_millis(ft.heartbeat_ms),
        timeout: Duration::from_millis(ft.failure_timeout_ms),
        ack_timeout: Duration::from_millis(ack_timeout_ms),
    })
}

/// The primary's output lease: `--lease-ms`, by default the failure
/// timeout (then a failover waits for nothing: the backup declares its
/// primary dead no sooner than a timeout after its last ack). It must
/// outlast a few idle keep-alives, or outputs would stall between acks.
pub fn lease(ft: &FtArgs, keepalive: Duration) -> anyhow::Result<u32> {
    let ms = ft.lease_ms.unwrap_or(ft.failure_timeout_ms);
    let min = 2 * keepalive.as_millis();
    if u128::from(ms) < min {
        bail!("--lease-ms ({ms}) must be at least {min} (twice the keep-alive period)");
    }
    u32::try_from(ms).context("--lease-ms is too large")
}

/// What protects the logging channel: the pair key `--key-file` names, or
/// nothing with `--insecure` (said loudly, at every start).
pub fn security(ft: &FtArgs, role: &str) -> anyhow::Result<Security> {
    if ft.insecure {
        for line in [
            "--insecure: the logging channel and heartbeats are NOT authenticated and NOT encrypted.",
            "  Anyone who can reach this pair's ports can act as its primary (choose the guest, its MAC and address, its epoch),",
            "  pose as its backup (every output is then released with no backup behind it), read every byte clients send,",
            "  and forge heartbeats that stop a failover. Use it only for benchmarks on a link nobody else can reach.",
        ] {
            tracing::warn!("{line}");
        }
        return Ok(Security::Insecure);
    }
    let key = PairKey::read(&ft.key_file).with_context(|| {
        format!(
            "the {role} needs the pair key (--key-file; `lockstep keygen PATH` makes one), or --insecure"
        )
    })?;
    let security = Security::Key(key);
    tracing::info!("logging channel: {}", security.describe());
    Ok(security)
}
