//! System calls without ring 0: the app's `syscall` instructions (`0f 05`)
//! are rewritten by the VMM, before the program reaches the disk, to
//! `call rax` (`ff d0`, the same two bytes' length). RAX holds the call's
//! number, so the `call` lands in the trampoline page at virtual address 0:
//! a run of `nop`s that slides to a jump to the personality's ring-3 entry.
//! The whole trip stays at ring 3, where this host runs natively; the
//! `SYSCALL` path goes through an emulated ring-0 stub and costs 4–22 µs
//! here (`docs/linux-personality.md`, "System calls by call").
//!
//! The `call` pushes its return address at RSP − 8, in the x86-64 red
//! zone, so the VMM rewrites only sites whose function provably keeps
//! nothing there; every other site keeps its `SYSCALL` and works as before.
//! The trampoline page is mapped user, read-only, for every guest whose
//! command line runs an app ([`maps_trampoline`]), with or without the
//! rewrite: an app installed on the disk earlier keeps the bytes it was
//! installed with.

use crate::linux::SYSCALL_FRAME_ADDR;

/// The boot word that keeps every `syscall` of an app as it is when the
/// VMM installs it (the comparison the app bench makes; the default
/// rewrites).
pub const SYSCALLS_TRAP_WORD: &str = "syscalls=trap";

/// The slot the trampoline jumps through: the personality's ring-3 entry
/// for a rewritten call, written by the guest next to its `SYSCALL` frame.
pub const CALL_ENTRY_SLOT: u64 = SYSCALL_FRAME_ADDR + 0x38;

/// The personality's stack top, word 3 of the `SYSCALL` frame (the frame's
/// RSP), which the call entry switches to as the ring-0 stub's `iretq` does.
pub const STACK_TOP_SLOT: u64 = SYSCALL_FRAME_ADDR + 0x18;

/// System call numbers below this slide down the trampoline; a rewritten
/// site called with a larger one faults at that address (Linux has ~460).
pub const TRAMPOLINE_NOPS: usize = 0xf00;

/// Whether the guest on `cmdline` runs an app, and so gets the trampoline
/// page.
pub fn maps_trampoline(cmdline: &str) -> bool {
    has_word(cmdline, "workload=app")
}

/// Whether `cmdline` asks the VMM to leave the app's `syscall`
/// instructions alone.
pub fn traps_syscalls(cmdline: &str) -> bool {
    has_word(cmdline, SYSCALLS_TRAP_WORD)
}

fn has_word(cmdline: &str, word: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == word)
}

/// The trampoline page: `nop` × [`TRAMPOLINE_NOPS`], then
/// `jmp qword ptr [CALL_ENTRY_SLOT]`, the rest `int3`.
pub const fn trampoline() -> [u8; 4096] {
    let mut page = [0xccu8; 4096];
    let mut i = 0;
    while i < TRAMPOLINE_NOPS {
        page[i] = 0x90;
        i += 1;
    }
    let slot = (CALL_ENTRY_SLOT as u32).to_le_bytes();
    let jmp = [0xff, 0x24, 0x25, slot[0], slot[1], slot[2], slot[3]];
    let mut j = 0;
    while j < jmp.len() {
        page[TRAMPOLINE_NOPS + j] = jmp[j];
        j += 1;
    }
    page
}

/// The instruction the VMM looks for, and what it writes in its place.
pub const SYSCALL_BYTES: [u8; 2] = [0x0f, 0x05];
pub const CALL_RAX_BYTES: [u8; 2] = [0xff, 0xd0];

const _: () = assert!(CALL_ENTRY_SLOT + 8 <= crate::BOOT_PARAMS_ADDR + 0x1000);
const _: () = assert!(CALL_ENTRY_SLOT >= crate::linux::SYSCALL_RSP_SLOT + 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_and_the_workload_decide() {
        assert!(maps_trampoline("workload=app app=1234abcd ip=10.0.0.2/24"));
        assert!(maps_trampoline("workload=app app=1 syscalls=trap"));
        assert!(!maps_trampoline("workload=kv ip=10.0.0.2/24"));
        assert!(!maps_trampoline("workload=application"));
        assert!(traps_syscalls("x syscalls=trap"));
        assert!(!traps_syscalls("x syscalls=trapped"));
    }

    #[test]
    fn every_number_below_the_limit_slides_to_the_jump() {
        let page = trampoline();
        assert!(page[..TRAMPOLINE_NOPS].iter().all(|b| *b == 0x90));
        assert_eq!(
            page[TRAMPOLINE_NOPS..TRAMPOLINE_NOPS + 3],
            [0xff, 0x24, 0x25]
        );
        let slot = u32::from_le_bytes(
            page[TRAMPOLINE_NOPS + 3..TRAMPOLINE_NOPS + 7]
                .try_into()
                .unwrap(),
        );
        assert_eq!(u64::from(slot), CALL_ENTRY_SLOT);
        assert_eq!(page[TRAMPOLINE_NOPS + 7], 0xcc);
    }
}
