//! The stock programs the guest's Linux personality runs
//! (`docs/linux-personality.md`), as the harness and the integration tests
//! run them: built by `scripts/build-apps` (cached in target/apps), and
//! redis-server's configuration.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::vm;

/// redis-server as the tests, the bench and the issue run it: every write
/// durable before its reply, no fork-based saves, one I/O thread.
pub const REDIS_ARGS: [&str; 10] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--io-threads",
    "1",
    "--protected-mode",
    "no",
];
/// What redis-server prints once it serves.
pub const REDIS_READY: &str = "Ready to accept connections";

/// `scripts/build-apps GROUP` (`redis`, `sqlite`, `probes`): builds what is
/// missing and returns the programs' paths.
pub fn build(group: &str) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(vm::repo().join("scripts/build-apps"))
        .arg(group)
        .stderr(Stdio::inherit())
        .output()
        .context("running scripts/build-apps")?;
    if !out.status.success() {
        bail!("scripts/build-apps {group} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect())
}
