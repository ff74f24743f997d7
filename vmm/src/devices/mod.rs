//! Device models the vCPU thread runs at exits: the console, the sync port's
//! clock, and the virtio-mmio transport around `blkio`/`netio`.

pub mod clock;
pub mod console;
pub mod virtio;
pub mod virtio_mmio;

/// A guest mistake in using a device: reported, never fatal to the VMM
/// unless the ABI says so.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{what} at {addr:#x} (+{len}) is outside guest memory")]
    BadAddress {
        what: &'static str,
        addr: u64,
        len: u64,
    },
    #[error("{what} of {len} bytes is longer than the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what} needs a {want}-byte access, the guest made a {got}-byte one")]
    BadWidth {
        what: &'static str,
        want: usize,
        got: usize,
    },
    #[error("sync block at {0:#x} is not 16-byte aligned inside guest memory")]
    BadSyncBlock(u64),
}
