//! The per-exit dispatch: what the vCPU thread does with each exit the guest
//! causes. It owns the device models and counts the **exit index**, the
//! replayable instruction point (docs/architecture.md). It is the only writer of
//! guest memory, and only while it handles an exit.
//!
//! It knows nothing of KVM: the runner feeds it `VmExit`s, and tests feed it
//! made-up ones.

pub mod digest;
mod exit;
mod sync;

use vm_memory::GuestMemoryMmap;

use lockstep_guest_abi as abi;

use crate::devices::GuestError;
use crate::devices::console::Console;

pub use digest::{Digester, RegsSource, VmDigester};
pub use exit::VmExit;
pub use sync::{RunEndKind, SyncIo, SyncOutcome, SyncRequest};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest called `PORT_EXIT` with this status.
    GuestExit(u32),
    /// A ring-0 stub reported a fault with this vector; the runner reads the
    /// frame and registers to build the report.
    Fault(u8),
    /// Triple fault: KVM shut the vCPU down.
    TripleFault,
    /// The CPU halted at ring 0 (only the fault stubs' HLT can do that).
    Halted,
    /// KVM could not emulate a ring-0 instruction (e.g. SSE at ring 0).
    EmulationFailure,
    /// The host asked the VM to stop and the guest did not in time.
    Forced,
}

/// What the vCPU loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop(Stop),
}

/// An exit the VMM cannot continue from. `E` is the error type of the side
/// that serves sync calls ([`SyncIo::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum MachineError<E: std::error::Error + 'static> {
    #[error("guest used I/O port {port:#x} ({dir}), which the ABI does not define")]
    UnknownPort { port: u16, dir: &'static str },
    #[error("guest accessed {addr:#x} ({len} bytes, {dir}), where no device is")]
    UnknownMmio {
        addr: u64,
        len: usize,
        dir: &'static str,
    },
    #[error("guest broke the ABI at exit {exit_index}")]
    Guest {
        exit_index: u64,
        #[source]
        source: GuestError,
    },
    #[error("KVM failed to enter the guest (hardware reason {0:#x})")]
    FailEntry(u64),
    #[error("unexpected exit: {0}")]
    Unexpected(String),
    #[error("the sync call at exit {exit_index} failed")]
    Sync {
        exit_index: u64,
        #[source]
        source: E,
    },
    #[error("checking the run's end at exit {exit_index} failed")]
    Finish {
        exit_index: u64,
        #[source]
        source: E,
    },
}

impl<E: std::error::Error + 'static> MachineError<E> {
    /// The error of the side serving sync calls, if that is what ended the
    /// run (a replay's stop reason travels this way, typed).
    pub fn io_error(&self) -> Option<&E> {
        match self {
            MachineError::Sync { source, .. } | MachineError::Finish { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Counters the runner and `lockstep status` report.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    pub sync: u64,
    pub sync_waits: u64,
    pub console: u64,
    pub mmio: u64,
    pub host_interrupts: u64,
    /// Time inside KVM_RUN: guest execution plus the exits' world switches.
    pub guest_ns: u64,
    /// Time the vCPU thread spent handling exits, waits included.
    pub vmm_ns: u64,
    /// Of `vmm_ns`, time blocked in waiting sync calls (the guest was idle).
    pub wait_ns: u64,
}

/// The vCPU thread's view of the machine.
pub struct Machine<S: SyncIo> {
    pub mem: GuestMemoryMmap,
    pub console: Console,
    pub io: S,
    /// Guest-caused exits so far: the replayable instruction point.
    pub exit_index: u64,
    pub stats: ExitStats,
    /// Whether the last exit handled was a sync call.
    last_was_sync: bool,
}

fn u32_arg(what: &'static str, data: &[u8]) -> Result<u32, GuestError> {
    <[u8; 4]>::try_from(data)
        .map(u32::from_le_bytes)
        .map_err(|_| GuestError::BadWidth {
            what,
            want: 4,
            got: data.len(),
        })
}

impl<S: SyncIo> Machine<S> {
    pub fn new(mem: GuestMemoryMmap, console: Console, io: S) -> Self {
        Machine {
            mem,
            console,
            io,
            exit_index: 0,
            stats: ExitStats::default(),
            last_was_sync: false,
        }
    }

    /// After an exit, with the registers final: lets the I/O side digest
    /// and publish what the exit produced.
    pub fn after_exit(&mut self, regs: &dyn RegsSource) -> Result<(), MachineError<S::Error>> {
        if !std::mem::take(&mut self.last_was_sync) {
            return Ok(());
        }
        let mut digester = VmDigester {
            regs,
            mem: &self.mem,
        };
        self.io
            .after_sync_exit(self.exit_index, &mut digester)
            .map_err(|source| MachineError::Sync {
                exit_index: self.exit_index,
                source,
            })
    }

    /// Whether the exit just handled was a sync call (before
    /// [`Self::after_exit`], which clears it).
    pub fn last_exit_was_sync(&self) -> bool {
        self.last_was_sync
    }

    /// The end of a sync exit, after [`Self::after_exit`]: a join point
    /// for a live clone, if the I/O side wants one.
    pub fn at_boundary(
        &mut self,
        vcpu: &dyn crate::snapshot::vcpu::VcpuAccess,
    ) -> Result<(), MachineError<S::Error>> {
        self.io
            .at_boundary(self.exit_index, &self.mem, vcpu)
            .map_err(|source| MachineError::Sync {
                exit_index: self.exit_index,
                source,
            })
    }

    /// Handles one exit. Guest-caused exits advance the exit index before
    /// anything else happens, so every effect of exit N is tagged N.
    pub fn handle(&mut self, exit: VmExit<'_>) -> Result<Flow, MachineError<S::Error>> {
        if !exit.is_guest_caused() {
            self.stats.host_interrupts += 1;
            return Ok(Flow::Continue);
        }
        self.exit_index += 1;
        let guest = |exit_index, source| MachineError::Guest { exit_index, source };
        match exit {
            VmExit::IoOut { port, data } => match port {
                abi::PORT_SYNC => {
                    let arg = u32_arg("sync call", data).map_err(|e| guest(self.exit_index, e))?;
                    self.stats.sync += 1;
                    self.sync(arg)
                }
                abi::PORT_CONSOLE => {
                    self.stats.console += 1;
                    let arg =
                        u32_arg("console write", data).map_err(|e| guest(self.exit_index, e))?;
                    if let Err(e) = self.console.write_from_guest(&self.mem, arg) {
                        tracing::warn!(exit = self.exit_index, "console: {e}");
                    }
                    Ok(Flow::Continue)
                }
                abi::PORT_EXIT => {
                    let status = u32_arg("exit", data).map_err(|e| guest(self.exit_index, e))?;
                    Ok(Flow::Stop(Stop::GuestExit(status)))
                }
                abi::PORT_FAULT => {
                    let vector = u32_arg("fault report", data).unwrap_or(255);
                    Ok(Flow::Stop(Stop::Fault(vector as u8)))
                }
                port => Err(MachineError::UnknownPort { port, dir: "out" }),
            },
            VmExit::IoIn { port, .. } => Err(MachineError::UnknownPort { port, dir: "in" }),
            VmExit::MmioRead { addr, data } => {
                self.stats.mmio += 1;
                if self.io.mmio_read(&self.mem, addr, data) {
                    Ok(Flow::Continue)
                } else {
                    Err(MachineError::UnknownMmio {
                        addr,
                        len: data.len(),
                        dir: "read",
                    })
                }
            }
            VmExit::MmioWrite { addr, data } => {
                self.stats.mmio += 1;
                if self.io.mmio_write(&self.mem, addr, data) {
                    Ok(Flow::Continue)
                } else {
                    Err(MachineError::UnknownMmio {
                        addr,
                        len: data.len(),
                        dir: "write",
                    })
                }
            }
            VmExit::Hlt => Ok(Flow::Stop(Stop::Halted)),
            VmExit::Shutdown => Ok(Flow::Stop(Stop::TripleFault)),
            VmExit::InternalError => Ok(Flow::Stop(Stop::EmulationFailure)),
            VmExit::FailEntry { reason } => Err(MachineError::FailEntry(reason)),
            VmExit::Interrupted => Ok(Flow::Continue),
            VmExit::Other(what) => Err(MachineError::Unexpected(what)),
        }
    }

    fn sync(&mut self, arg: u32) -> Result<Flow, MachineError<S::Error>> {
        let addr = arg as u64;
        let block = sync::read_block(&self.mem, addr).map_err(|source| MachineError::Guest {
            exit_index: self.exit_index,
            source,
        })?;
        let request = SyncRequest {
            exit_index: self.exit_index,
            flags: block.flags,
            deadline_ns: block.deadline_ns,
        };
        let outcome = self
            .io
            .sync(&self.mem, &request)
            .map_err(|source| MachineError::Sync {
                exit_index: self.exit_index,
                source,
            })?;
        if outcome.waited_ns > 0 {
            self.stats.sync_waits += 1;
            self.stats.wait_ns += outcome.waited_ns;
        }
        self.last_was_sync = true;
        sync::write_result(&self.mem, addr, outcome.events, outcome.now_ns).map_err(|source| {
            MachineError::Guest {
                exit_index: self.exit_index,
                source,
            }
        })?;
        Ok(Flow::Continue)
    }

    /// The run is over: lets the I/O side close its log.
    pub fn finish(
        &mut self,
        end: &RunEndKind,
        regs: &dyn RegsSource,
    ) -> Result<(), MachineError<S::Error>> {
        let mut digester = VmDigester {
            regs,
            mem: &self.mem,
        };
        self.io
            .finish(self.exit_index, end, &mut digester)
            .map_err(|source| MachineError::Finish {
                exit_index: self.exit_index,
                source,
            })
    }
}

#[cfg(test)]
mod tests;
