//! The one place the harness starts `lockstep backup` and `lockstep
//! primary` (hosts B and A of `scripts/net ft-up`): every option both sides
//! need — arbiter, names, heartbeats, the pair key (or `--insecure`) —
//! is written here once.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::netns::Net;
use crate::vm::{self, Vmm};

/// The primary's end of the logging link, and its status endpoint.
pub const PRIMARY_IP: &str = "10.99.0.1";
/// The backup's end of the logging link: it listens here.
pub const BACKUP_IP: &str = "10.99.0.2";
pub const LOG_PORT: u16 = 7000;
pub const STATUS_PORT: u16 = 7010;

/// What a VMM that runs a guest logs once it has booted it (the disk line
/// of its announcement): its options, `--cpus` among them, are applied.
pub const STARTED: &str = "O_DSYNC";

/// Which emulated host a process runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    A,
    B,
}

/// How to start a pair. `dir` is the shared storage: the disk image, the
/// arbiter file and both consoles live there.
pub struct PairConfig<'a> {
    pub net: &'a Net,
    pub dir: &'a Path,
    pub heartbeat_ms: u64,
    pub failure_timeout_ms: u64,
    /// The primary's `--lease-ms` (default: the failure timeout).
    pub lease_ms: Option<u64>,
    /// `--cpus` of each side (vCPU thread, I/O thread).
    pub primary_cpus: String,
    pub backup_cpus: String,
    /// More options of the primary's VM (`--workload`, `--append`, …).
    pub primary_extra: Vec<String>,
    /// More options of the backup (`--mem` to match the primary's, …).
    pub backup_extra: Vec<String>,
    /// Wait until the primary's console shows this (a service is up).
    pub ready: Option<&'a str>,
    /// Told each side's pid once it has started (CPU placement): after its
    /// own checks of `--cpus`, which a confined process would fail.
    pub adopt: &'a dyn Fn(Host, u32) -> anyhow::Result<()>,
    /// Both sides with `--insecure` (the plaintext baseline of a
    /// benchmark) instead of the pair key in `dir`.
    pub insecure: bool,
}

impl<'a> PairConfig<'a> {
    /// The defaults of `lockstep-bench ft`: the kv guest, 100 ms
    /// heartbeats, a 1 s failure timeout, the VMMs' own pinning.
    pub fn new(net: &'a Net, dir: &'a Path) -> PairConfig<'a> {
        PairConfig {
            net,
            dir,
            heartbeat_ms: 100,
            failure_timeout_ms: 1000,
            lease_ms: None,
            primary_cpus: "0,1".into(),
            backup_cpus: "1,0".into(),
            primary_extra: Vec::new(),
            backup_extra: Vec::new(),
            ready: Some("kv: serving"),
            adopt: &|_, _| Ok(()),
            insecure: false,
        }
    }
}

/// A running pair; both are killed on drop.
pub struct Pair {
    pub primary: Vmm,
    pub backup: Vmm,
}

/// The options both sides of the pair take.
fn ft_args(cfg: &PairConfig<'_>, name: &str) -> Vec<String> {
    let mut args = vec![
        "--arbiter".into(),
        format!("file:{}", cfg.dir.join("arbiter").display()),
        "--name".into(),
        name.into(),
        "--heartbeat-ms".into(),
        cfg.heartbeat_ms.to_string(),
        "--failure-timeout-ms".into(),
        cfg.failure_timeout_ms.to_string(),
    ];
    if let Some(ms) = cfg.lease_ms {
        args.extend(["--lease-ms".into(), ms.to_string()]);
    }
    if cfg.insecure {
        args.push("--insecure".into());
    } else {
        args.push("--key-file".into());
        args.push(key_file(cfg.dir).display().to_string());
    }
    args
}

/// The pair key both sides read (made once per directory).
fn key_file(dir: &Path) -> std::path::PathBuf {
    dir.join("pair.key")
}

/// `status` address of a side: its host's own loopback (the endpoint
/// needs no token there; query it from inside that host's namespace).
pub fn status_addr(_host: Host) -> String {
    format!("127.0.0.1:{STATUS_PORT}")
}

/// Starts a backup on `host` (listening on that host's end of the logging
/// link) named `name`, and waits until it waits for a primary: the first
/// backup of a pair, or a spare a primary with `--spares` joins.
pub fn spawn_backup(cfg: &PairConfig<'_>, host: Host, name: &str) -> anyhow::Result<Vmm> {
    let bin = vm::lockstep_bin().display().to_string();
    let (ns, ip, cpus) = match host {
        Host::A => ("a", PRIMARY_IP, &cfg.primary_cpus),
        Host::B => ("b", BACKUP_IP, &cfg.backup_cpus),
    };
    let mut b = cfg.net.cmd(ns, &bin);
    b.args([
        "backup",
        "--listen",
        &format!("{ip}:{LOG_PORT}"),
        "--tap",
        &cfg.net.tap(),
    ])
    .args(["--cpus", cpus, "--status", &status_addr(host)])
    .arg("--disk")
    .arg(cfg.dir.join("disk.img"))
    .arg("--console")
    .arg(cfg.dir.join(format!("{name}.console")))
    .args(ft_args(cfg, name))
    .args(&cfg.backup_extra);
    let mut backup = Vmm::spawn(b)?;
    backup.wait_for("waiting for the primary", Duration::from_secs(20))?;
    Ok(backup)
}

/// Starts a backup on B, then a primary on A; returns when the backup
/// follows the primary (and the primary's guest is `ready`).
pub fn start(cfg: &PairConfig<'_>) -> anyhow::Result<Pair> {
    let bin = vm::lockstep_bin().display().to_string();
    if !cfg.insecure && !key_file(cfg.dir).exists() {
        logchan::secure::PairKey::write_new(&key_file(cfg.dir))?;
    }
    let listen = format!("{BACKUP_IP}:{LOG_PORT}");
    let mut backup = spawn_backup(cfg, Host::B, "backup")?;
    (cfg.adopt)(Host::B, backup.pid())?;
    let mut p = cfg.net.cmd("a", &bin);
    p.args(["primary", "--backup", &listen, "--tap", &cfg.net.tap()])
        .args([
            "--cpus",
            &cfg.primary_cpus,
            "--status",
            &status_addr(Host::A),
        ])
        .arg("--disk")
        .arg(cfg.dir.join("disk.img"))
        .arg("--console")
        .arg(cfg.dir.join("primary.console"))
        .args(ft_args(cfg, "primary"))
        .args(&cfg.primary_extra);
    let mut primary = Vmm::spawn(p)?;
    primary.wait_for(STARTED, Duration::from_secs(30))?;
    (cfg.adopt)(Host::A, primary.pid())?;
    backup.wait_for("following the primary", Duration::from_secs(30))?;
    if let Some(needle) = cfg.ready {
        let console = cfg.dir.join("primary.console");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains(needle)
        {
            if Instant::now() > deadline {
                bail!("the primary's guest did not come up:\n{}", primary.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(Pair { primary, backup })
}

/// `lockstep status --json` of one side, if it answers.
pub fn status(net: &Net, host: Host) -> Option<serde_json::Value> {
    let ns = match host {
        Host::A => "a",
        Host::B => "b",
    };
    let out = net
        .cmd(ns, &vm::lockstep_bin().display().to_string())
        .args(["status", "--json", &status_addr(host)])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Bytes the primary has logged so far (0 if it does not answer).
pub fn log_bytes(net: &Net) -> u64 {
    status(net, Host::A)
        .and_then(|v| v["log_bytes"].as_u64())
        .unwrap_or(0)
}
