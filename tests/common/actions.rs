//! The operator's actions on a pair (docs/operator-actions.md): a status
//! bearer token for the endpoints that take them, `lockstep ft ...` run in
//! a host's namespace, a `lockstep run` VM with the FT options, and the
//! unprotected window the actions print.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use super::ft::{BACKUP_LOG, FtOptions, FtPair, LOG_PORT, STATUS_PORT};
use super::*;

impl FtPair {
    /// The status bearer token of this pair's endpoints (both hosts).
    pub fn status_token(&self) -> PathBuf {
        self.dir.path().join("status.token")
    }

    /// Makes the token (once).
    pub fn make_status_token(&self) -> PathBuf {
        let path = self.status_token();
        if !path.exists() {
            logchan::secure::write_new_token(&path).expect("status token");
        }
        path
    }

    /// `lockstep ft ARGS --status 127.0.0.1:7010 --token-file TOKEN` in
    /// `host`'s namespace (not run).
    pub fn ft_command(&self, host: &str, args: &[&str], token: &std::path::Path) -> Command {
        let mut cmd = self.net.cmd(host, lockstep());
        cmd.arg("ft")
            .args(args)
            .args(["--status", &format!("127.0.0.1:{STATUS_PORT}")])
            .arg("--token-file")
            .arg(token);
        cmd
    }

    /// Runs `lockstep ft ARGS` with the pair's token in `host`.
    pub fn ft(&self, host: &str, args: &[&str]) -> Output {
        let token = self.status_token();
        self.ft_command(host, args, &token)
            .output()
            .expect("lockstep ft")
    }

    /// A waiting backup on B, and on A a `lockstep run` VM with the FT
    /// options (and a status token): it serves alone, unprotected ("turned
    /// off"), until `lockstep ft on`.
    pub fn start_run(prefix: &str, opts: FtOptions) -> FtPair {
        let mut pair = FtPair::launch_backup(net_ft(prefix), opts);
        let token = pair.make_status_token();
        let mut p = pair.net.cmd("a", lockstep());
        p.args(["run", "--tap", &pair.net.tap(), "--cpus", "0,1"])
            .args(["--mem", &pair.opts.mem_mib.to_string(), "--disk"])
            .arg(pair.disk())
            .arg("--console")
            .arg(pair.dir.path().join("primary.console"))
            .args(pair.ft_args("primary"))
            .arg("--status-token-file")
            .arg(token);
        pair.primary = spawn_vmm(p);
        pair.wait_console("primary", pair.opts.ready, Duration::from_secs(30));
        pair
    }

    /// [`FtPair::start`] (started again if it fails over on its own at
    /// start) with a status token the primary's endpoint requires, so it
    /// takes the operator's actions; `primary_extra` comes after it.
    pub fn start_with_token(prefix: &str, opts: FtOptions) -> FtPair {
        let mut attempt = 1;
        loop {
            let mut pair = FtPair::launch_backup(net_ft(prefix), opts.clone());
            let token = pair.make_status_token().display().to_string();
            pair.opts.primary_extra = ["--status-token-file".to_string(), token]
                .into_iter()
                .chain(opts.primary_extra.iter().cloned())
                .collect();
            pair.start_primary();
            if attempt == 3 || !pair.failed_over_at_start() {
                return pair;
            }
            eprintln!(
                "harness: the pair failed over on its own at start (attempt {attempt}): starting it again"
            );
            attempt += 1;
        }
    }

    /// Where the spare on B waits.
    pub fn spare_b() -> String {
        format!("{BACKUP_LOG}:{LOG_PORT}")
    }
}

/// The text of a command's standard output and error.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The window an action printed (`unprotected for N ms`), in ms.
pub fn unprotected_ms(text: &str) -> Option<f64> {
    let at = text.rfind("unprotected for ")? + "unprotected for ".len();
    let rest = text[at..].trim_start_matches("at least ");
    let (n, unit) = rest.split_once(' ')?;
    unit.starts_with("ms").then(|| n.parse().ok()).flatten()
}
