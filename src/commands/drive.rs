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

use crate::dataplane::io_thread::{IoChannels, IoThreadError, ToIo};
use crate::dataplane::shared::VmShared;
use crate::devices::console::Console;
use crate::ft::supervisor::Supervisor;
use crate::launch;
use crate::machine::{ExitStats, Machine, RunEndKind, Stop, SyncIo};
use crate::vmm::runner::{self, RunEnd, RunError};
use crate::vmm::vm::Vm;

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
}

impl VmParts {
    /// Takes the vCPU and memory of `vm`, to run on `cpu`; the VM's own fd
    /// is returned to the caller, who keeps it open until the run is over.
    pub fn split(vm: Vm, cpu: Option<usize>) -> (VmFd, VmParts) {
        let Vm { fd, vcpu, mem, .. } = vm;
        (fd, VmParts { vcpu, mem, cpu })
    }
}

/// How a run ended.
pub struct Driven<S> {
    pub end: anyhow::Result<RunEnd>,
    pub stats: ExitStats,
    pub io: S,
    /// The supervisor stopped the VM with this status and reason.
    pub verdict: Option<(u8, String)>,
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
    let VmParts { mut vcpu, mem, cpu } = vm;
    let handle = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            launch::pin_current_thread(cpu);
            let _ = vcpu_shared.vcpu_thread.set(std::thread::current());
            let mut machine = Machine::new(mem, console, io);
            let end = runner::run(
                &mut vcpu,
                &mut machine,
                &mut launch::ForceCheck(vcpu_shared),
            )
            .context("running the VM")
            .and_then(|end| {
                machine.finish(&end_kind(&end.stop), &vcpu).map_err(|e| {
                    anyhow::Error::new(RunError::Machine(e)).context("finishing the run")
                })?;
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
    let verdict = launch::supervise(
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
