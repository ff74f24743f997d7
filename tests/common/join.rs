//! A new backup for a running pair's primary (docs/join.md): started on
//! host B as the first one was, it waits for a primary; a primary with
//! `--spares` joins it by live clone.
#![allow(dead_code)]

use std::time::Duration;

use super::ft::{BACKUP_LOG, FtOptions, FtPair, LOG_PORT};
use super::*;

impl FtOptions {
    /// The default pair whose primary re-protects from the waiting backup
    /// on host B (`--spares BACKUP_LOG:LOG_PORT`).
    pub fn spare_on_b() -> FtOptions {
        FtOptions {
            primary_extra: vec!["--spares".into(), FtPair::spare_b()],
            ..FtOptions::default()
        }
    }
}

impl FtPair {
    /// Kills the backup and waits until the primary, having won the
    /// arbiter, continues alone.
    pub fn lose_backup(&mut self) {
        self.backup.signal(libc::SIGKILL);
        self.primary
            .wait_for_line("continuing alone", Duration::from_secs(10));
    }

    /// Replaces the backup (dead, or killed here) by a new waiting one on
    /// host B, with `extra` arguments and `env` (e.g. `FAILPOINTS`).
    pub fn new_backup(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.backup.signal(libc::SIGKILL);
        self.backup = self.spawn_backup_on("b", BACKUP_LOG, "backup", extra, env);
    }

    /// A new waiting backup on `host` listening on `ip` (its console in
    /// `NAME.console`).
    pub fn spawn_backup_on(
        &self,
        host: &str,
        ip: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vmm {
        let mut b = self.net.cmd(host, lockstep());
        b.args([
            "backup",
            "--listen",
            &format!("{ip}:{LOG_PORT}"),
            "--tap",
            &self.net.tap(),
            "--cpus",
            if host == "a" { "0,1" } else { "1,0" },
            "--disk",
        ])
        .arg(self.disk())
        .arg("--console")
        .arg(self.dir.path().join(format!("{name}.console")))
        .args(self.ft_args(name))
        .args(extra);
        for (k, v) in env {
            b.env(k, v);
        }
        let mut vmm = spawn_vmm(b);
        vmm.wait_for_line("waiting for the primary", Duration::from_secs(20));
        vmm
    }

    /// A VM that starts alone (`primary` without `--backup`, only
    /// `--spares` naming the waiting backup on B): the pair's backup is
    /// that spare, which joins the running VM by live clone.
    pub fn start_alone(prefix: &str, opts: FtOptions) -> FtPair {
        let mut pair = FtPair::launch_backup(net_ft(prefix), opts);
        let mut p = pair.net.cmd("a", lockstep());
        p.args([
            "primary",
            "--spares",
            &format!("{BACKUP_LOG}:{LOG_PORT}"),
            "--tap",
            &pair.net.tap(),
            "--cpus",
            "0,1",
        ])
        .args(["--mem", &pair.opts.mem_mib.to_string(), "--disk"])
        .arg(pair.disk())
        .arg("--console")
        .arg(pair.dir.path().join("primary.console"))
        .args(pair.ft_args("primary"));
        pair.primary = spawn_vmm(p);
        pair.wait_console("primary", pair.opts.ready, Duration::from_secs(30));
        pair
    }

    /// Waits until the primary says it is protected again for the `n`-th
    /// time and the backup follows it.
    pub fn wait_protected(&mut self, n: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !(self.primary.log().matches("protected again").count() >= n
            && self.backup.log().contains("following the primary"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no join within {timeout:?}\nprimary:\n{}\nbackup:\n{}",
                self.primary.log(),
                self.backup.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
