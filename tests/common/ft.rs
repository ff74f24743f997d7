//! An FT pair on one machine: hosts A and B and a client LAN as network
//! namespaces (`scripts/net ft-up`), a backup on B, a primary on A, a shared
//! disk and arbiter in a temp directory both see. Torn down on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::*;

pub const PRIMARY_LOG: &str = "10.99.0.1";
pub const BACKUP_LOG: &str = "10.99.0.2";
pub const LOG_PORT: u16 = 7000;
pub const STATUS_PORT: u16 = 7010;

/// How a pair is started.
#[derive(Clone, Debug)]
pub struct FtOptions {
    pub heartbeat_ms: u64,
    pub failure_timeout_ms: u64,
    /// Default: `file:` in the pair's directory.
    pub arbiter: Option<String>,
    pub primary_extra: Vec<String>,
    pub backup_extra: Vec<String>,
    pub mem_mib: u64,
    /// What the primary's --backup names (default: the backup itself).
    pub backup_target: Option<String>,
    /// The primary console's line that says the guest serves.
    pub ready: &'static str,
}

impl Default for FtOptions {
    fn default() -> Self {
        FtOptions {
            heartbeat_ms: 10,
            failure_timeout_ms: 50,
            arbiter: None,
            primary_extra: Vec::new(),
            backup_extra: Vec::new(),
            mem_mib: 128,
            backup_target: None,
            ready: "kv: serving RESP",
        }
    }
}

pub struct FtPair {
    pub primary: Vmm,
    pub backup: Vmm,
    pub dir: tempfile::TempDir,
    pub net: Net,
    pub opts: FtOptions,
}

impl FtPair {
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("shared/disk.img")
    }

    pub fn arbiter(&self) -> String {
        self.opts
            .arbiter
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.dir.path().join("shared/arbiter").display()))
    }

    fn ft_args(&self, name: &str, status_ip: &str) -> Vec<String> {
        vec![
            "--arbiter".into(),
            self.arbiter(),
            "--name".into(),
            name.into(),
            "--heartbeat-ms".into(),
            self.opts.heartbeat_ms.to_string(),
            "--failure-timeout-ms".into(),
            self.opts.failure_timeout_ms.to_string(),
            "--status".into(),
            format!("{status_ip}:{STATUS_PORT}"),
        ]
    }

    /// Starts a backup on B and a primary on A and waits until the backup
    /// follows the primary and the guest serves.
    pub fn start(prefix: &str, opts: FtOptions) -> FtPair {
        Self::launch(net_ft(prefix), opts)
    }

    /// [`start`](Self::start) on namespaces made beforehand (to start
    /// something else in them first).
    pub fn launch(net: Net, opts: FtOptions) -> FtPair {
        let dir = tempdir();
        std::fs::create_dir_all(dir.path().join("shared")).expect("shared dir");
        let mut pair = FtPair {
            primary: spawn_vmm(Command::new("true")),
            backup: spawn_vmm(Command::new("true")),
            dir,
            net,
            opts,
        };
        let mut b = pair.net.cmd("b", lockstep());
        b.args([
            "backup",
            "--listen",
            &format!("{BACKUP_LOG}:{LOG_PORT}"),
            "--tap",
            &pair.net.tap(),
            "--cpus",
            "1,0",
            "--disk",
        ])
        .arg(pair.disk())
        .arg("--console")
        .arg(pair.dir.path().join("backup.console"))
        .args(pair.ft_args("backup", BACKUP_LOG))
        .args(&pair.opts.backup_extra);
        pair.backup = spawn_vmm(b);
        pair.backup
            .wait_for_line("waiting for the primary", Duration::from_secs(20));
        let target = pair
            .opts
            .backup_target
            .clone()
            .unwrap_or_else(|| format!("{BACKUP_LOG}:{LOG_PORT}"));
        let mut p = pair.net.cmd("a", lockstep());
        p.args([
            "primary",
            "--backup",
            &target,
            "--tap",
            &pair.net.tap(),
            "--cpus",
            "0,1",
        ])
        .args(["--mem", &pair.opts.mem_mib.to_string(), "--disk"])
        .arg(pair.disk())
        .arg("--console")
        .arg(pair.dir.path().join("primary.console"))
        .args(pair.ft_args("primary", PRIMARY_LOG))
        .args(&pair.opts.primary_extra);
        pair.primary = spawn_vmm(p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(pair.console("primary").contains(pair.opts.ready)
            && pair.backup.log().contains("following the primary"))
        {
            assert!(
                Instant::now() < deadline,
                "the pair did not come up within 30 s\nprimary:\n{}\nprimary console:\n{}\nbackup:\n{}",
                pair.primary.log(),
                pair.console("primary"),
                pair.backup.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pair
    }

    pub fn console(&self, side: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{side}.console"))).unwrap_or_default()
    }

    pub fn wait_console(&self, side: &str, needle: &str, timeout: Duration) {
        wait_for(
            timeout,
            &format!("{side} console to show {needle:?}"),
            || self.console(side).contains(needle),
        );
    }

    /// A client program in the client namespace.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        self.net
            .cmd("c", program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    pub fn redis(&self, args: &[&str]) -> String {
        let mut all = vec!["-h", GUEST_IP];
        all.extend_from_slice(args);
        let out = self.client("redis-cli", &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `lockstep status --json` of one side, parsed.
    pub fn status(&self, side: &str) -> Option<serde_json::Value> {
        let (ns, ip) = if side == "primary" {
            ("a", PRIMARY_LOG)
        } else {
            ("b", BACKUP_LOG)
        };
        let out = self
            .net
            .cmd(ns, lockstep())
            .args(["status", "--json", &format!("{ip}:{STATUS_PORT}")])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the backup reports it went live.
    pub fn wait_backup_live(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        self.backup.wait_for_line("going live", timeout);
        started.elapsed()
    }
}
