//! All port I/O of the guest, and nothing else: the three ports of
//! `lockstep_guest_abi::GUEST_PORTS` (sync, console, exit). Every `out` is
//! an exit to the VMM (~40 µs here), so callers batch.

use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use lockstep_guest_abi::{
    CONSOLE_MAX, ConsoleWrite, PORT_CONSOLE, PORT_EXIT, PORT_SYNC, SYNC_WAIT, SyncBlock,
};

/// 32-byte aligned so the 32-byte block never crosses a page (the ABI
/// requires it to stay within one page).
#[repr(C, align(32))]
struct SyncSlot(SyncBlock);

/// Only ever touched by `sync` (the guest is single-threaded, no interrupts).
static mut SYNC: SyncSlot = SyncSlot(SyncBlock {
    flags: 0,
    events: 0,
    deadline_ns: 0,
    now_ns: 0,
    reserved: 0,
});

#[repr(C, align(16))]
struct ConsoleSlot(ConsoleWrite);

static mut CONSOLE: ConsoleSlot = ConsoleSlot(ConsoleWrite { addr: 0, len: 0 });

/// What a sync call returned.
#[derive(Clone, Copy, Debug)]
pub struct Sync {
    /// `EV_*` bits.
    pub events: u32,
    /// Virtual time, ns since the Unix epoch.
    pub now_ns: u64,
}

/// `out dx, eax`.
///
/// # Safety
/// `port` must be one of the guest ports and `value` what the ABI expects
/// there (addresses must stay valid for the duration of the exit).
unsafe fn out32(port: u16, value: u32) {
    // SAFETY: the caller guarantees the port and value follow the ABI. The
    // asm is not `nomem`, so it is also a compiler barrier: the argument
    // block is written before and read after it.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags));
    }
}

/// Low 32 bits of an address: guest RAM lies below 4 GiB (`MAX_MEM`).
fn addr32<T>(p: *const T) -> u32 {
    p as usize as u32
}

/// The sync call: the VMM takes new ring entries, delivers pending inputs,
/// and (with `wait`) blocks until an input arrives or `deadline_ns` passes.
pub fn sync(wait: bool, deadline_ns: u64) -> Sync {
    // SAFETY: single-threaded guest without interrupts: nothing else
    // accesses SYNC. Volatile accesses keep the compiler from caching the
    // block across the exit in which the VMM rewrites it.
    unsafe {
        let b = addr_of_mut!(SYNC.0);
        write_volatile(addr_of_mut!((*b).flags), if wait { SYNC_WAIT } else { 0 });
        write_volatile(addr_of_mut!((*b).events), 0);
        write_volatile(addr_of_mut!((*b).deadline_ns), deadline_ns);
        out32(PORT_SYNC, addr32(b));
        Sync {
            events: read_volatile(addr_of!((*b).events)),
            now_ns: read_volatile(addr_of!((*b).now_ns)),
        }
    }
}

/// Writes bytes to the console, one exit per `CONSOLE_MAX` bytes.
pub fn console(bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_MAX as usize) {
        // SAFETY: single-threaded: nothing else touches CONSOLE; `chunk`
        // stays alive and unchanged during the exit that reads it.
        unsafe {
            let c = addr_of_mut!(CONSOLE.0);
            write_volatile(addr_of_mut!((*c).addr), chunk.as_ptr() as u64);
            write_volatile(addr_of_mut!((*c).len), chunk.len() as u64);
            out32(PORT_CONSOLE, addr32(c));
        }
    }
}

/// Stops the VM with `status`.
pub fn exit(status: u32) -> ! {
    // SAFETY: PORT_EXIT takes any status; the VMM does not resume us.
    unsafe { out32(PORT_EXIT, status) };
    // Never reached; if a VMM resumed us anyway, spin without exits.
    loop {
        core::hint::spin_loop();
    }
}
