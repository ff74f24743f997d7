//! The guest's ring-0 environment, built by the VMM before the first
//! instruction: page tables, GDT, TSS with its I/O permission bitmap, IDT and
//! the few ring-0 instructions that report a fault. Nothing here runs Rust at
//! ring 0: this host emulates ring 0 instruction by instruction and cannot
//! run SSE there (docs/architecture.md, "The guest"), so the stubs are
//! hand-assembled bytes.

use lockstep_guest_abi as abi;

const PAGE_4K: u64 = 0x1000;
const PAGE_2M: u64 = 0x20_0000;

// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

/// Size of the I/O permission bitmap: one bit per port for all 65,536 ports.
pub const IOPB_BYTES: u64 = 8192;
/// TSS limit: the 104-byte TSS, the bitmap and the trailing all-ones byte
/// the CPU may read past the last bitmap byte.
pub const TSS_LIMIT: u64 = 104 + IOPB_BYTES;

/// Vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
/// Each per-vector stub fits in this many bytes.
const STUB_STRIDE: u64 = 16;
/// Vectors 0..32 get their own stub; everything above shares one that
/// reports vector 255 (no interrupts exist, so reaching one is a bug).
const STUB_VECTORS: u64 = 32;
const GENERIC_STUB: u64 = abi::STUBS_ADDR + STUB_VECTORS * STUB_STRIDE;
const COMMON_STUB: u64 = GENERIC_STUB + STUB_STRIDE;

/// A write of `bytes` at guest physical `addr`.
pub struct Blob {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// Everything the VMM writes below `KERNEL_BASE`, as a list of writes, so the
/// layout is testable without guest memory. `trampoline`: the page at 0
/// holds the rewritten system calls' trampoline, user read-only
/// (`lockstep_guest_abi::syscall_rewrite`); otherwise it stays unmapped.
pub fn system_tables(mem_size: u64, trampoline: bool) -> Vec<Blob> {
    let mut blobs = vec![
        page_tables(mem_size, trampoline),
        Blob {
            addr: abi::GDT_ADDR,
            bytes: gdt(),
        },
        Blob {
            addr: abi::TSS_ADDR,
            bytes: tss(),
        },
        Blob {
            addr: abi::IDT_ADDR,
            bytes: idt(),
        },
        Blob {
            addr: abi::STUBS_ADDR,
            bytes: stubs(),
        },
        super::syscall_entry::stub_blob(),
    ];
    if trampoline {
        blobs.push(Blob {
            addr: 0,
            bytes: abi::syscall_rewrite::trampoline().to_vec(),
        });
    }
    blobs
}

/// GDT limit as loaded into GDTR.
pub const GDT_LIMIT: u16 = 8 * 8 - 1;

fn gdt() -> Vec<u8> {
    let mut entries = [0u64; 8];
    entries[(abi::SEL_KERNEL_CODE >> 3) as usize] = 0x00af_9b00_0000_ffff;
    entries[(abi::SEL_KERNEL_DATA >> 3) as usize] = 0x00cf_9300_0000_ffff;
    entries[(abi::SEL_USER_DATA >> 3) as usize] = 0x00cf_f300_0000_ffff;
    entries[(abi::SEL_USER_CODE >> 3) as usize] = 0x00af_fb00_0000_ffff;
    // 64-bit available TSS: a 16-byte descriptor.
    let base = abi::TSS_ADDR;
    let tss_index = (abi::SEL_TSS >> 3) as usize;
    entries[tss_index] = (TSS_LIMIT & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((TSS_LIMIT >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    entries[tss_index + 1] = base >> 32;
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn tss() -> Vec<u8> {
    let mut tss = vec![0u8; (TSS_LIMIT + 1) as usize];
    tss[4..12].copy_from_slice(&abi::RING0_STACK_TOP.to_le_bytes());
    tss[102..104].copy_from_slice(&104u16.to_le_bytes());
    // A set bit denies the port. IOPL is not kept by this host's KVM, so the
    // bitmap is what lets ring 3 reach its ports and nothing else.
    tss[104..].fill(0xff);
    for port in abi::GUEST_PORTS {
        let bit = port as usize;
        // 32-bit `out` checks the bits of all four bytes of the port range.
        for b in bit..bit + 4 {
            if b / 8 < IOPB_BYTES as usize {
                tss[104 + b / 8] &= !(1 << (b % 8));
            }
        }
    }
    tss
}

/// The ports whose 32-bit access ring 3 may make, as the bitmap grants them.
pub fn port_allowed(tss: &[u8], port: u16, width: u16) -> bool {
    (port as usize..port as usize + width as usize)
        .all(|b| b / 8 < IOPB_BYTES as usize && tss[104 + b / 8] & (1 << (b % 8)) == 0)
}

fn idt() -> Vec<u8> {
    let mut idt = Vec::with_capacity(256 * 16);
    for vector in 0..256u64 {
        let handler = if vector < STUB_VECTORS {
            abi::STUBS_ADDR + vector * STUB_STRIDE
        } else {
            GENERIC_STUB
        };
        // Interrupt gate, present, DPL 0: an `int n` from ring 3 becomes #GP,
        // which is reported like any other fault.
        let low = (handler & 0xffff)
            | ((abi::SEL_KERNEL_CODE as u64) << 16)
            | (0x8e << 40)
            | (((handler >> 16) & 0xffff) << 48);
        idt.extend_from_slice(&low.to_le_bytes());
        idt.extend_from_slice(&(handler >> 32).to_le_bytes());
    }
    idt
}

/// The stub for one vector: push a zero error code where the CPU pushes
/// none, push the vector, jump to the common tail.
fn vector_stub(vector: u8, at: u64) -> Vec<u8> {
    let mut code = Vec::with_capacity(STUB_STRIDE as usize);
    if !ERROR_CODE_VECTORS.contains(&vector) {
        code.extend_from_slice(&[0x6a, 0x00]); // push 0
    }
    code.push(0x68); // push imm32
    code.extend_from_slice(&(vector as u32).to_le_bytes());
    let next = at + code.len() as u64 + 5;
    let rel = COMMON_STUB as i64 - next as i64;
    code.push(0xe9); // jmp rel32
    code.extend_from_slice(&(rel as i32).to_le_bytes());
    code.resize(STUB_STRIDE as usize, 0xcc);
    code
}

fn stubs() -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_4K as usize);
    for vector in 0..STUB_VECTORS {
        let at = abi::STUBS_ADDR + vector * STUB_STRIDE;
        page.extend(vector_stub(vector as u8, at));
    }
    page.extend(vector_stub(255, GENERIC_STUB));
    let port = abi::PORT_FAULT.to_le_bytes();
    page.extend_from_slice(&[
        0x50, // push rax
        0x52, // push rdx
        0x8b, 0x44, 0x24, 0x10, // mov eax, [rsp+16]   (the vector)
        0x66, 0xba, port[0], port[1], // mov dx, PORT_FAULT
        0xef,    // out dx, eax
        0xf4,    // hlt (never reached: the VMM stops at the out)
        0xeb, 0xfd, // jmp back to hlt
    ]);
    page.resize(PAGE_4K as usize, 0xcc);
    page
}

fn page_tables(mem_size: u64, trampoline: bool) -> Blob {
    let base = abi::PML4_ADDR;
    let mut pt = vec![0u8; (abi::PT_LOW_ADDR + PAGE_4K - base) as usize];
    let mut put = |addr: u64, value: u64| {
        let off = (addr - base) as usize;
        pt[off..off + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(abi::PML4_ADDR, abi::PDPT_ADDR | PRESENT | WRITABLE | USER);
    for i in 0..4 {
        put(
            abi::PDPT_ADDR + i * 8,
            (abi::PD_ADDR + i * PAGE_4K) | PRESENT | WRITABLE | USER,
        );
    }
    // First 2 MiB in 4 KiB pages: the null page stays unmapped unless it
    // holds the trampoline (read-only: a null store still faults), the
    // system pages are supervisor-only, the boot parameters page and above
    // are user.
    put(abi::PD_ADDR, abi::PT_LOW_ADDR | PRESENT | WRITABLE | USER);
    if trampoline {
        put(abi::PT_LOW_ADDR, PRESENT | USER);
    }
    for page in 1..PAGE_2M / PAGE_4K {
        let addr = page * PAGE_4K;
        let flags = if addr == abi::STUBS_ADDR {
            super::syscall_entry::STUBS_PAGE_FLAGS
        } else if addr < abi::BOOT_PARAMS_ADDR {
            PRESENT | WRITABLE
        } else {
            PRESENT | WRITABLE | USER
        };
        put(abi::PT_LOW_ADDR + page * 8, addr | flags);
    }
    // The rest of RAM in 2 MiB user pages; nothing past the end of RAM.
    for big in 1..mem_size / PAGE_2M {
        put(
            abi::PD_ADDR + big * 8,
            (big * PAGE_2M) | PRESENT | WRITABLE | USER | HUGE,
        );
    }
    // The MMIO windows: mapped, but with no memory slot behind them, so
    // each access leaves the guest as an MMIO exit.
    let mmio = abi::MMIO_BASE / PAGE_2M;
    put(
        abi::PD_ADDR + mmio * 8,
        (mmio * PAGE_2M) | PRESENT | WRITABLE | USER | HUGE,
    );
    Blob {
        addr: base,
        bytes: pt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_u64(blob: &Blob, addr: u64) -> u64 {
        let off = (addr - blob.addr) as usize;
        u64::from_le_bytes(blob.bytes[off..off + 8].try_into().unwrap())
    }

    /// Walks the tables like the MMU does and returns the flags of the leaf.
    fn walk(pt: &Blob, va: u64) -> Option<u64> {
        let pml4e = read_u64(pt, abi::PML4_ADDR + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = read_u64(pt, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read_u64(pt, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & HUGE != 0 {
            assert_eq!(pde & !0x1f_ffff & !(1 << 63), va & !0x1f_ffff, "identity");
            return Some(pde & 0xfff);
        }
        let pte = read_u64(pt, (pde & !0xfff) + ((va >> 12) & 511) * 8);
        if pte & PRESENT == 0 {
            return None;
        }
        assert_eq!(pte & !0xfff, va & !0xfff, "identity");
        Some(pte & 0xfff)
    }

    #[test]
    fn memory_map_protects_the_system_area() {
        let mem = 64 << 20;
        let pt = page_tables(mem, false);
        assert_eq!(walk(&pt, 0), None, "null page unmapped");
        let with_trampoline = page_tables(mem, true);
        assert_eq!(
            walk(&with_trampoline, 0),
            Some(PRESENT | USER),
            "user, read-only"
        );
        assert_eq!(walk(&with_trampoline, 0x1000), walk(&pt, 0x1000));
        for sys in [abi::GDT_ADDR, abi::IDT_ADDR, abi::TSS_ADDR] {
            let flags = walk(&pt, sys).expect("system page mapped");
            assert_eq!(flags & USER, 0, "{sys:#x} must be supervisor-only");
        }
        let stubs = walk(&pt, abi::STUBS_ADDR).expect("stubs mapped");
        assert_eq!(stubs & WRITABLE, 0, "the stubs are read-only");
        assert_ne!(walk(&pt, abi::BOOT_PARAMS_ADDR).unwrap() & USER, 0);
        assert_ne!(walk(&pt, abi::KERNEL_BASE).unwrap() & USER, 0);
        assert_ne!(walk(&pt, mem - 1).unwrap() & USER, 0);
        assert_eq!(walk(&pt, mem), None, "nothing past the end of RAM");
        assert_ne!(walk(&pt, abi::MMIO_NET).unwrap() & USER, 0);
        assert_ne!(walk(&pt, abi::MMIO_BLK).unwrap() & USER, 0);
    }

    #[test]
    fn io_bitmap_grants_exactly_the_guest_ports() {
        let tss = tss();
        for port in abi::GUEST_PORTS {
            assert!(port_allowed(&tss, port, 4), "{port:#x}");
        }
        assert!(!port_allowed(&tss, abi::PORT_FAULT, 4));
        assert!(!port_allowed(&tss, 0x3f8, 1));
        assert!(!port_allowed(&tss, 0x80, 1));
        let open = (0..=u16::MAX).filter(|p| port_allowed(&tss, *p, 1)).count();
        assert_eq!(
            open,
            abi::GUEST_PORTS.len() + 3,
            "ports plus the bytes of the last 32-bit one"
        );
        assert_eq!(*tss.last().unwrap(), 0xff, "trailing byte of the bitmap");
    }

    #[test]
    fn stubs_push_a_uniform_frame() {
        let page = stubs();
        for v in 0..STUB_VECTORS as u8 {
            let s = &page[v as usize * 16..][..16];
            let with_code = ERROR_CODE_VECTORS.contains(&v);
            let push_vec = if with_code { 0 } else { 2 };
            assert_eq!(with_code, s[0] != 0x6a, "vector {v}");
            assert_eq!(s[push_vec], 0x68);
            assert_eq!(
                u32::from_le_bytes(s[push_vec + 1..push_vec + 5].try_into().unwrap()),
                v as u32
            );
            let jmp = push_vec + 5;
            assert_eq!(s[jmp], 0xe9);
            let rel = i32::from_le_bytes(s[jmp + 1..jmp + 5].try_into().unwrap()) as i64;
            let target = abi::STUBS_ADDR as i64 + v as i64 * 16 + jmp as i64 + 5 + rel;
            assert_eq!(target as u64, COMMON_STUB);
        }
        let gate = &idt()[14 * 16..15 * 16];
        let low = u64::from_le_bytes(gate[..8].try_into().unwrap());
        let handler = (low & 0xffff) | ((low >> 32) & 0xffff_0000);
        assert_eq!(handler, abi::STUBS_ADDR + 14 * 16);
    }
}
