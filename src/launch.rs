//! Turning command-line options into what the VMM takes: the kernel, the
//! guest's command line, CPUs, the console, signals, status endpoints; and
//! the run's end into a line for the operator and an exit status.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{SigSet, Signal};

use lockstep_vmm::EMBEDDED_GUEST;
use lockstep_vmm::devices::console::Console;
use lockstep_vmm::machine::Stop;
use lockstep_vmm::vcpu::RunEnd;

use crate::cli::VmArgs;
use crate::exit_status::ExitStatus;

/// Reads `--kernel`, or returns the embedded guest.
pub fn kernel_bytes(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).with_context(|| format!("reading kernel {}", p.display())),
        None if EMBEDDED_GUEST.is_empty() => bail!(
            "this lockstep binary was built without its guest (LOCKSTEP_GUEST_ELF=none); pass --kernel"
        ),
        None => Ok(EMBEDDED_GUEST.to_vec()),
    }
}

/// The guest's command line from the options.
pub fn guest_cmdline(vm: &VmArgs) -> anyhow::Result<String> {
    let (addr, prefix) = vm.guest_ip.split_once('/').with_context(|| {
        format!(
            "--guest-ip {}: expected ADDR/PREFIX, e.g. 10.77.0.2/24",
            vm.guest_ip
        )
    })?;
    let _: std::net::Ipv4Addr = addr
        .parse()
        .with_context(|| format!("--guest-ip {}: bad IPv4 address", vm.guest_ip))?;
    match prefix.parse::<u8>() {
        Ok(p) if (1..=32).contains(&p) => {}
        _ => bail!("--guest-ip {}: prefix must be 1..32", vm.guest_ip),
    }
    if !["kv", "compute", "disk", "idle", "hostile", "app"].contains(&vm.workload.as_str()) {
        bail!(
            "--workload {}: expected kv, compute, disk, idle, hostile or app",
            vm.workload
        );
    }
    let mut line = format!("workload={} ip={}", vm.workload, vm.guest_ip);
    if let Some(gw) = vm.gateway {
        line.push_str(&format!(" gw={gw}"));
    }
    if let Some(extra) = &vm.append {
        line.push(' ');
        line.push_str(extra.trim());
    }
    Ok(line)
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        bail!("--mac {s}: expected six hex bytes separated by ':'");
    }
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).with_context(|| format!("--mac {s}: bad byte {p:?}"))?;
    }
    if mac[0] & 1 != 0 {
        bail!("--mac {s}: a multicast address cannot be a NIC's address");
    }
    Ok(mac)
}

/// The CPUs for the vCPU thread and the I/O thread.
pub fn parse_cpus(list: Option<&str>) -> anyhow::Result<(Option<usize>, Option<usize>)> {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Some(list) = list else {
        return Ok(if online >= 2 {
            (Some(0), Some(1))
        } else {
            (None, None)
        });
    };
    let cpus: Vec<usize> = list
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--cpus {list}: expected a comma-separated list such as 0,1"))?;
    if let Some(bad) = cpus.iter().find(|c| **c >= online) {
        bail!("--cpus {list}: CPU {bad} does not exist (this host has {online})");
    }
    Ok((cpus.first().copied(), cpus.get(1).or(cpus.first()).copied()))
}

/// Where the console goes.
pub fn console_for(path: Option<&Path>) -> anyhow::Result<Console> {
    let out: Box<dyn Write + Send> = match path {
        Some(p) => Box::new(
            File::create(p).with_context(|| format!("creating console file {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    Ok(Console::new(out))
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it spawns
/// afterwards; `supervise` collects them.
pub fn block_stop_signals() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    Ok(set)
}

/// Waits up to `timeout` for one of `set`'s (blocked) signals.
pub fn poll_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid sigset, `ts` a valid timespec; a null info
    // pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(sig).ok()
}

/// One line for the operator about how the run ended, and the exit status.
pub fn describe_end(end: &RunEnd) -> (String, ExitStatus) {
    match (&end.stop, &end.fault) {
        (Stop::GuestExit(s), _) => (
            format!("guest exited with status {s} after {} exits", end.exits),
            ExitStatus::Guest(*s),
        ),
        (Stop::Fault(_), Some(report)) => (report.to_string(), ExitStatus::GuestFault),
        (Stop::Fault(v), None) => (format!("guest fault, vector {v}"), ExitStatus::GuestFault),
        (Stop::TripleFault, _) => (
            "guest triple-faulted (its fault stubs could not run)".into(),
            ExitStatus::GuestFault,
        ),
        (Stop::Halted, _) => ("guest halted at ring 0".into(), ExitStatus::GuestFault),
        (Stop::EmulationFailure, _) => (
            "KVM could not emulate a ring-0 instruction (SSE at ring 0?)".into(),
            ExitStatus::GuestFault,
        ),
        (Stop::Forced, _) => (
            "VM stopped by the host before the guest finished".into(),
            ExitStatus::Forced,
        ),
    }
}

/// A random seed from the kernel's entropy pool.
pub fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        // Not fatal: the seed only varies TCP sequence numbers and ports.
        return std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(buf)
}

/// One parseable line of exit and time statistics (the bench reads it).
pub fn stats_line(s: &lockstep_vmm::machine::ExitStats, exits: u64, wall: Duration) -> String {
    let ms = |ns: u64| ns / 1_000_000;
    format!(
        "stats: exits={exits} sync={} waits={} mmio={} console={} wall_ms={} guest_ms={} vmm_ms={} wait_ms={}",
        s.sync,
        s.sync_waits,
        s.mmio,
        s.console,
        wall.as_millis(),
        ms(s.guest_ns),
        ms(s.vmm_ns.saturating_sub(s.wait_ns)),
        ms(s.wait_ns)
    )
}

/// Starts the status and metrics endpoints the options ask for; they serve
/// as long as the returned servers live. A bare PORT means
/// 127.0.0.1:PORT; an address beyond loopback needs the token file. An FT
/// side also takes the operator's actions there (`POST /ft/ACTION`,
/// docs/operator-actions.md) with `actions`.
pub fn serve_status_with(
    monitor: &crate::cli::MonitorArgs,
    counters: &std::sync::Arc<lockstep_status::StatusCounters>,
    actions: Option<std::sync::Arc<dyn lockstep_status::ActionHandler>>,
) -> anyhow::Result<Vec<lockstep_status::StatusServer>> {
    let token = match &monitor.status_token_file {
        Some(path) => Some(
            logchan::secure::read_token(path)
                .with_context(|| format!("--status-token-file {}", path.display()))?,
        ),
        None => None,
    };
    if actions.is_some() && token.is_none() && monitor.status.is_some() {
        tracing::info!("no --status-token-file: the operator's actions (lockstep ft) are refused");
    }
    let opts = lockstep_status::ServerOptions { token, actions };
    let mut servers = Vec::new();
    for addr in [&monitor.status, &monitor.metrics].into_iter().flatten() {
        let addr = if addr.parse::<u16>().is_ok() {
            format!("127.0.0.1:{addr}")
        } else {
            addr.clone()
        };
        servers.push(
            lockstep_status::StatusServer::spawn_with(&addr, counters.clone(), opts.clone())
                .with_context(|| format!("serving status on {addr}"))?,
        );
    }
    Ok(servers)
}
