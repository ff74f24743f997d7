//! `AlignedBuf`: a host bounce buffer that O_DIRECT accepts.
//!
//! Disk data never goes between guest memory and the kernel directly: the
//! vCPU thread copies it into or out of an `AlignedBuf` at an exit, and the
//! I/O thread hands only these buffers to io_uring. O_DIRECT needs the
//! buffer address aligned to the logical block size of the device (512 or
//! 4096), so every buffer starts on a 4096-byte boundary.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`].
pub const BUF_ALIGN: usize = 4096;

/// An owned, zero-initialised, 4096-aligned byte buffer of a fixed length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Allocation size: `len` rounded up to `BUF_ALIGN`, at least `BUF_ALIGN`
    /// (so a zero-length buffer is still a valid allocation).
    cap: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like `Vec<u8>`); the
// raw pointer is never shared, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only gives out `&[u8]`; no interior mutability.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, BUF_ALIGN) {
            Ok(l) => l,
            // Only reachable for sizes near isize::MAX, which no request has.
            Err(_) => panic!("AlignedBuf of {cap} bytes cannot be laid out"),
        }
    }

    /// A buffer of `len` zero bytes.
    ///
    /// # Panics
    ///
    /// If `len` is near `isize::MAX` (no allocation could hold it); callers
    /// that build buffers from untrusted lengths (a log decoder) bound them
    /// first, e.g. by `MAX_REQUEST_BYTES`.
    pub fn zeroed(len: usize) -> Self {
        let Some(cap) = len.max(1).checked_next_multiple_of(BUF_ALIGN) else {
            panic!("AlignedBuf of {len} bytes cannot be allocated")
        };
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (cap >= BUF_ALIGN).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len, cap }
    }

    /// A buffer holding a copy of `data` (e.g. data read back from a log).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::zeroed(data.len());
        b.copy_from_slice(data);
        b
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `cap >= len` initialised (zeroed) bytes that
        // this buffer owns; the borrow of `self` keeps them alive and shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Start of the buffer, for io_uring. Stable for the buffer's lifetime,
    /// even when the `AlignedBuf` value itself is moved.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in `zeroed` with exactly this layout and
        // is freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for AlignedBuf {}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_copied() {
        for len in [0, 1, 511, 512, 4096, 4097, 1 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_mut_ptr() as usize % BUF_ALIGN, 0);
            assert!(b.iter().all(|x| *x == 0));
        }
        let a = AlignedBuf::from_slice(b"hello");
        let c = a.clone();
        assert_eq!(&*c, b"hello");
        assert_eq!(a, c);
        assert!(AlignedBuf::zeroed(0).is_empty());
    }
}
