//! The runtime the precompiled `core` expects from a libc-less program:
//! memory functions, the unwinding personality stub, the panic handler.
//!
//! The memory functions use `rep movsb` / `rep stosb` (fast on current CPUs,
//! and no loop that LLVM could turn back into a call to the function being
//! defined). memcmp/bcmp compare a word at a time with explicit loads.

use core::arch::asm;
use core::fmt::Write;
use core::panic::PanicInfo;

use crate::console::StackBuf;
use crate::ports;

/// # Safety
/// `dest` and `src` valid for `n` bytes and not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; rep movsb copies
    // exactly n bytes forwards (DF is clear per the SysV ABI).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// # Safety
/// `dest` and `src` valid for `n` bytes (they may overlap).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src or past its end: a forward copy is safe.
        // SAFETY: as for memcpy; forward order never reads a byte already
        // overwritten.
        unsafe { memcpy(dest, src, n) };
    } else if n > 0 {
        // SAFETY: dest overlaps the tail of src: copy backwards (DF set),
        // starting from the last byte; DF is cleared again afterwards as
        // the ABI requires.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
    }
    dest
}

/// # Safety
/// `dest` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees dest is valid for n bytes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dest => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dest
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, so both 8-byte reads are in bounds.
        let (x, y) = unsafe {
            (
                (a.add(i) as *const u64).read_unaligned(),
                (b.add(i) as *const u64).read_unaligned(),
            )
        };
        if x != y {
            // Big-endian order makes the first differing byte decide.
            return if x.swap_bytes() < y.swap_bytes() {
                -1
            } else {
                1
            };
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// `a` and `b` valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` was built to unwind and names this symbol; with
/// `panic = "abort"` it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The precompiled `alloc` has landing pads that name this symbol; with
/// `panic = "abort"` nothing unwinds, so it is never called.
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub extern "C" fn _Unwind_Resume() -> ! {
    ports::exit(PANIC_STATUS)
}

/// Exit status of a panic.
pub const PANIC_STATUS: u32 = 101;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    // No heap here: the panic may come from the allocator.
    let mut b = StackBuf::<1024>::new();
    let _ = write!(b, "panic: {}", info.message());
    if let Some(l) = info.location() {
        let _ = write!(b, " at {}:{}", l.file(), l.line());
    }
    let _ = b.write_str("\n");
    ports::console(b.as_bytes());
    ports::exit(PANIC_STATUS)
}
