//! lockstep's VMM: everything one VM needs, whether it runs alone, records,
//! replays, or is one side of a fault-tolerant pair (`lockstep-ft` adds the
//! pair on top; the `lockstep` binary adds the command line).
//!
//! Modules, each depending only on those listed before it
//! (docs/architecture.md has the picture):
//! * [`cpu`]: thread placement.
//! * [`kvm`]: the VM, guest memory, the kernel image, the system tables,
//!   the `SYSCALL` entry of the guest's Linux personality.
//! * [`app`]: a stock Linux program as the guest (`--app`): the admission
//!   check and the disk's app area.
//! * [`devices`]: the console, the sync call's clock, virtio-mmio around
//!   `blkio`/`netio`.
//! * [`snapshot`]: live clone — the vCPU, device and memory state a
//!   joining backup continues from, its wire format, dirty-page pre-copy.
//! * [`machine`]: the per-exit dispatch, the exit index (the replayable
//!   instruction point), the sync call's interface and state digests.
//! * [`vcpu`]: the `KVM_RUN` loop that feeds exits to the machine.
//! * [`replay`]: deterministic record and replay.
//! * [`spec`]: the guest configuration a replay must share.
//! * [`dataplane`]: the live sync call and the I/O thread behind it.

pub mod app;
pub mod cpu;
pub mod dataplane;
pub mod devices;
pub mod kvm;
pub mod machine;
pub mod replay;
pub mod snapshot;
pub mod spec;
pub mod vcpu;

/// The guest built from this repository (empty if the build embedded none).
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest.elf"));
