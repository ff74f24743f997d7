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
/// What the backup logs the moment it goes live: after it won the arbiter
/// and waited out the primary's lease.
pub const LIVE: &str = "going live: sending";

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
    /// Both sides with --insecure instead of the pair's key file.
    pub insecure: bool,
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
            insecure: false,
        }
    }
}

impl FtOptions {
    /// The CPU-bound guest (`workload=compute`: it runs natively between
    /// sync calls, so its backup must execute as much as it does), with
    /// 20 ms heartbeats and this failure timeout: a backup capped by a
    /// cgroup is slow, not dead (its heartbeats wait up to a CFS period).
    pub fn compute(failure_timeout_ms: u64) -> FtOptions {
        FtOptions {
            failure_timeout_ms,
            heartbeat_ms: 20,
            ready: "workload=compute",
            primary_extra: ["--workload", "compute", "--append", "iters=100000000"]
                .map(String::from)
                .to_vec(),
            ..FtOptions::default()
        }
    }
}

pub struct FtPair {
    pub primary: Vmm,
    pub backup: Vmm,
    pub dir: tempfile::TempDir,
    pub net: Net,
    pub opts: FtOptions,
    /// Held until everything above is torn down (fields drop in order).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// One pair at a time in a test process: a pair is two VMs pinned across
/// this machine's two CPUs, and the faults under test are timed in tens of
/// milliseconds (the failure timeout), which two pairs starving each other
/// would blur into other faults.
static ONE_PAIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl FtPair {
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("shared/disk.img")
    }

    /// The default arbiter's directory (its own, so that a test can take
    /// it away without taking the disk).
    pub fn arbiter_dir(&self) -> PathBuf {
        self.dir.path().join("arbiter")
    }

    pub fn arbiter(&self) -> String {
        self.opts
            .arbiter
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.arbiter_dir().join("arbiter").display()))
    }

    /// Where `side`'s fail points are configured at run time.
    fn failpoints_file(&self, side: &str) -> PathBuf {
        self.dir.path().join(format!("{side}.failpoints"))
    }

    /// The pair key both sides are given (made by `launch`).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("pair.key")
    }

    pub fn ft_args(&self, name: &str) -> Vec<String> {
        let mut args = vec![
            "--arbiter".into(),
            self.arbiter(),
            "--name".into(),
            name.into(),
            "--heartbeat-ms".into(),
            self.opts.heartbeat_ms.to_string(),
            "--failure-timeout-ms".into(),
            self.opts.failure_timeout_ms.to_string(),
            // Each host's own loopback (the endpoint needs no token there).
            "--status".into(),
            format!("127.0.0.1:{STATUS_PORT}"),
        ];
        if self.opts.insecure {
            args.push("--insecure".into());
        } else {
            args.push("--key-file".into());
            args.push(self.key_file().display().to_string());
        }
        args
    }

    /// Starts a backup on B and a primary on A and waits until the backup
    /// follows the primary and the guest serves.
    ///
    /// A pair that fails over on its own right after start, before the test
    /// did anything to it, is started again (at most twice, said on
    /// stderr): with the tests' 50 ms failure timeout, a side starved of
    /// CPU by the machine's other load while it sets up its guest looks
    /// dead to its peer. That is the timeout doing its job, not the fault a
    /// test means to inject, and every test checks its promises on the pair
    /// it then gets.
    pub fn start(prefix: &str, opts: FtOptions) -> FtPair {
        const ATTEMPTS: usize = 3;
        for attempt in 1..ATTEMPTS {
            let pair = Self::launch(net_ft(prefix), opts.clone());
            if !pair.failed_over_at_start() {
                return pair;
            }
            eprintln!(
                "harness: the pair failed over on its own at start (attempt {attempt}; no fault injected yet): starting it again\nprimary:\n{}\nbackup:\n{}",
                pair.primary.log(),
                pair.backup.log()
            );
        }
        Self::launch(net_ft(prefix), opts)
    }

    /// A side claimed the arbiter, or stopped for the other's claim.
    fn broke_at_start(&self) -> bool {
        let (p, b) = (self.primary.log(), self.backup.log());
        p.contains("won the arbiter")
            || b.contains("won the arbiter")
            || p.contains("stopping")
            || b.contains("stopping")
    }

    /// Whether the pair broke before it logged and acknowledged its first
    /// entries under the guest's own start-up traffic (waits at most 10 s).
    pub fn failed_over_at_start(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.broke_at_start() {
                return true;
            }
            if self.counter("primary", "acked_seq") >= 20 || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`start`](Self::start) on namespaces made beforehand (to start
    /// something else in them first).
    pub fn launch(net: Net, opts: FtOptions) -> FtPair {
        let mut pair = Self::launch_backup(net, opts);
        pair.start_primary();
        pair
    }

    /// Only the backup, waiting for its primary ([`FtPair::start_primary`]
    /// starts it): to do something to the waiting backup first.
    pub fn launch_backup(net: Net, opts: FtOptions) -> FtPair {
        let one_at_a_time = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempdir();
        std::fs::create_dir_all(dir.path().join("shared")).expect("shared dir");
        std::fs::create_dir_all(dir.path().join("arbiter")).expect("arbiter dir");
        pair_key(dir.path());
        let mut pair = FtPair {
            primary: spawn_vmm(Command::new("true")),
            backup: spawn_vmm(Command::new("true")),
            dir,
            net,
            opts,
            _one_at_a_time: one_at_a_time,
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
        .args(pair.ft_args("backup"))
        .args(&pair.opts.backup_extra)
        .env("LOCKSTEP_FAILPOINTS_FILE", pair.failpoints_file("backup"));
        pair.backup = spawn_vmm(b);
        pair.backup
            .wait_for_line("waiting for the primary", Duration::from_secs(20));
        pair
    }

    /// The primary's command (not started).
    pub fn primary_command(&self) -> Command {
        let target = self
            .opts
            .backup_target
            .clone()
            .unwrap_or_else(|| format!("{BACKUP_LOG}:{LOG_PORT}"));
        let mut p = self.net.cmd("a", lockstep());
        p.args([
            "primary",
            "--backup",
            &target,
            "--tap",
            &self.net.tap(),
            "--cpus",
            "0,1",
        ])
        .args(["--mem", &self.opts.mem_mib.to_string(), "--disk"])
        .arg(self.disk())
        .arg("--console")
        .arg(self.dir.path().join("primary.console"))
        .args(self.ft_args("primary"))
        .args(&self.opts.primary_extra)
        .env("LOCKSTEP_FAILPOINTS_FILE", self.failpoints_file("primary"));
        p
    }

    /// Starts the primary and waits until the backup follows it and the
    /// guest serves.
    pub fn start_primary(&mut self) {
        self.primary = spawn_vmm(self.primary_command());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.console("primary").contains(self.opts.ready)
            && self.backup.log().contains("following the primary"))
        {
            if self.broke_at_start() {
                // Whoever calls start() starts the pair again; launch()
                // callers see the broken pair in their own checks.
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pair did not come up within 30 s\nprimary:\n{}\nprimary console:\n{}\nbackup:\n{}",
                self.primary.log(),
                self.console("primary"),
                self.backup.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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
        client_in(&self.net, program, args)
    }

    pub fn redis(&self, args: &[&str]) -> String {
        let mut all = vec!["-h", GUEST_IP];
        all.extend_from_slice(args);
        let out = self.client("redis-cli", &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `lockstep status --json` of one side, parsed.
    pub fn status(&self, side: &str) -> Option<serde_json::Value> {
        let ns = Self::host_of(side);
        let mut cmd = self.net.cmd(ns, lockstep());
        cmd.args(["status", "--json", &format!("127.0.0.1:{STATUS_PORT}")]);
        // A pair whose endpoints take the operator's actions has a token.
        let token = self.status_token();
        if token.exists() {
            cmd.arg("--token-file").arg(token);
        }
        let out = cmd.output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Configures fail points in a running `side` (`name=actions` lines,
    /// the `fail` crate's syntax; `name=` turns one off) and waits until it
    /// says they are set. Needs a build with the `failpoints` feature
    /// (`scripts/test` builds the tests with it).
    pub fn set_failpoints(&mut self, side: &str, spec: &str) {
        assert!(
            failpoints_built(),
            "this test sets fail point {spec:?}: cargo test --features lockstep/failpoints (scripts/test does)"
        );
        std::fs::write(self.failpoints_file(side), spec).expect("fail points file");
        let vmm = if side == "primary" {
            &mut self.primary
        } else {
            &mut self.backup
        };
        let before = vmm.log().matches("lockstep: fail point ").count();
        vmm.signal(libc::SIGUSR2);
        let want = before + spec.lines().filter(|l| !l.trim().is_empty()).count();
        wait_for(Duration::from_secs(5), "the fail points to be set", || {
            vmm.log().matches("lockstep: fail point ").count() >= want
        });
    }

    /// A status counter of `side` (0 while it does not answer).
    pub fn counter(&self, side: &str, name: &str) -> u64 {
        self.status(side)
            .and_then(|s| s[name].as_u64())
            .unwrap_or(0)
    }

    /// Waits until whoever serves holds `n` more keys than now: the
    /// clients' writes go on against it.
    pub fn wait_served(&self, n: u64) {
        let keys = || self.redis(&["dbsize"]).parse::<u64>().ok();
        let mut from = None;
        wait_for(Duration::from_secs(20), "writes to be served", || {
            match (from, keys()) {
                (None, k) => {
                    from = k;
                    false
                }
                (Some(f), Some(k)) => k >= f + n,
                (Some(_), None) => false,
            }
        });
    }

    /// Waits until the backup acknowledged `n` more log entries (the load
    /// has run for a while).
    pub fn wait_acked(&self, n: u64) {
        self.wait_acked_by("primary", n)
    }

    /// The same for the primary on `side`'s host (a backup gone live).
    pub fn wait_acked_by(&self, side: &str, n: u64) {
        let from = self.counter(side, "acked_seq");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.counter(side, "acked_seq") < from + n {
            assert!(
                Instant::now() < deadline,
                "{n} more log entries were not acknowledged within 20 s (from {from})\nprimary ({:?}):\n{}\nbackup ({:?}):\n{}",
                self.status("primary"),
                self.primary.log(),
                self.status("backup"),
                self.backup.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the logging link down (a full partition of A and B, the client
    /// LAN and storage untouched) or back up.
    pub fn logging_link(&self, up: bool) {
        run_ok(self.net.cmd("a", "ip").args([
            "link",
            "set",
            &format!("{}-ab", self.net.name),
            if up { "up" } else { "down" },
        ]));
    }

    /// Drops every packet host `from` ("a" or "b") sends on the logging
    /// link (nftables in that host's namespace): a one-way partition.
    pub fn drop_outgoing(&self, from: &str) {
        let link = format!(
            "{}-{}",
            self.net.name,
            if from == "a" { "ab" } else { "ba" }
        );
        let ns = self.net.ns(from);
        run_ok(
            self.net
                .cmd(from, "nft")
                .args(["add", "table", "inet", "fault"]),
        );
        run_ok(
            self.net
                .cmd(from, "nft")
                .args(["add chain inet fault out { type filter hook output priority 0 ; }"]),
        );
        run_ok(self.net.cmd(from, "nft").args([
            "add", "rule", "inet", "fault", "out", "oifname", &link, "drop",
        ]));
        eprintln!("{ns}: dropping everything out of {link}");
    }

    /// The host ("a" or "b") a side started on.
    pub fn host_of(side: &str) -> &'static str {
        if side == "primary" { "a" } else { "b" }
    }

    pub fn wait_backup_live(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        self.backup.wait_for_line(LIVE, timeout);
        started.elapsed()
    }
}

/// What the clients' acknowledged writes came to.
pub struct WriteCheck {
    pub acked: usize,
    pub errors: Vec<String>,
    /// The longest time between two acknowledgements.
    pub longest_gap: Duration,
    /// Acknowledged keys whoever serves now lacks.
    pub lost_live: Vec<String>,
    /// Acknowledged keys a reboot of the disk image lacks.
    pub lost_reboot: Vec<String>,
}

/// The guest's key-value address on the client LAN.
pub fn addr() -> String {
    format!("{GUEST_IP}:6379")
}

/// Writers in the client namespace that SET unique keys until stopped and
/// remember every SET the guest acknowledged. They keep their TCP
/// connections across a failover (the guest's TCP state moves with it).
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<lockstep_bench::kvclient::WriterReport>,
}

impl Writers {
    pub fn start(pair: &FtPair, n: usize) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = spawn_in_netns(pair.net.ns("c"), move || {
            lockstep_bench::kvclient::write(&addr(), n, flag)
        });
        Writers { stop, thread }
    }

    /// Stops the writers; returns the acknowledged keys and the errors.
    pub fn finish(self) -> (Vec<String>, Vec<String>) {
        let r = self.report();
        (r.acked, r.errors)
    }

    /// Stops the writers; everything they saw.
    pub fn report(self) -> lockstep_bench::kvclient::WriterReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("writers")
    }
}

impl FtPair {
    /// Reads every acknowledged key back through whoever serves now;
    /// returns the ones missing or wrong.
    pub fn lost_writes(&self, acked: &[String]) -> Vec<String> {
        self.read_back(acked).unwrap_or_else(|e| {
            panic!(
                "read back: {e:#}\nprimary:\n{}\nbackup:\n{}",
                self.primary.log(),
                self.backup.log()
            )
        })
    }

    fn read_back(&self, acked: &[String]) -> anyhow::Result<Vec<String>> {
        in_netns(&self.net.ns("c"), || {
            lockstep_bench::kvclient::check(&addr(), acked)
        })
    }

    /// Stops the writers and checks every write they saw acknowledged: read
    /// back through whoever serves now, then from a reboot of the disk
    /// image. `what` names the trial in failures; clients' errors fail it
    /// unless `errors_ok` (a fault that outlasts the clients' timeouts).
    /// Returns how many acknowledged writes were checked.
    pub fn check_writes(&mut self, writers: Writers, what: &str, errors_ok: bool) -> usize {
        let c = self.verify_writes(writers);
        assert!(
            errors_ok || c.errors.is_empty(),
            "{what}: clients saw errors: {:?}",
            &c.errors[..c.errors.len().min(5)]
        );
        assert!(c.acked > 0, "{what}: no write was acknowledged");
        assert!(
            c.lost_live.is_empty(),
            "{what}: {} of {} acknowledged writes lost, e.g. {:?}\nprimary:\n{}\nbackup:\n{}",
            c.lost_live.len(),
            c.acked,
            &c.lost_live[..c.lost_live.len().min(5)],
            self.primary.log(),
            self.backup.log()
        );
        assert!(
            c.lost_reboot.is_empty(),
            "{what}: {} of {} acknowledged writes are not on the disk image, e.g. {:?}",
            c.lost_reboot.len(),
            c.acked,
            &c.lost_reboot[..c.lost_reboot.len().min(5)]
        );
        c.acked
    }

    /// Stops the writers and reads back every write they saw acknowledged,
    /// through whoever serves and from a reboot of the disk image.
    pub fn verify_writes(&mut self, writers: Writers) -> WriteCheck {
        let report = writers.report();
        let lost_live = self.lost_writes(&report.acked);
        let lost_reboot = self.lost_after_reboot(&report.acked);
        WriteCheck {
            acked: report.acked.len(),
            errors: report.errors,
            longest_gap: report.longest_gap,
            lost_live,
            lost_reboot,
        }
    }

    /// Stops both sides, boots `lockstep run` on the shared disk image in
    /// host A, and returns the acknowledged keys that reboot does not have:
    /// what was acknowledged must be on the disk, not only in a guest's
    /// memory.
    pub fn lost_after_reboot(&mut self, acked: &[String]) -> Vec<String> {
        for side in [&mut self.primary, &mut self.backup] {
            side.signal(libc::SIGKILL);
            let _ = side.wait_exit(Duration::from_secs(10));
        }
        let mut cmd = self.net.cmd("a", lockstep());
        cmd.args(["run", "--tap", &self.net.tap(), "--mem", "128", "--disk"])
            .arg(self.disk())
            .arg("--console")
            .arg(self.dir.path().join("reboot.console"));
        let mut vmm = spawn_vmm(cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(self.dir.path().join("reboot.console"))
            .is_ok_and(|c| c.contains("kv: serving RESP"))
        {
            assert!(
                Instant::now() < deadline && vmm.try_wait().ok().flatten().is_none(),
                "the rebooted guest did not serve:\n{}",
                vmm.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let lost = self.read_back(acked).unwrap_or_else(|e| {
            panic!(
                "read back from the rebooted disk image: {e:#}\nrebooted VMM:\n{}\nits console:\n{}",
                vmm.log(),
                std::fs::read_to_string(self.dir.path().join("reboot.console")).unwrap_or_default()
            )
        });
        vmm.signal(libc::SIGKILL);
        let _ = vmm.wait_exit(Duration::from_secs(10));
        lost
    }
}

/// Whether the `lockstep` under test has fail points (tests and binary
/// are built with the same features).
fn failpoints_built() -> bool {
    cfg!(feature = "failpoints")
}
