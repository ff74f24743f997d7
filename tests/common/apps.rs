//! Stock programs run through the guest's Linux personality: built once by
//! `scripts/build-apps` (cached in target/apps), booted with `--app`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::*;

#[allow(unused_imports)]
pub use lockstep_bench::apps::{REDIS_ARGS, REDIS_READY};

/// The programs `scripts/build-apps GROUP` builds (`redis`, `sqlite`,
/// `probes`), built if missing; their paths.
pub fn build(group: &str) -> Vec<PathBuf> {
    lockstep_bench::apps::build(group).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `redis-benchmark --csv` rows: (test, requests per second).
pub fn parse_csv(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
            (f.len() >= 2).then(|| (f[0].to_string(), f[1].parse().unwrap_or(0.0)))
        })
        .collect()
}

/// A `name=N` field of the personality's closing `linux: exit status`
/// line in `console`.
pub fn linux_field(console: &str, name: &str) -> u64 {
    console
        .lines()
        .find(|l| l.starts_with("linux: exit status"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in the closing line:\n{console}"))
}

pub fn redis_server() -> PathBuf {
    build("redis").remove(0)
}

/// A VM running an app, reachable at 10.77.0.2 from `NAME-c`; its console
/// is in the VMM's log. Torn down on drop.
pub struct AppVm {
    pub vmm: Vmm,
    pub net: Net,
    pub dir: tempfile::TempDir,
}

impl AppVm {
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// Boots `app ARGS` on a fresh 128 MiB disk and waits for `ready`.
    pub fn start(prefix: &str, app: &Path, args: &[&str], ready: &str) -> AppVm {
        let mut vm = AppVm {
            vmm: spawn_vmm(Command::new("true")),
            net: net_single(prefix),
            dir: tempdir(),
        };
        vm.boot(&["--app", &app.display().to_string()], args, ready);
        vm
    }

    /// Starts the VMM on the same disk with `vmm_args` (e.g. `--app P`
    /// or `--workload app`) and waits for `ready` in the console.
    pub fn boot(&mut self, vmm_args: &[&str], args: &[&str], ready: &str) {
        let mut cmd = self.net.cmd("h", lockstep());
        cmd.args([
            "run",
            "--tap",
            &self.net.tap(),
            "--disk-size",
            "128",
            "--disk",
        ])
        .arg(self.disk())
        .args(vmm_args);
        if !args.is_empty() {
            cmd.arg("--").args(args);
        }
        self.vmm = spawn_vmm(cmd);
        self.vmm.wait_for_line(ready, Duration::from_secs(60));
    }

    /// Runs a client program in the client namespace; returns its output.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        client_in(&self.net, program, args)
    }

    /// `redis-cli -h 10.77.0.2 ARGS`, trimmed stdout.
    pub fn redis(&self, args: &[&str]) -> String {
        redis_in(&self.net, args)
    }

    /// SIGTERM; the guest syncs its files and exits 0.
    pub fn stop(&mut self) -> String {
        self.vmm.signal(libc::SIGTERM);
        let status = self.vmm.exit_status(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "clean stop:\n{}", self.vmm.log());
        self.vmm.log()
    }
}
