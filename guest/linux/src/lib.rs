//! The guest's Linux personality as pure, deterministic logic
//! (`docs/linux-personality.md`): no I/O, no clock, no randomness of its
//! own. The guest kernel drives it with the disk and the sync call's time;
//! the host runs its unit tests.
//!
//! * [`fs`]: the file system on the virtio disk, durable at `fsync`;
//! * [`elf`]: reading a static ELF's program headers (hostile input);
//! * [`stack`]: the initial stack (argv, envp, auxv);
//! * [`space`]: the app's address space (brk and mmap bookkeeping).
#![no_std]

extern crate alloc;

pub mod elf;
pub mod fs;
pub mod space;
pub mod stack;
