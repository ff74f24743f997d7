//! The sync call's plumbing: the block in guest memory, and the interface
//! to whatever supplies its results (live devices and the I/O thread, or a
//! log being replayed).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use lockstep_guest_abi::{self as abi, SyncBlock};

use super::digest::Digester;
use crate::devices::GuestError;
use crate::snapshot::vcpu::VcpuAccess;

/// What the guest asked for in one sync call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    pub exit_index: u64,
    pub flags: u32,
    pub deadline_ns: u64,
}

impl SyncRequest {
    pub fn wait(&self) -> bool {
        self.flags & abi::SYNC_WAIT != 0
    }
}

/// What the sync call returns to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub events: u32,
    pub now_ns: u64,
    /// Nanoseconds the vCPU thread blocked waiting for input (statistics).
    pub waited_ns: u64,
}

/// Serves the sync call and the device windows: the live devices with the
/// I/O thread behind them, or a replay of a log.
pub trait SyncIo {
    /// Why a sync call (or the run's end) cannot be served: each server has
    /// its own typed reasons (a replay's end of log or divergence, an I/O
    /// thread gone), which the caller matches on.
    type Error: std::error::Error + Send + Sync + 'static;

    /// At the sync exit: take the guest's outputs, apply pending inputs,
    /// block if asked and nothing is pending; return events and time.
    fn sync(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
    ) -> Result<SyncOutcome, Self::Error>;
    /// An MMIO read; false if no device is at `addr`.
    fn mmio_read(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool;
    /// An MMIO write; false if no device is at `addr`.
    fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool;
    /// After a sync exit has been handled (registers final): digests,
    /// publishing the exit's log entries.
    fn after_sync_exit(
        &mut self,
        _exit_index: u64,
        _digester: &mut dyn Digester,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    /// At the end of a sync exit, once registers and log are final: the
    /// machine stands at an exact instruction point, where a live clone
    /// may be taken (docs/join.md). Nothing happens by default.
    fn at_boundary(
        &mut self,
        _exit_index: u64,
        _mem: &GuestMemoryMmap,
        _vcpu: &dyn VcpuAccess,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The run is over at `exit_index`.
    fn finish(
        &mut self,
        _exit_index: u64,
        _end: &RunEndKind,
        _digester: &mut dyn Digester,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// How a run ended, as the log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEndKind {
    GuestExit(u32),
    HostStop,
    Error,
}

/// Reads and checks the guest's sync block.
pub fn read_block(mem: &GuestMemoryMmap, addr: u64) -> Result<SyncBlock, GuestError> {
    let size = abi::SYNC_BLOCK_SIZE as u64;
    if !addr.is_multiple_of(16) || addr / 4096 != (addr + size - 1) / 4096 {
        return Err(GuestError::BadSyncBlock(addr));
    }
    let mut raw = [0u8; abi::SYNC_BLOCK_SIZE];
    mem.read_slice(&mut raw, GuestAddress(addr))
        .map_err(|_| GuestError::BadSyncBlock(addr))?;
    let word = |off: usize| u64::from_le_bytes(raw[off..off + 8].try_into().unwrap_or_default());
    Ok(SyncBlock {
        flags: word(0) as u32,
        events: (word(0) >> 32) as u32,
        deadline_ns: word(8),
        now_ns: word(16),
        reserved: word(24),
    })
}

/// Writes the results into the guest's sync block.
pub fn write_result(
    mem: &GuestMemoryMmap,
    addr: u64,
    events: u32,
    now_ns: u64,
) -> Result<(), GuestError> {
    let written = mem
        .write_slice(&events.to_le_bytes(), GuestAddress(addr + 4))
        .and_then(|_| mem.write_slice(&now_ns.to_le_bytes(), GuestAddress(addr + 16)))
        .map_err(|_| GuestError::BadSyncBlock(addr));
    // A live clone must resend this page (KVM does not see the VMM's writes).
    virtq::host_writes::note(addr + 4, 20);
    written
}
