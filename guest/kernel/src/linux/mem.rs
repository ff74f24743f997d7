//! The app's memory calls. Mappings come from the guest heap (page aligned,
//! zeroed); the brk area lies right above the app's image. Executable
//! mappings are refused: code the app makes at run time could contain the
//! instructions the loader keeps out (CPUID, RDTSC, ...).

use alloc::alloc::{Layout, alloc_zeroed, dealloc};

use linux_raw_sys::errno::{EACCES, EINVAL, ENOMEM};
use linux_raw_sys::general as g;
use lockstep_guest_linux::space::{MapError, PAGE, Pages};

use super::kernel::Kernel;
use super::{Sys, uaccess};

/// The guest heap as the app's page source.
pub struct Heap;

impl Pages for Heap {
    fn alloc(&mut self, len: u64) -> Option<u64> {
        let layout = Layout::from_size_align(len as usize, PAGE as usize).ok()?;
        // SAFETY: the layout has a non-zero size (callers round up to pages).
        let p = unsafe { alloc_zeroed(layout) };
        (!p.is_null()).then_some(p as u64)
    }

    fn free(&mut self, base: u64, len: u64) {
        if let Ok(layout) = Layout::from_size_align(len as usize, PAGE as usize) {
            // SAFETY: `base` and `len` are an allocation `alloc` returned
            // (the address space hands each back once).
            unsafe { dealloc(base as *mut u8, layout) };
        }
    }

    fn zero(&mut self, addr: u64, len: u64) {
        if let Ok(s) = uaccess::slice_mut(addr, len as usize) {
            s.fill(0);
        }
    }

    fn copy(&mut self, from: u64, to: u64, len: u64) {
        if uaccess::check(from, len).is_ok() && uaccess::check(to, len).is_ok() {
            // SAFETY: both ranges are guest RAM (checked) and distinct
            // allocations of the address space.
            unsafe { core::ptr::copy(from as *const u8, to as *mut u8, len as usize) };
        }
    }
}

fn err(e: MapError) -> super::Fail {
    match e {
        MapError::NoMem => ENOMEM.into(),
        MapError::Invalid => EINVAL.into(),
    }
}

pub fn brk(k: &mut Kernel, want: u64) -> Sys {
    Ok(k.space.brk(want, &mut Heap))
}

pub fn mmap(k: &mut Kernel, addr: u64, len: u64, prot: u64, flags: u64, fd: u64, off: u64) -> Sys {
    let flags = flags as u32;
    if prot & u64::from(g::PROT_EXEC) != 0 {
        k.stats.refused_exec += 1;
        return Err(EACCES.into());
    }
    if flags & g::MAP_ANONYMOUS == 0 {
        return super::files::map_file(k, len, fd, off);
    }
    if flags & (g::MAP_SHARED | g::MAP_PRIVATE) == 0 {
        return Err(EINVAL.into());
    }
    if flags & (g::MAP_FIXED | g::MAP_FIXED_NOREPLACE) != 0 {
        return k.space.map_fixed(addr, len, &mut Heap).map_err(err);
    }
    k.space.map(len, &mut Heap).map_err(err)
}

pub fn munmap(k: &mut Kernel, addr: u64, len: u64) -> Sys {
    k.space.unmap(addr, len, &mut Heap).map_err(err)?;
    Ok(0)
}

pub fn mremap(k: &mut Kernel, old: u64, old_len: u64, new_len: u64, flags: u64) -> Sys {
    let may_move = flags & u64::from(g::MREMAP_MAYMOVE) != 0;
    if flags & !u64::from(g::MREMAP_MAYMOVE) != 0 {
        return Err(EINVAL.into());
    }
    k.space
        .remap(old, old_len, new_len, may_move, &mut Heap)
        .map_err(err)
}

/// Protection cannot be enforced (the page tables are the VMM's), but a
/// request to make memory executable is refused like `mmap`'s.
pub fn mprotect(k: &mut Kernel, addr: u64, _len: u64, prot: u64) -> Sys {
    if !addr.is_multiple_of(PAGE) {
        return Err(EINVAL.into());
    }
    if prot & u64::from(g::PROT_EXEC) != 0 && !k.image_contains(addr) {
        k.stats.refused_exec += 1;
        return Err(EACCES.into());
    }
    Ok(0)
}

pub fn madvise(k: &mut Kernel, addr: u64, len: u64, advice: u64) -> Sys {
    if advice == u64::from(g::MADV_DONTNEED) {
        k.space.discard(addr, len, &mut Heap);
    }
    Ok(0)
}
