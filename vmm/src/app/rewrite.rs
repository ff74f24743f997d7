//! Which of an app's `syscall` instructions become `call rax`
//! (`lockstep_guest_abi::syscall_rewrite`), and the patch itself.
//!
//! The `call` stores its return address at RSP − 8. The x86-64 ABI lets a
//! function keep data in the 128 bytes below RSP (the red zone) across
//! inline assembly, so a site is rewritten only when the function around it
//! shows no sign of using that area: no memory operand at a negative
//! displacement from RSP or RBP (RBP covers a frame pointer equal to RSP),
//! and no copy of RSP into another register (a pointer below RSP could be
//! made from it). A function that fails this keeps every `SYSCALL`; the
//! check is conservative, not a proof about what a function might do with
//! a pointer it was given, which is why [`KEEP`] exists too.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

/// Functions whose `syscall`s are never rewritten, by name: `__unmapself`
/// (musl) unmaps the stack it runs on with its first system call and exits
/// with its second, whose `call` would store into memory that may already
/// belong to someone else.
pub const KEEP: [&str; 1] = ["__unmapself"];

/// What one function's decoding found about its system calls.
#[derive(Debug, Default)]
pub struct Sites {
    /// Addresses of the `syscall` instructions.
    pub syscalls: Vec<u64>,
    /// Whether the function may use the red zone (then none is rewritten).
    pub red_zone: bool,
}

impl Sites {
    /// Looks at one decoded instruction of the function.
    pub fn see(&mut self, insn: &Instruction) {
        if insn.code() == Code::Syscall {
            self.syscalls.push(insn.ip());
        }
        if !self.red_zone && may_use_red_zone(insn) {
            self.red_zone = true;
        }
    }

    /// The sites to rewrite, for a function called `name`.
    pub fn rewritable(&self, name: Option<&str>) -> &[u64] {
        if self.red_zone || name.is_some_and(|n| KEEP.contains(&n)) {
            return &[];
        }
        &self.syscalls
    }
}

fn may_use_red_zone(insn: &Instruction) -> bool {
    let stack_base = matches!(insn.memory_base(), Register::RSP | Register::RBP);
    let has_memory = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    if has_memory && stack_base && (insn.memory_displacement64() as i64) < 0 {
        return true;
    }
    // RSP read as a source into anything but RSP itself or the frame
    // pointer (whose negative offsets the rule above already catches).
    let dest =
        (insn.op_count() > 0 && insn.op0_kind() == OpKind::Register).then(|| insn.op0_register());
    let reads_rsp = (1..insn.op_count())
        .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i) == Register::RSP);
    let fine_dest = matches!(dest, Some(Register::RSP | Register::RBP));
    let swaps_rsp = insn.mnemonic() == Mnemonic::Xchg
        && (0..insn.op_count())
            .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i) == Register::RSP);
    reads_rsp && !fine_dest || swaps_rsp
}

/// Why a site could not be patched.
#[derive(Debug, thiserror::Error)]
#[error("no `syscall` at file offset {offset:#x}")]
pub struct NotASyscall {
    pub offset: u64,
}

/// Writes `call rax` over the `syscall` at each file offset of `elf`.
pub fn patch(elf: &mut [u8], offsets: &[u64]) -> Result<(), NotASyscall> {
    use lockstep_guest_abi::syscall_rewrite::{CALL_RAX_BYTES, SYSCALL_BYTES};
    for &offset in offsets {
        let at = usize::try_from(offset)
            .ok()
            .filter(|o| o.checked_add(2).is_some_and(|end| end <= elf.len()))
            .ok_or(NotASyscall { offset })?;
        if elf[at..at + 2] != SYSCALL_BYTES {
            return Err(NotASyscall { offset });
        }
        elf[at..at + 2].copy_from_slice(&CALL_RAX_BYTES);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn sites(code: &[u8]) -> Sites {
        let mut s = Sites::default();
        let mut d = Decoder::with_ip(64, code, 0x1000, DecoderOptions::NONE);
        while d.can_decode() {
            s.see(&d.decode());
        }
        s
    }

    #[test]
    fn a_function_that_may_keep_data_below_rsp_keeps_its_syscalls() {
        // mov eax, 39; syscall; ret
        let clean = sites(&[0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3]);
        assert_eq!(clean.rewritable(Some("getpid")), [0x1005]);
        assert!(clean.rewritable(Some("__unmapself")).is_empty());
        // mov [rsp-8], rdi; syscall
        let below = sites(&[0x48, 0x89, 0x7c, 0x24, 0xf8, 0x0f, 0x05]);
        assert!(below.red_zone);
        // mov [rbp-4], edi; syscall
        let frame = sites(&[0x89, 0x7d, 0xfc, 0x0f, 0x05]);
        assert!(frame.red_zone);
        // mov rax, rsp; syscall
        let copy = sites(&[0x48, 0x89, 0xe0, 0x0f, 0x05]);
        assert!(copy.red_zone);
        // xchg rsp, rax; syscall
        let swap = sites(&[0x48, 0x94, 0x0f, 0x05]);
        assert!(swap.red_zone);
        // mov r8, [rsp+8]; sub rsp, 16; mov rbp, rsp; syscall
        let above = sites(&[
            0x4c, 0x8b, 0x44, 0x24, 0x08, 0x48, 0x83, 0xec, 0x10, 0x48, 0x89, 0xe5, 0x0f, 0x05,
        ]);
        assert!(!above.red_zone);
        assert_eq!(above.rewritable(None), [0x100c]);
    }

    #[test]
    fn only_syscall_bytes_are_patched() {
        let mut elf = vec![0x90, 0x0f, 0x05, 0xc3];
        patch(&mut elf, &[1]).unwrap();
        assert_eq!(elf, [0x90, 0xff, 0xd0, 0xc3]);
        assert!(patch(&mut elf, &[1]).is_err(), "already patched");
        assert!(patch(&mut elf, &[3]).is_err(), "past the end");
        assert!(patch(&mut elf, &[u64::MAX]).is_err());
    }
}
