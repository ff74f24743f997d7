//! The app's memory as the personality sees it: every pointer a system
//! call receives is checked against guest RAM before it is touched, so a
//! bad pointer is `EFAULT`, never a fault in the personality (which would
//! stop the VM). The app and the personality share one address space (a
//! library OS): the app is not protected from itself.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use linux_raw_sys::errno::EFAULT;
use lockstep_guest_abi::USER_LOW;

use super::Fail;

/// End of guest RAM (set once at boot).
static RAM_END: AtomicU64 = AtomicU64::new(0);

pub fn init(mem_size: u64) {
    RAM_END.store(mem_size, Ordering::Relaxed);
}

/// Checks that `[addr, addr + len)` is guest RAM the app may name.
pub fn check(addr: u64, len: u64) -> Result<(), Fail> {
    let end = addr.checked_add(len).ok_or(Fail::E(EFAULT))?;
    if len > 0 && (addr < USER_LOW || end > RAM_END.load(Ordering::Relaxed)) {
        return Err(Fail::E(EFAULT));
    }
    Ok(())
}

/// The bytes at `addr`.
pub fn slice<'a>(addr: u64, len: usize) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    check(addr, len as u64)?;
    // SAFETY: the range is guest RAM (checked), identity-mapped and
    // readable at ring 3; the slice is used before the app runs again.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// The bytes at `addr`, writable.
pub fn slice_mut<'a>(addr: u64, len: usize) -> Result<&'a mut [u8], Fail> {
    if len == 0 {
        return Ok(&mut []);
    }
    check(addr, len as u64)?;
    // SAFETY: as for `slice`; the app does not run while the personality
    // holds it.
    Ok(unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) })
}

/// Copies `data` to `addr`.
pub fn put(addr: u64, data: &[u8]) -> Result<(), Fail> {
    slice_mut(addr, data.len())?.copy_from_slice(data);
    Ok(())
}

pub fn put_u64(addr: u64, v: u64) -> Result<(), Fail> {
    put(addr, &v.to_le_bytes())
}

pub fn put_u32(addr: u64, v: u32) -> Result<(), Fail> {
    put(addr, &v.to_le_bytes())
}

pub fn get_u64(addr: u64) -> Result<u64, Fail> {
    let b = slice(addr, 8)?;
    Ok(u64::from_le_bytes(
        b.try_into().map_err(|_| Fail::E(EFAULT))?,
    ))
}

pub fn get_u32(addr: u64) -> Result<u32, Fail> {
    let b = slice(addr, 4)?;
    Ok(u32::from_le_bytes(
        b.try_into().map_err(|_| Fail::E(EFAULT))?,
    ))
}

/// A NUL-terminated string at `addr` (without the NUL), at most `max` bytes.
pub fn cstr<'a>(addr: u64, max: usize) -> Result<&'a [u8], Fail> {
    check(addr, 1)?;
    let room = RAM_END.load(Ordering::Relaxed).saturating_sub(addr) as usize;
    let s = slice(addr, max.min(room))?;
    let n = s
        .iter()
        .position(|c| *c == 0)
        .ok_or(Fail::E(linux_raw_sys::errno::ENAMETOOLONG))?;
    Ok(&s[..n])
}

/// The `iovec` array at `addr`: (base, len) pairs, checked.
pub fn iovecs(addr: u64, count: u64) -> Result<Vec<(u64, usize)>, Fail> {
    if count > 1024 {
        return Err(Fail::E(linux_raw_sys::errno::EINVAL));
    }
    let raw = slice(addr, count as usize * 16)?;
    let mut out = Vec::with_capacity(count as usize);
    for c in raw.chunks_exact(16) {
        let base = u64::from_le_bytes(c[..8].try_into().map_err(|_| Fail::E(EFAULT))?);
        let len = u64::from_le_bytes(c[8..].try_into().map_err(|_| Fail::E(EFAULT))?);
        check(base, len)?;
        out.push((base, len as usize));
    }
    Ok(out)
}
