//! KVM VM and vCPU setup, guest memory, ELF loading, exits.

pub mod elf;
pub mod exit;
pub mod fault;
pub mod runner;
pub mod syscall_entry;
pub mod tables;
pub mod vm;
