//! KVM setup: the VM and its vCPU, guest memory, the kernel's ELF image,
//! the system tables the ring-3 guest needs (page tables, GDT, TSS, IDT with
//! ring-0 fault stubs), the `SYSCALL` entry the guest's Linux personality
//! uses, and the decoded report of a guest fault.

pub mod elf;
pub mod fault;
pub mod syscall_entry;
pub mod tables;
pub mod vm;
