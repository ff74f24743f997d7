//! VM exits as the dispatcher sees them, decoupled from `kvm-ioctls` so the
//! exit handling can be unit-tested with made-up exits and no KVM.

use kvm_ioctls::VcpuExit;

/// One return from `KVM_RUN`.
#[derive(Debug)]
pub enum VmExit<'a> {
    IoOut {
        port: u16,
        data: &'a [u8],
    },
    IoIn {
        port: u16,
        data: &'a mut [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    Shutdown,
    InternalError,
    FailEntry {
        reason: u64,
    },
    /// `KVM_RUN` returned because of a host signal or `immediate_exit`: the
    /// host caused it, so it is not an instruction point and not counted.
    Interrupted,
    Other(String),
}

/// The kind of an exit, as recorded in the log (stable numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ExitKind {
    None = 0,
    Sync = 1,
    PioOut = 2,
    PioIn = 3,
    MmioRead = 4,
    MmioWrite = 5,
    Other = 6,
}

impl VmExit<'_> {
    /// Whether the guest caused this exit, i.e. whether it advances the exit
    /// index (the replayable instruction point).
    pub fn is_guest_caused(&self) -> bool {
        !matches!(self, VmExit::Interrupted)
    }

    pub fn kind(&self) -> ExitKind {
        match self {
            VmExit::IoOut { port, .. } if *port == lockstep_guest_abi::PORT_SYNC => ExitKind::Sync,
            VmExit::IoOut { .. } => ExitKind::PioOut,
            VmExit::IoIn { .. } => ExitKind::PioIn,
            VmExit::MmioRead { .. } => ExitKind::MmioRead,
            VmExit::MmioWrite { .. } => ExitKind::MmioWrite,
            VmExit::Interrupted => ExitKind::None,
            _ => ExitKind::Other,
        }
    }
}

impl<'a> From<VcpuExit<'a>> for VmExit<'a> {
    fn from(exit: VcpuExit<'a>) -> Self {
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
}
