//! Test hosts as network namespaces, made and removed by `scripts/net`.

use std::process::Command;

use anyhow::{Context, bail};

use crate::vm::repo;

pub struct Net {
    pub name: String,
}

impl Net {
    pub fn single(name: &str) -> anyhow::Result<Net> {
        Self::up(name, "up")
    }

    /// Two VM hosts (`NAME-a`, `NAME-b`) joined by a logging link, and a
    /// client LAN (`NAME-c`): `scripts/net ft-up`.
    pub fn ft(name: &str) -> anyhow::Result<Net> {
        Self::up(name, "ft-up")
    }

    fn up(name: &str, how: &str) -> anyhow::Result<Net> {
        let status = Command::new(repo().join("scripts/net"))
            .args([how, name])
            .status()
            .context("running scripts/net")?;
        if !status.success() {
            bail!("scripts/net {how} {name} failed");
        }
        Ok(Net {
            name: name.to_string(),
        })
    }

    pub fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.name)
    }

    pub fn tap(&self) -> String {
        format!("{}-t", self.name)
    }

    /// `program` inside namespace NAME-which.
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
