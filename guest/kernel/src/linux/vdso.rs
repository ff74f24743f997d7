//! The personality's vDSO (on by default; boot word `vdso=0` leaves it out,
//! the process environment issue 19 first asked for):
//! `__vdso_clock_gettime` reads the virtual time of the last sync call
//! from memory instead of making a system call. redis reads the clock
//! about twice per request, so this halves its system calls — the
//! difference between meeting and missing the 0.5 × native goal,
//! at ~5 µs per system call on this virtualizer. A Linux vDSO reads the
//! TSC, which is why the issue asked for none; this one reads no hardware
//! clock.
//!
//! Determinism is unchanged: the time the vDSO reads is written by the
//! personality only at sync calls (logged), and every read bumps a counter
//! that the sync call resets; past [`SPIN_READS`] reads without a sync call
//! the vDSO answers `-ENOSYS`, musl falls back to the system call, and the
//! system call's spin limit applies — a thread that busy-waits on the clock
//! still sees time pass, at the same point in a replay.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::global_asm;

/// vDSO clock reads between two sync calls before they fall back to the
/// system call.
pub const SPIN_READS: u64 = 4096;

// The function and its data, position-independent: copied whole into the
// image, the RIP-relative `lea` finds the data after the code.
global_asm!(
    ".pushsection .text.lockstep_vdso, \"ax\"",
    ".globl lockstep_vdso_start",
    "lockstep_vdso_start:",
    "lea rax, [rip + 5f]",
    "add qword ptr [rax], 1",
    "cmp qword ptr [rax], {spin}",
    "ja 2f",
    "cmp edi, 1",
    "je 3f",
    "cmp edi, 4",
    "je 3f",
    "cmp edi, 6",
    "je 3f",
    "cmp edi, 7",
    "je 3f",
    "cmp edi, 0",
    "je 4f",
    "cmp edi, 5",
    "je 4f",
    "2:",
    "mov rax, -38",
    "ret",
    "4:",
    "mov rcx, [rax + 8]",
    "mov rdx, [rax + 16]",
    "jmp 6f",
    "3:",
    "mov rcx, [rax + 24]",
    "mov rdx, [rax + 32]",
    "6:",
    "mov [rsi], rcx",
    "mov [rsi + 8], rdx",
    "xor eax, eax",
    "ret",
    ".balign 8",
    ".globl lockstep_vdso_data",
    "lockstep_vdso_data:",
    "5:",
    ".quad 0, 0, 0, 0, 0",
    ".globl lockstep_vdso_end",
    "lockstep_vdso_end:",
    ".popsection",
    spin = const SPIN_READS,
);

unsafe extern "C" {
    static lockstep_vdso_start: u8;
    static lockstep_vdso_data: u8;
    static lockstep_vdso_end: u8;
}

const HDR: usize = 64;
const PHDRS: usize = 0x40;
const DYN: usize = 0x100;
const HASH: usize = 0x180;
const SYMS: usize = 0x1c0;
const STRS: usize = 0x220;
const CODE: usize = 0x300;
const SYMBOLS: &[u8] = b"\0__vdso_clock_gettime\0LINUX_2.6\0";

/// The vDSO at its place in memory, and where its time data lies.
pub struct Vdso {
    image: Vec<u8>,
    data: usize,
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

impl Vdso {
    /// Builds the image: an ELF `ET_DYN` with one loadable segment, a
    /// dynamic section, a symbol table naming `__vdso_clock_gettime`, and
    /// the code (what musl's `__vdsosym` reads).
    pub fn new() -> Vdso {
        let (start, data, end) = (
            &raw const lockstep_vdso_start as usize,
            &raw const lockstep_vdso_data as usize,
            &raw const lockstep_vdso_end as usize,
        );
        let code_len = end - start;
        let size = (CODE + code_len).next_multiple_of(4096);
        let mut b = vec![0u8; size];
        put(&mut b, 0, b"\x7fELF\x02\x01\x01");
        put(&mut b, 16, &3u16.to_le_bytes()); // ET_DYN
        put(&mut b, 18, &62u16.to_le_bytes()); // x86-64
        put(&mut b, 20, &1u32.to_le_bytes());
        put(&mut b, 32, &(PHDRS as u64).to_le_bytes());
        put(&mut b, 52, &(HDR as u16).to_le_bytes());
        put(&mut b, 54, &56u16.to_le_bytes());
        put(&mut b, 56, &2u16.to_le_bytes());
        let phdr = |b: &mut [u8], at: usize, kind: u32, flags: u32, off: usize, len: usize| {
            put(b, at, &kind.to_le_bytes());
            put(b, at + 4, &flags.to_le_bytes());
            for (i, v) in [off, off, off, len, len, 8].iter().enumerate() {
                put(b, at + 8 + 8 * i, &(*v as u64).to_le_bytes());
            }
        };
        phdr(&mut b, PHDRS, 1, 5, 0, size); // PT_LOAD, R+X
        phdr(&mut b, PHDRS + 56, 2, 4, DYN, 6 * 16); // PT_DYNAMIC
        let dynamic: [(u64, u64); 6] = [
            (4, HASH as u64),           // DT_HASH
            (5, STRS as u64),           // DT_STRTAB
            (6, SYMS as u64),           // DT_SYMTAB
            (10, SYMBOLS.len() as u64), // DT_STRSZ
            (11, 24),                   // DT_SYMENT
            (0, 0),
        ];
        for (i, (t, v)) in dynamic.iter().enumerate() {
            put(&mut b, DYN + 16 * i, &t.to_le_bytes());
            put(&mut b, DYN + 16 * i + 8, &v.to_le_bytes());
        }
        // DT_HASH: one bucket, two symbols (musl reads the count).
        for (i, v) in [1u32, 2, 1, 0, 0].iter().enumerate() {
            put(&mut b, HASH + 4 * i, &v.to_le_bytes());
        }
        // Symbol 1: __vdso_clock_gettime, a global function in section 1.
        let sym = SYMS + 24;
        put(&mut b, sym, &1u32.to_le_bytes());
        b[sym + 4] = 0x12;
        put(&mut b, sym + 6, &1u16.to_le_bytes());
        put(&mut b, sym + 8, &(CODE as u64).to_le_bytes());
        put(&mut b, sym + 16, &(code_len as u64).to_le_bytes());
        put(&mut b, STRS, SYMBOLS);
        // SAFETY: the three symbols bound the global_asm block above, which
        // lies in the kernel's mapped, readable text.
        let code = unsafe { core::slice::from_raw_parts(start as *const u8, code_len) };
        put(&mut b, CODE, code);
        Vdso {
            image: b,
            data: CODE + (data - start),
        }
    }

    /// Where the image is (AT_SYSINFO_EHDR).
    pub fn addr(&self) -> u64 {
        self.image.as_ptr() as u64
    }

    /// Publishes the time of a sync call and resets the read counter.
    pub fn publish(&mut self, realtime_ns: u64, monotonic_ns: u64) {
        let words = [
            0,
            realtime_ns / 1_000_000_000,
            realtime_ns % 1_000_000_000,
            monotonic_ns / 1_000_000_000,
            monotonic_ns % 1_000_000_000,
        ];
        for (i, w) in words.iter().enumerate() {
            let at = self.data + 8 * i;
            self.image[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
}
