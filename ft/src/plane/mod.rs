//! The FT roles' parts of the I/O thread (`lockstep_vmm::dataplane::IoPlane`):
//! the logging channel and the heartbeats on the same io_uring as the disk
//! and the tap (docs/failover.md explains why one thread), the output
//! rule's releases, and the evidence for failure detection.

mod backup;
mod primary;

use logchan::EntryKind;

pub use backup::BackupPlane;
pub use primary::PrimaryPlane;

/// user_data tags of the FT engines (the disk and tap use 1 and 2).
pub const TAG_LOG: u8 = 3;
pub const TAG_HEARTBEAT: u8 = 4;

/// The kind of the last entry in a run of whole, verified entries.
fn last_entry_kind(mut bytes: &[u8]) -> Option<EntryKind> {
    let mut kind = None;
    while let Ok((rec, used)) = logchan::decode(bytes) {
        kind = Some(rec.header.kind);
        bytes = &bytes[used..];
    }
    kind
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_backpressure;
