//! The lockstep guest ABI, version 1: everything the VMM and the ring-3 guest
//! agree on — memory layout, I/O ports, the sync call, the console, the boot
//! parameters. `docs/guest-abi.md` explains it in prose; this crate is the
//! single source of the numbers, compiled into both sides.
//!
//! Guest physical addresses equal guest virtual addresses (identity map).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod linux;
pub mod syscall_rewrite;

/// Bumped whenever a layout, port or structure below changes meaning.
pub const ABI_VERSION: u32 = 1;

/// `BootParams::magic`: "LOCKSTEP" little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"LOCKSTEP");

// ---------------------------------------------------------------------------
// Memory layout. Everything below `USER_BASE` except the boot parameters page
// is mapped supervisor-only: the guest can neither read nor corrupt its own
// page tables, descriptor tables or fault stubs.
// ---------------------------------------------------------------------------

/// PML4 (one page).
pub const PML4_ADDR: u64 = 0x1000;
/// PDPT covering 0..512 GiB (one page).
pub const PDPT_ADDR: u64 = 0x2000;
/// Four page directories covering 0..4 GiB with 2 MiB pages (four pages).
pub const PD_ADDR: u64 = 0x3000;
/// Page table with 4 KiB pages for the first 2 MiB (one page).
pub const PT_LOW_ADDR: u64 = 0x7000;
/// GDT (one page).
pub const GDT_ADDR: u64 = 0x8000;
/// IDT: 256 gates of 16 bytes (one page).
pub const IDT_ADDR: u64 = 0x9000;
/// 64-bit TSS followed by its I/O permission bitmap (three pages).
pub const TSS_ADDR: u64 = 0xA000;
/// Ring-0 fault stubs, written by the VMM (one page).
pub const STUBS_ADDR: u64 = 0xD000;
/// Top of the ring-0 stack the CPU switches to on a fault (TSS.RSP0).
pub const RING0_STACK_TOP: u64 = 0x10000;
/// Boot parameters page: readable and writable by the guest.
pub const BOOT_PARAMS_ADDR: u64 = 0x10000;
/// First guest-usable address below the kernel image (scratch, user pages).
pub const USER_LOW: u64 = 0x11000;
/// The guest ELF is linked at and above this address.
pub const KERNEL_BASE: u64 = 0x20_0000;
/// Guest RAM ends below this address; MMIO windows live above it.
pub const MAX_MEM: u64 = 0xC000_0000;
/// Smallest guest RAM the VMM accepts.
pub const MIN_MEM: u64 = 16 << 20;

/// Base of the virtio-mmio windows (mapped user-accessible, no RAM behind
/// them, so every access is an MMIO exit).
pub const MMIO_BASE: u64 = 0xC000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// virtio-net window.
pub const MMIO_NET: u64 = MMIO_BASE;
/// virtio-blk window.
pub const MMIO_BLK: u64 = MMIO_BASE + MMIO_WINDOW;

// ---------------------------------------------------------------------------
// Segments (GDT selectors).
// ---------------------------------------------------------------------------

/// Ring-0 code segment selector.
pub const SEL_KERNEL_CODE: u16 = 0x10;
/// Ring-0 data segment selector.
pub const SEL_KERNEL_DATA: u16 = 0x18;
/// Ring-3 data segment selector (RPL 3).
pub const SEL_USER_DATA: u16 = 0x23;
/// Ring-3 code segment selector (RPL 3).
pub const SEL_USER_CODE: u16 = 0x2b;
/// TSS selector.
pub const SEL_TSS: u16 = 0x30;

// ---------------------------------------------------------------------------
// I/O ports. The TSS I/O permission bitmap grants ring 3 exactly the ports
// `PORT_SYNC..=PORT_EXIT`; `PORT_FAULT` is reachable from the ring-0 stubs
// only, so the guest cannot fake a fault report.
// ---------------------------------------------------------------------------

/// `out` (32-bit): EAX = guest physical address of a [`SyncBlock`].
pub const PORT_SYNC: u16 = 0x510;
/// `out` (32-bit): EAX = guest physical address of a [`ConsoleWrite`].
pub const PORT_CONSOLE: u16 = 0x511;
/// `out` (32-bit): EAX = exit status; the guest is finished and the VM stops.
pub const PORT_EXIT: u16 = 0x512;
/// `out` (32-bit) from the ring-0 fault stubs: EAX = vector. The stub's
/// stack then holds, from RSP upwards: saved RDX, saved RAX, vector, error
/// code (0 where the CPU pushes none), and the CPU's frame RIP, CS, RFLAGS,
/// RSP, SS.
pub const PORT_FAULT: u16 = 0x51f;

/// The ports ring 3 may use.
pub const GUEST_PORTS: [u16; 3] = [PORT_SYNC, PORT_CONSOLE, PORT_EXIT];

// ---------------------------------------------------------------------------
// The sync call.
// ---------------------------------------------------------------------------

/// `SyncBlock::flags`: block until an event arrives or `deadline_ns` passes.
pub const SYNC_WAIT: u32 = 1 << 0;

/// Event bit: the net RX queue has new used entries (frames received).
pub const EV_NET_RX: u32 = 1 << 0;
/// Event bit: the net TX queue has new used entries (frames sent).
pub const EV_NET_TX: u32 = 1 << 1;
/// Event bit: the blk queue has new used entries (requests completed).
pub const EV_BLK: u32 = 1 << 2;
/// Event bit: the wait's deadline has passed.
pub const EV_TIMER: u32 = 1 << 3;
/// Event bit: the VMM asks the guest to stop (e.g. SIGTERM on the host);
/// the guest should finish in-flight writes and call `PORT_EXIT`.
pub const EV_STOP: u32 = 1 << 4;

/// The argument block of one sync call. 16-byte aligned, never crossing a
/// page boundary. The guest fills `flags` and `deadline_ns`; the VMM fills
/// `events` and `now_ns` before the `out` instruction returns.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncBlock {
    /// In: `SYNC_WAIT` or 0.
    pub flags: u32,
    /// Out: `EV_*` bits of everything that happened since the last call.
    pub events: u32,
    /// In: virtual time (ns) at which a wait ends without an event.
    pub deadline_ns: u64,
    /// Out: virtual time (ns) at the end of this call.
    pub now_ns: u64,
    /// Reserved, zero.
    pub reserved: u64,
}

/// Size of [`SyncBlock`] in guest memory.
pub const SYNC_BLOCK_SIZE: usize = 32;

// ---------------------------------------------------------------------------
// The console.
// ---------------------------------------------------------------------------

/// One console write: `len` bytes at guest address `addr`, all in one exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleWrite {
    /// Guest address of the bytes.
    pub addr: u64,
    /// Number of bytes; at most [`CONSOLE_MAX`].
    pub len: u64,
}

/// Largest console write the VMM accepts in one exit.
pub const CONSOLE_MAX: u64 = 64 * 1024;

// ---------------------------------------------------------------------------
// Boot parameters, at `BOOT_PARAMS_ADDR`; RDI holds that address at entry.
// ---------------------------------------------------------------------------

/// Length of [`BootParams::cmdline`].
pub const CMDLINE_MAX: usize = 512;

/// What the VMM tells the guest at boot. Everything the guest may vary on is
/// here (or arrives through a sync call), so two VMs given equal boot
/// parameters and equal inputs execute identically.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootParams {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<BootParams>()`.
    pub size: u32,
    /// Bytes of guest RAM, starting at 0.
    pub mem_size: u64,
    /// First free byte above the kernel image (page aligned).
    pub heap_start: u64,
    /// End of the heap (exclusive) = bottom of the guest stack.
    pub heap_end: u64,
    /// Top of the initial stack (exclusive). Entry RSP = `stack_top - 8`.
    pub stack_top: u64,
    /// Address of the virtio-net MMIO window, or 0.
    pub net_mmio: u64,
    /// Address of the virtio-blk MMIO window, or 0.
    pub blk_mmio: u64,
    /// Seed for the guest's pseudo-random numbers (TCP ISNs, ports). Chosen
    /// by the VMM at boot and recorded, so a replay sees the same value.
    pub seed: u64,
    /// Number of valid bytes in `cmdline`.
    pub cmdline_len: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Space-separated `key=value` words, e.g.
    /// `workload=kv ip=10.77.0.2/24 gw=10.77.0.1`.
    pub cmdline: [u8; CMDLINE_MAX],
}

impl BootParams {
    /// The command line as bytes.
    pub fn cmdline(&self) -> &[u8] {
        let n = (self.cmdline_len as usize).min(CMDLINE_MAX);
        &self.cmdline[..n]
    }

    /// The value of `key=` in the command line, if present.
    pub fn param(&self, key: &str) -> Option<&[u8]> {
        self.cmdline()
            .split(|b| *b == b' ')
            .filter_map(|w| {
                let eq = w.iter().position(|b| *b == b'=')?;
                (&w[..eq] == key.as_bytes()).then(|| &w[eq + 1..])
            })
            .next()
    }
}

impl Default for BootParams {
    fn default() -> Self {
        Self {
            magic: BOOT_MAGIC,
            abi_version: ABI_VERSION,
            size: core::mem::size_of::<BootParams>() as u32,
            mem_size: 0,
            heap_start: 0,
            heap_end: 0,
            stack_top: 0,
            net_mmio: 0,
            blk_mmio: 0,
            seed: 0,
            cmdline_len: 0,
            reserved: 0,
            cmdline: [0; CMDLINE_MAX],
        }
    }
}

/// Size of the initial stack the VMM reserves at the top of RAM.
pub const STACK_SIZE: u64 = 1 << 20;

const _: () = assert!(core::mem::size_of::<SyncBlock>() == SYNC_BLOCK_SIZE);
const _: () = assert!(core::mem::size_of::<ConsoleWrite>() == 16);
const _: () = assert!(core::mem::size_of::<BootParams>() == 80 + CMDLINE_MAX);
const _: () = assert!(TSS_ADDR + 104 + 8192 < STUBS_ADDR);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_by_key() {
        let mut p = BootParams::default();
        let line = b"workload=kv ip=10.77.0.2/24 gw=10.77.0.1";
        p.cmdline[..line.len()].copy_from_slice(line);
        p.cmdline_len = line.len() as u32;
        assert_eq!(p.param("ip"), Some(&b"10.77.0.2/24"[..]));
        assert_eq!(p.param("workload"), Some(&b"kv"[..]));
        assert_eq!(p.param("gw"), Some(&b"10.77.0.1"[..]));
        assert_eq!(p.param("missing"), None);
        p.cmdline_len = 10_000;
        assert!(p.param("ip").is_some(), "an oversized length is clamped");
    }
}
