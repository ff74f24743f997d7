//! The ring-3 side of a system call: the VMM's ring-0 stub (three
//! instructions, `lockstep_guest_abi::linux`) `iretq`s here on the
//! personality's stack with every app register as `SYSCALL` left it. The
//! entry saves them in a [`Frame`] (FXSAVE included: the personality's Rust
//! code uses SSE), calls [`super::syscall`], and returns to whichever
//! thread the frame then describes, ring 3 to ring 3: RFLAGS by `popfq`,
//! RSP by a load, RIP by `jmp rcx`. As after Linux's `sysret`, RCX holds
//! the return address and R11 the flags; every other register is the
//! thread's own. A system call the VMM rewrote to `call rax` comes in
//! through a second, ring-3-only door that joins the first.

use core::arch::global_asm;

use lockstep_guest_abi::linux::{SYSCALL_FRAME_ADDR, SYSCALL_RSP_SLOT};
use lockstep_guest_abi::syscall_rewrite::{CALL_ENTRY_SLOT, STACK_TOP_SLOT};
use lockstep_guest_abi::{SEL_USER_CODE, SEL_USER_DATA};

/// An app thread's registers while it is not running.
#[repr(C, align(16))]
#[derive(Clone)]
pub struct Frame {
    /// FXSAVE64 image: x87, MXCSR, XMM0-15.
    pub fx: [u8; 512],
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    /// R11 at `SYSCALL`.
    pub rflags: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    /// RCX at `SYSCALL`.
    pub rip: u64,
    pub rbx: u64,
    pub rax: u64,
    pub rsp: u64,
}

pub const FRAME_SIZE: usize = 640;
const _: () = assert!(core::mem::size_of::<Frame>() == FRAME_SIZE);

impl Frame {
    /// A thread about to start at `rip` with stack `rsp`: registers zero,
    /// the x87 and SSE control words at their reset values (an all-zero
    /// FXSAVE image would unmask every floating-point exception).
    pub fn new(rip: u64, rsp: u64) -> Frame {
        let mut fx = [0u8; 512];
        fx[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        Frame {
            fx,
            r15: 0,
            r14: 0,
            r13: 0,
            r12: 0,
            rflags: 0x202,
            r10: 0,
            r9: 0,
            r8: 0,
            rbp: 0,
            rdi: 0,
            rsi: 0,
            rdx: 0,
            rip,
            rbx: 0,
            rax: 0,
            rsp,
        }
    }

    /// System call argument `i` (0..6): RDI, RSI, RDX, R10, R8, R9.
    pub fn arg(&self, i: usize) -> u64 {
        match i {
            0 => self.rdi,
            1 => self.rsi,
            2 => self.rdx,
            3 => self.r10,
            4 => self.r8,
            _ => self.r9,
        }
    }
}

global_asm!(
    ".globl lockstep_syscall_entry",
    "lockstep_syscall_entry:",
    "sub rsp, 640",
    "fxsave64 [rsp]",
    "mov [rsp + 512], r15",
    "mov [rsp + 520], r14",
    "mov [rsp + 528], r13",
    "mov [rsp + 536], r12",
    "mov [rsp + 544], r11",
    "mov [rsp + 552], r10",
    "mov [rsp + 560], r9",
    "mov [rsp + 568], r8",
    "mov [rsp + 576], rbp",
    "mov [rsp + 584], rdi",
    "mov [rsp + 592], rsi",
    "mov [rsp + 600], rdx",
    "mov [rsp + 608], rcx",
    "mov [rsp + 616], rbx",
    "mov [rsp + 624], rax",
    "mov rax, qword ptr [{slot}]",
    "mov [rsp + 632], rax",
    "mov rdi, rsp",
    "cld",
    "call {handler}",
    ".globl lockstep_syscall_return",
    "lockstep_syscall_return:",
    "fxrstor64 [rsp]",
    "push qword ptr [rsp + 544]",
    "popfq",
    "mov r15, [rsp + 512]",
    "mov r14, [rsp + 520]",
    "mov r13, [rsp + 528]",
    "mov r12, [rsp + 536]",
    "mov r10, [rsp + 552]",
    "mov r9, [rsp + 560]",
    "mov r8, [rsp + 568]",
    "mov rbp, [rsp + 576]",
    "mov rdi, [rsp + 584]",
    "mov rsi, [rsp + 592]",
    "mov rdx, [rsp + 600]",
    "mov rbx, [rsp + 616]",
    "mov rax, [rsp + 624]",
    "mov r11, [rsp + 544]",
    "mov rcx, [rsp + 608]",
    "mov rsp, [rsp + 632]",
    "jmp rcx",
    slot = const SYSCALL_RSP_SLOT,
    handler = sym super::syscall,
);

// A rewritten system call (`call rax`, `lockstep_guest_abi::syscall_rewrite`)
// arrives here from the trampoline at ring 3 with RSP 8 below the app's and
// the return address on top. It leaves the registers as `SYSCALL` and the
// ring-0 stub would — RCX the return address, R11 the flags, the app's RSP
// in the slot, RSP the personality's stack top — and joins the entry above.
// RCX and R11 are free: `SYSCALL` clobbers them. `lea`, not `add`: the
// flags must reach R11 as the app left them.
global_asm!(
    ".globl lockstep_syscall_call_entry",
    "lockstep_syscall_call_entry:",
    "mov rcx, [rsp]",
    "lea r11, [rsp + 8]",
    "mov qword ptr [{slot}], r11",
    "mov rsp, qword ptr [{top}]",
    "pushfq",
    "pop r11",
    "add qword ptr [rip + lockstep_syscall_calls], 1",
    "push 2",
    "popfq",
    "jmp lockstep_syscall_entry",
    ".pushsection .data",
    ".balign 8",
    ".globl lockstep_syscall_calls",
    "lockstep_syscall_calls:",
    ".quad 0",
    ".popsection",
    slot = const SYSCALL_RSP_SLOT,
    top = const STACK_TOP_SLOT,
);

unsafe extern "C" {
    fn lockstep_syscall_entry();
    fn lockstep_syscall_return();
    fn lockstep_syscall_call_entry();
    static lockstep_syscall_calls: u64;
}

/// System calls that came by `call` rather than `SYSCALL`.
pub fn calls() -> u64 {
    // SAFETY: a plain aligned word, written only by the call entry on this
    // (the only) vCPU, never while this runs.
    unsafe { core::ptr::addr_of!(lockstep_syscall_calls).read_volatile() }
}

/// Points the VMM's stub and the trampoline at the entries: the
/// personality's stack is `[.., stack_top)`, and every system call starts
/// on it afresh.
pub fn install(stack_top: u64) {
    let frame = [
        lockstep_syscall_entry as *const () as u64,
        u64::from(SEL_USER_CODE),
        0x2,
        stack_top,
        u64::from(SEL_USER_DATA),
    ];
    for (i, v) in frame.iter().enumerate() {
        // SAFETY: the frame area lies in the boot parameters page, which
        // the VMM maps user-writable for the guest and nothing else uses.
        unsafe { ((SYSCALL_FRAME_ADDR as usize + 8 * i) as *mut u64).write_volatile(*v) };
    }
    let call_entry = lockstep_syscall_call_entry as *const () as u64;
    // SAFETY: as above; the slot follows the frame and the stub's RSP slot
    // (asserted in the ABI crate).
    unsafe { (CALL_ENTRY_SLOT as usize as *mut u64).write_volatile(call_entry) };
}

/// Starts the app: copies `frame` to the top of the personality stack
/// (where the entry keeps it) and returns to it as from a system call.
pub fn enter(stack_top: u64, frame: &Frame) -> ! {
    let at = (stack_top as usize - FRAME_SIZE) as *mut Frame;
    // SAFETY: the top FRAME_SIZE bytes of the personality stack are free
    // from here on (nothing below returns), 16-byte aligned (stack_top is
    // a 2 MiB boundary); the return path reads the frame and leaves ring 3
    // for the app without touching this stack again.
    unsafe {
        at.write(frame.clone());
        core::arch::asm!(
            "mov rsp, {f}",
            "jmp {ret}",
            f = in(reg) at,
            ret = sym lockstep_syscall_return,
            options(noreturn)
        );
    }
}
