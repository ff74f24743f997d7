//! Running a VM to its end, whatever serves its sync calls: the vCPU
//! thread, the main thread's supervision (signals, an FT side's arbiter
//! verdicts), then draining the I/O thread so every submitted write reaches
//! the disk.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use kvm_ioctls::{VcpuFd, VmFd};
use nix::sys::signal::SigSet;
use vm_memory::GuestMemoryMmap;

use lockstep_ft::supervisor::{StopReason, Supervisor};
use lockstep_vmm::dataplane::io_thread::{IoChannels, IoThreadError, ToIo};
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::devices::console::Console;
use lockstep_vmm::kvm::vm::Vm;
use lockstep_vmm::machine::{ExitStats, Machine, RunEndKind, Stop, SyncIo};
use lockstep_vmm::vcpu::{self, KickCheck, RunEnd, RunError};

use crate::launch;

/// How long the I/O thread gets to finish submitted writes at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What serves a VM's sync calls and owns its end of the I/O thread.
pub trait Served: SyncIo + Send + 'static {
    fn channels(&mut self) -> Option<&mut IoChannels>;
}

/// The vCPU and memory of a built VM.
pub struct VmParts {
    pub vcpu: VcpuFd,
    pub mem: GuestMemoryMmap,
    pub cpu: Option<usize>,
    /// The exit index the run continues from: 0 from boot, the join point
    /// for a backup that joined by live clone (docs/join.md).
    pub exit_index: u64,
}

impl VmParts {
    /// Takes the vCPU and memory of `vm`, to run on `cpu`; the VM's own fd
    /// is returned to the caller, who keeps it open until the run is over.
    pub fn split(vm: Vm, cpu: Option<usize>) -> (VmFd, VmParts) {
        let Vm { fd, vcpu, mem, .. } = vm;
        (
            fd,
            VmParts {
                vcpu,
                mem,
                cpu,
                exit_index: 0,
            },
        )
    }
}

/// How a run ended.
pub struct Driven<S: SyncIo> {
    /// The run's end, or what ended it early; a sync server's own reasons
    /// (a replay's end of log, a divergence) are typed in it.
    pub end: Result<RunEnd, RunError<S::Error>>,
    pub stats: ExitStats,
    pub io: S,
    /// The supervisor stopped the VM for this reason.
    pub verdict: Option<StopReason>,
    pub elapsed: Duration,
    /// Guest-caused exits, counted even when the run ended in an error.
    pub exits: u64,
    pub console_hash: u64,
}

/// The run's end as the log records it.
fn end_kind(stop: &Stop) -> RunEndKind {
    match stop {
        Stop::GuestExit(s) => RunEndKind::GuestExit(*s),
        Stop::Forced => RunEndKind::HostStop,
        _ => RunEndKind::Error,
    }
}

/// Runs the VM until the guest stops, the host stops it, or the supervisor
/// rules it must stop.
#[allow(clippy::too_many_arguments)]
pub fn drive<S: Served>(
    vm: VmParts,
    console: Console,
    io: S,
    shared: Arc<VmShared>,
    signals: &SigSet,
    stop_timeout: Duration,
    mut supervisor: Option<&mut Supervisor>,
) -> anyhow::Result<Driven<S>> {
    let started = Instant::now();
    let vcpu_shared = shared.clone();
    let VmParts {
        mut vcpu,
        mem,
        cpu,
        exit_index,
    } = vm;
    let handle = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            lockstep_vmm::cpu::pin_current_thread(cpu);
            let _ = vcpu_shared.vcpu_thread.set(std::thread::current());
            let mut machine = Machine::new(mem, console, io);
            machine.exit_index = exit_index;
            let end =
                vcpu::run(&mut vcpu, &mut machine, &mut ForceCheck(vcpu_shared)).and_then(|end| {
                    machine.finish(&end_kind(&end.stop), &vcpu)?;
                    Ok(end)
                });
            let console_hash = machine.console.hash;
            (
                end,
                machine.stats,
                machine.exit_index,
                console_hash,
                machine.io,
            )
        })
        .context("spawning the vCPU thread")?;
    let pthread = handle.as_pthread_t();
    let verdict = supervise(
        &shared,
        signals,
        stop_timeout,
        pthread,
        || handle.is_finished(),
        || supervisor.as_deref_mut().and_then(|s| s.poll(&shared)),
    );
    let (end, stats, exits, console_hash, io) = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the vCPU thread panicked"))?;
    Ok(Driven {
        end,
        stats,
        io,
        verdict,
        elapsed: started.elapsed(),
        exits,
        console_hash,
    })
}

/// Tells the I/O thread to finish (every submitted write, the log's last
/// entries) and waits for it, bounded.
pub fn drain<S: Served>(io: &mut S, io_thread: JoinHandle<Result<(), IoThreadError>>) {
    if let Some(ch) = io.channels() {
        ch.send(ToIo::Drain);
        ch.waker.wake();
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !io_thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !io_thread.is_finished() {
        tracing::error!(
            "disk writes did not complete within {DRAIN_TIMEOUT:?}; exiting without them"
        );
        return;
    }
    match io_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("I/O thread: {e}"),
        Err(_) => tracing::error!("the I/O thread panicked"),
    }
}

/// Stops the vCPU loop when the main thread forced a stop.
struct ForceCheck(Arc<VmShared>);

impl KickCheck for ForceCheck {
    fn after_kick(&mut self) -> Option<Stop> {
        self.0.forced().then_some(Stop::Forced)
    }
}

/// Waits until `done()` while turning SIGINT/SIGTERM into a clean stop: the
/// first asks the guest to stop (EV_STOP), a second one or the timeout
/// stops the vCPU hard. Also asks `tick` every few milliseconds whether the
/// VM must be stopped now (an FT side that lost the arbiter); returns the
/// reason `tick` gave.
fn supervise(
    shared: &VmShared,
    signals: &SigSet,
    stop_timeout: Duration,
    vcpu_thread: libc::pthread_t,
    mut done: impl FnMut() -> bool,
    mut tick: impl FnMut() -> Option<StopReason>,
) -> Option<StopReason> {
    let mut stop_asked: Option<Instant> = None;
    let mut verdict = None;
    while !done() {
        if verdict.is_none()
            && let Some(reason) = tick()
        {
            tracing::error!("{reason}");
            force(shared, vcpu_thread);
            verdict = Some(reason);
        }
        // Short: the I/O thread's failure verdicts are acted on within a
        // few milliseconds (the failover budget).
        if let Some(sig) = launch::poll_signal(signals, Duration::from_millis(2)) {
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
    vcpu::kick(vcpu_thread);
}
