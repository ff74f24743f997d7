//! Registered ("fixed") buffers: where an engine's buffers go in the ring's
//! buffer table. A ring has one table, and the I/O thread's ring is shared
//! by several engines, so an engine either owns the whole table or a range
//! of slots in a sparse table the I/O thread created for everyone.

use io_uring::Submitter;

use super::error::SetupError;

/// How an engine registers its buffers with the ring (see `attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// `register_buffers`: the engine's buffers become the ring's whole
    /// table. The ring must have no table yet.
    Table,
    /// `register_buffers_update` into slots `offset..offset + count` of a
    /// table the I/O thread created with `register_buffers_sparse(total)`:
    /// for a ring whose table several engines share.
    Slots { offset: u16 },
    /// No registered buffers: plain (non-fixed) operations.
    None,
}

/// Registers `iovecs`; returns the table slot of `iovecs[0]` (`None` for
/// [`Registration::None`]).
///
/// # Safety
///
/// The memory every iovec describes must stay allocated and must not be
/// accessed by the kernel through any other path concurrently, until
/// [`unregister`] succeeds or the ring is destroyed.
pub(crate) unsafe fn register(
    submitter: &Submitter<'_>,
    iovecs: &[libc::iovec],
    how: Registration,
) -> Result<Option<u16>, SetupError> {
    let count = iovecs.len();
    match how {
        Registration::None => Ok(None),
        Registration::Table => {
            // SAFETY: forwarded from this function's contract.
            unsafe { submitter.register_buffers(iovecs) }
                .map_err(|source| SetupError::Register { count, source })?;
            Ok(Some(0))
        }
        Registration::Slots { offset } => {
            if usize::from(offset) + count > usize::from(u16::MAX) {
                return Err(SetupError::SlotRange { offset, count });
            }
            // SAFETY: forwarded from this function's contract.
            unsafe { submitter.register_buffers_update(u32::from(offset), iovecs, None) }
                .map_err(|source| SetupError::Register { count, source })?;
            Ok(Some(offset))
        }
    }
}

/// Undoes [`register`] for `count` buffers.
pub(crate) fn unregister(
    submitter: &Submitter<'_>,
    count: usize,
    how: Registration,
) -> Result<(), SetupError> {
    match how {
        Registration::None => Ok(()),
        Registration::Table => submitter
            .unregister_buffers()
            .map_err(|source| SetupError::Register { count, source }),
        Registration::Slots { offset } => {
            // A null iovec empties a slot.
            let empty = vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                count
            ];
            // SAFETY: null iovecs describe no memory; the kernel only drops
            // its references to the slots' old pages.
            unsafe { submitter.register_buffers_update(u32::from(offset), &empty, None) }
                .map(drop)
                .map_err(|source| SetupError::Register { count, source })
        }
    }
}
