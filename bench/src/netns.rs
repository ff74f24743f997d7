//! Test hosts as network namespaces, made and removed by `scripts/net`
//! (for the harness and the integration tests).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::channel::Side;
use crate::vm::repo;

/// The guest's address on the client LAN of `scripts/net`.
pub const GUEST_IP: &str = "10.77.0.2";

/// Namespaces made by `scripts/net NAME`, removed on drop (also when
/// making them failed halfway).
pub struct Net {
    pub name: String,
}

impl Net {
    /// One VM host (`NAME-h`, tap `NAME-t`) and a client (`NAME-c`,
    /// 10.77.0.1): `scripts/net up`.
    pub fn single(name: &str) -> anyhow::Result<Net> {
        Self::up(name, "up")
    }

    /// Two VM hosts (`NAME-a`, `NAME-b`) joined by a logging link, and a
    /// client LAN (`NAME-c`): `scripts/net ft-up`.
    pub fn ft(name: &str) -> anyhow::Result<Net> {
        Self::up(name, "ft-up")
    }

    fn up(name: &str, how: &str) -> anyhow::Result<Net> {
        // Made first, so that whatever a failed `up` left behind is removed
        // when it drops.
        let net = Net {
            name: name.to_string(),
        };
        let status = Command::new(repo().join("scripts/net"))
            .args([how, name])
            .status()
            .context("running scripts/net")?;
        if !status.success() {
            bail!("scripts/net {how} {name} failed");
        }
        Ok(net)
    }

    pub fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.name)
    }

    /// The file that names namespace NAME-which (for `setns`).
    pub fn path(&self, which: &str) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(which))
    }

    /// Namespace NAME-which as one end of a link: threads of that side
    /// join it first.
    pub fn side(&self, which: &str) -> Side {
        Side::Netns(self.path(which))
    }

    pub fn tap(&self) -> String {
        format!("{}-t", self.name)
    }

    /// `program` run inside namespace NAME-which.
    pub fn cmd(&self, which: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(which), program]);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/net"))
            .args(["down", &self.name])
            .status();
    }
}
