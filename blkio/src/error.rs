//! `BlkError`: everything `blkio` can report to the VMM.
//!
//! The guest never causes one of these: a malformed guest request is
//! answered with an error status in the guest's own status byte. These are
//! host-side failures (the image, the ring) and VMM-side misuse.

use std::io;
use std::path::PathBuf;

/// Errors of the virtio-blk device model, the disk image and the engine.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// `activate` on an active device.
    #[error("virtio-blk is already active")]
    AlreadyActive,
    /// The transport activated a queue the driver did not mark ready.
    #[error("virtio-blk queue is not ready")]
    QueueNotReady,
    /// The queue's rings are outside guest memory or misaligned.
    #[error("virtio-blk queue rings are outside guest memory")]
    QueueInvalid,
    /// `complete` before `activate`.
    #[error("virtio-blk is not active")]
    NotActivated,
    /// A completion for a request the device does not have in flight.
    #[error("completion for request {0}, which is not in flight")]
    UnknownId(u16),
    /// A successful read completion whose data length is wrong.
    #[error("read completion for request {id} carries {got} bytes, expected {expected}")]
    BadCompletion {
        /// Request id.
        id: u16,
        /// Bytes the request asked for.
        expected: u32,
        /// Bytes the completion carried.
        got: usize,
    },

    /// The image does not exist and no size to create it was given.
    #[error("disk image {} does not exist (give a size to create it)", path.display())]
    NotFound {
        /// The image path.
        path: PathBuf,
    },
    /// The image cannot be read (permissions).
    #[error("disk image {} is not readable", path.display())]
    Unreadable {
        /// The image path.
        path: PathBuf,
        /// The open error.
        #[source]
        source: io::Error,
    },
    /// The image cannot be opened for writing.
    #[error("disk image {} is read-only ({reason}); open it read-only or fix its permissions", path.display())]
    ReadOnly {
        /// The image path.
        path: PathBuf,
        /// Why: a read-only file system or no write permission.
        reason: &'static str,
    },
    /// The path is neither a regular file nor a block device.
    #[error("disk image {} is a {kind}, not a regular file or block device", path.display())]
    NotAFile {
        /// The image path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The size is not a non-zero multiple of 512.
    #[error("disk image {} has {size} bytes, not a multiple of 512", path.display())]
    BadSize {
        /// The image path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The image has no bytes.
    #[error("disk image {} is empty", path.display())]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// Creating the image failed.
    #[error("cannot create disk image {}", path.display())]
    Create {
        /// The image path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O error on the image.
    #[error("disk image {}: {what}", path.display())]
    Io {
        /// The image path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// `drain` cannot finish: writes are held by the output gate.
    #[error("{held} disk writes are held by the output gate; release them before draining")]
    DrainBlocked {
        /// Writes waiting for `release`.
        held: usize,
    },
    /// The io_uring failed.
    #[error("io_uring")]
    Ring(#[source] io::Error),
}
