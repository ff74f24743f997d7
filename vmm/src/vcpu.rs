//! The vCPU thread's loop: `KVM_RUN`, hand the exit to the machine, repeat.
//! A kick (a signal with `immediate_exit`) brings the thread back to the VMM
//! without a guest-caused exit, so it never shifts the exit index.

use std::cell::Cell;
use std::sync::Once;
use std::time::Instant;

use kvm_ioctls::{VcpuExit, VcpuFd};
use logchan::DIGEST_REGS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::kvm::fault::{self, FaultReport};
use crate::machine::{Flow, Machine, MachineError, RegsSource, Stop, SyncIo, VmExit};

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, for the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    // Only an aligned byte store: async-signal-safe. If the signal lands
    // before KVM_RUN, immediate_exit makes KVM_RUN return at once; if it
    // lands inside, KVM_RUN returns EINTR.
    let ptr = IMMEDIATE_EXIT.with(|c| c.get());
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's mapped kvm_run field, set
        // while the VcpuFd that owns the mapping is alive on this thread.
        unsafe { ptr.write_volatile(1) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that only does the store above; no
        // SA_RESTART so a blocked KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// How a run ended.
#[derive(Debug)]
pub struct RunEnd {
    pub stop: Stop,
    pub fault: Option<FaultReport>,
    pub exits: u64,
}

/// Errors that end a run abnormally; `E` is the sync server's error type.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    #[error("KVM_RUN failed")]
    KvmRun(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Machine(#[from] MachineError<E>),
}

impl<E: std::error::Error + 'static> RunError<E> {
    /// The sync server's own error, if that is what ended the run.
    pub fn io_error(&self) -> Option<&E> {
        match self {
            RunError::Machine(m) => m.io_error(),
            RunError::KvmRun(_) => None,
        }
    }
}

/// Whether the loop should leave at the next host-caused return.
pub trait KickCheck {
    /// Called after a kick: `Some(stop)` ends the run.
    fn after_kick(&mut self) -> Option<Stop>;
}

/// Runs the vCPU until the guest stops or an error ends the run.
pub fn run<S: SyncIo>(
    vcpu: &mut VcpuFd,
    machine: &mut Machine<S>,
    kicks: &mut dyn KickCheck,
) -> Result<RunEnd, RunError<S::Error>> {
    install_kick_handler();
    let run_ptr = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    IMMEDIATE_EXIT.with(|c| c.set(run_ptr));
    let result = run_loop(vcpu, machine, kicks);
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    result
}

fn run_loop<S: SyncIo>(
    vcpu: &mut VcpuFd,
    machine: &mut Machine<S>,
    kicks: &mut dyn KickCheck,
) -> Result<RunEnd, RunError<S::Error>> {
    loop {
        let entered = Instant::now();
        let result = vcpu.run();
        let exited = Instant::now();
        machine.stats.guest_ns += (exited - entered).as_nanos() as u64;
        let flow = match result {
            Ok(exit) => match vm_exit(exit) {
                VmExit::Interrupted => None,
                exit => Some(machine.handle(exit)?),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => return Err(RunError::KvmRun(e)),
        };
        let flow = match flow {
            Some(flow) => flow,
            None => {
                vcpu.set_kvm_immediate_exit(0);
                machine.handle(VmExit::Interrupted)?;
                match kicks.after_kick() {
                    Some(stop) => Flow::Stop(stop),
                    None => Flow::Continue,
                }
            }
        };
        match flow {
            Flow::Continue => {
                let sync = machine.last_exit_was_sync();
                machine.after_exit(vcpu)?;
                // The end of a sync exit: where a live clone may be taken.
                if sync {
                    machine.at_boundary(vcpu)?;
                }
                machine.stats.vmm_ns += exited.elapsed().as_nanos() as u64;
            }
            Flow::Stop(stop) => {
                let fault = match stop {
                    Stop::Fault(_) => Some(fault_report(vcpu, &machine.mem)),
                    _ => None,
                };
                return Ok(RunEnd {
                    stop,
                    fault,
                    exits: machine.exit_index,
                });
            }
        }
    }
}

/// Reads the frame the fault stub left and decodes the faulting instruction.
pub fn fault_report(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> FaultReport {
    let rsp = vcpu.get_regs().map(|r| r.rsp).unwrap_or(0);
    let cr2 = vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
    let mut raw = [0u8; 8 * fault::FRAME_WORDS];
    let mut frame = [0u64; fault::FRAME_WORDS];
    if mem.read_slice(&mut raw, GuestAddress(rsp)).is_ok() {
        for (i, w) in raw.chunks_exact(8).enumerate() {
            frame[i] = u64::from_le_bytes(w.try_into().unwrap_or_default());
        }
    }
    let mut report = fault::from_frame(&frame, cr2);
    let mut code = [0u8; 15];
    let readable = (0..=code.len())
        .rev()
        .find(|n| {
            mem.read_slice(&mut code[..*n], GuestAddress(report.rip))
                .is_ok()
        })
        .unwrap_or(0);
    report.decode(&code[..readable]);
    report
}

/// Sends the kick signal to a vCPU thread.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: pthread_kill on a thread id of a live thread of this process;
    // the handler is installed before any vCPU runs.
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}

/// KVM's exit as the machine sees it.
fn vm_exit(exit: VcpuExit<'_>) -> VmExit<'_> {
    match exit {
        VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
        VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
        VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
        VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
        VcpuExit::Hlt => VmExit::Hlt,
        VcpuExit::Shutdown => VmExit::Shutdown,
        VcpuExit::InternalError => VmExit::InternalError,
        VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
        VcpuExit::Intr => VmExit::Interrupted,
        other => VmExit::Other(format!("{other:?}")),
    }
}

impl RegsSource for VcpuFd {
    fn digest_regs(&self) -> [u64; DIGEST_REGS] {
        match self.get_regs() {
            Ok(r) => [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
            ],
            Err(e) => {
                tracing::warn!("KVM_GET_REGS for a digest failed: {e}");
                [0; DIGEST_REGS]
            }
        }
    }
}
