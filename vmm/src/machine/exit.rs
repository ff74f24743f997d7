//! VM exits as the dispatcher sees them, decoupled from `kvm-ioctls` so the
//! exit handling can be unit-tested with made-up exits and no KVM (the
//! conversion from KVM's exits is in `vcpu`).

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

impl VmExit<'_> {
    /// Whether the guest caused this exit, i.e. whether it advances the exit
    /// index (the replayable instruction point).
    pub fn is_guest_caused(&self) -> bool {
        !matches!(self, VmExit::Interrupted)
    }
}
