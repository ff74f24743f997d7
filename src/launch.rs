//! Turning command-line options into a running VM: kernel, memory, threads,
//! signals, and a clean stop.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{SigSet, Signal};

use crate::cli::VmArgs;
use crate::dataplane::shared::VmShared;
use crate::devices::console::Console;
use crate::machine::Stop;
use crate::vmm::runner::{self, KickCheck, RunEnd};

/// The guest built from this repository (empty if the build embedded none).
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));

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
    if !["kv", "compute", "disk", "idle", "app"].contains(&vm.workload.as_str()) {
        bail!(
            "--workload {}: expected kv, compute, disk, idle or app",
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

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!("cannot pin thread to CPU {cpu}: {e}");
    }
}

/// Keeps the calling thread, and every thread it spawns from now on, off
/// the vCPU's CPU: log writers, senders and the like must not preempt the
/// vCPU (the vCPU thread pins itself afterwards).
pub fn avoid_cpu(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = nix::sched::CpuSet::new();
    for c in (0..online).filter(|c| *c != cpu) {
        let _ = set.set(c);
    }
    if online > 1
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!("cannot keep helper threads off CPU {cpu}: {e}");
    }
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

/// Waits until `done()` while turning SIGINT/SIGTERM into a clean stop: the
/// first asks the guest to stop (EV_STOP), a second one or the timeout
/// stops the vCPU hard. Also asks `tick` every few milliseconds whether the
/// VM must be stopped now (an FT side that lost the arbiter); returns the
/// exit status and reason `tick` gave.
pub fn supervise(
    shared: &VmShared,
    signals: &SigSet,
    stop_timeout: Duration,
    vcpu_thread: libc::pthread_t,
    mut done: impl FnMut() -> bool,
    mut tick: impl FnMut() -> Option<crate::ft::supervisor::Verdict>,
) -> Option<(u8, String)> {
    let mut stop_asked: Option<Instant> = None;
    let mut verdict = None;
    while !done() {
        if verdict.is_none()
            && let Some(crate::ft::supervisor::Verdict::Stop { code, why }) = tick()
        {
            tracing::error!("{why}");
            force(shared, vcpu_thread);
            verdict = Some((code, why));
        }
        // Short: the I/O thread's failure verdicts are acted on within a
        // few milliseconds (the failover budget).
        if let Some(sig) = poll_signal(signals, Duration::from_millis(2)) {
            if stop_asked.is_some() {
                tracing::warn!("{sig:?} again: stopping the VM now");
                force(shared, vcpu_thread);
            } else {
                tracing::info!("{sig:?}: asking the guest to stop (again to force)");
                stop_asked = Some(Instant::now());
                shared.request_stop();
            }
        }
        if let Some(t) = stop_asked
            && t.elapsed() > stop_timeout
            && !shared.forced()
        {
            tracing::warn!("the guest did not stop within {stop_timeout:?}: stopping it");
            force(shared, vcpu_thread);
        }
    }
    verdict
}

fn force(shared: &VmShared, vcpu_thread: libc::pthread_t) {
    shared.force();
    runner::kick(vcpu_thread);
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

/// Stops the loop when the main thread forced a stop.
pub struct ForceCheck(pub Arc<VmShared>);

impl KickCheck for ForceCheck {
    fn after_kick(&mut self) -> Option<Stop> {
        self.0.forced().then_some(Stop::Forced)
    }
}

/// One line for the operator about how the run ended, and the exit code.
pub fn describe_end(end: &RunEnd) -> (String, u8) {
    match (&end.stop, &end.fault) {
        (Stop::GuestExit(0), _) => (
            format!("guest exited with status 0 after {} exits", end.exits),
            0,
        ),
        (Stop::GuestExit(s), _) => (
            format!("guest exited with status {s} after {} exits", end.exits),
            (*s).clamp(1, 255) as u8,
        ),
        (Stop::Fault(_), Some(report)) => (report.to_string(), 3),
        (Stop::Fault(v), None) => (format!("guest fault, vector {v}"), 3),
        (Stop::TripleFault, _) => (
            "guest triple-faulted (its fault stubs could not run)".into(),
            3,
        ),
        (Stop::Halted, _) => ("guest halted at ring 0".into(), 3),
        (Stop::EmulationFailure, _) => (
            "KVM could not emulate a ring-0 instruction (SSE at ring 0?)".into(),
            3,
        ),
        (Stop::Forced, _) => ("VM stopped by the host before the guest finished".into(), 4),
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
pub fn stats_line(s: &crate::machine::ExitStats, exits: u64, wall: Duration) -> String {
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
/// as long as the returned servers live.
pub fn serve_status(
    monitor: &crate::cli::MonitorArgs,
    counters: &std::sync::Arc<crate::status::StatusCounters>,
) -> anyhow::Result<Vec<crate::status::StatusServer>> {
    let mut servers = Vec::new();
    for addr in [&monitor.status, &monitor.metrics].into_iter().flatten() {
        servers.push(
            crate::status::StatusServer::spawn(addr, counters.clone())
                .with_context(|| format!("serving status on {addr}"))?,
        );
    }
    Ok(servers)
}
