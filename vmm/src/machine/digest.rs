//! State digests: the registers and a hash of guest memory, compared between
//! a recording and its replay to catch divergence early.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use logchan::DIGEST_REGS;

/// Where a digest's values come from.
pub trait Digester {
    /// rax rbx rcx rdx rsi rdi rsp rbp r8–r15 rip rflags.
    fn regs(&mut self) -> [u64; DIGEST_REGS];
    /// xxh3 of all of guest RAM.
    fn mem_hash(&mut self) -> u64;
}

/// Where the registers of a digest come from.
pub trait RegsSource {
    fn digest_regs(&self) -> [u64; DIGEST_REGS];
}

/// Registers from a vCPU and guest RAM, read between two `KVM_RUN`s.
pub struct VmDigester<'a> {
    pub regs: &'a dyn RegsSource,
    pub mem: &'a GuestMemoryMmap,
}

impl Digester for VmDigester<'_> {
    fn regs(&mut self) -> [u64; DIGEST_REGS] {
        self.regs.digest_regs()
    }

    fn mem_hash(&mut self) -> u64 {
        guest_ram_hash(self.mem)
    }
}

/// Hashes guest RAM (one region from address 0).
pub fn guest_ram_hash(mem: &GuestMemoryMmap) -> u64 {
    let Some(region) = mem.iter().next() else {
        return 0;
    };
    let len = region.len() as usize;
    match mem.get_host_address(GuestAddress(0)) {
        // SAFETY: the region maps `len` bytes at this address for the life
        // of `mem`; the vCPU is not running (we are on its thread between
        // two KVM_RUNs) and no other thread writes guest memory, so the
        // bytes do not change while they are read.
        Ok(ptr) => logchan::mem_hash(unsafe { std::slice::from_raw_parts(ptr, len) }),
        Err(_) => 0,
    }
}

/// Register names in digest order, for divergence reports.
pub const REG_NAMES: [&str; DIGEST_REGS] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];
