//! The `SYSCALL` path of the guest's Linux personality
//! (`docs/linux-personality.md`): LSTAR points at a three-instruction
//! ring-0 stub that hands the call to the personality at ring 3, so an
//! app's system call costs ~4 µs and no exit (ring 0 is emulated on this
//! host; see DESIGN.md §2). Every guest gets this set-up; a guest that
//! never executes `SYSCALL` never runs the stub.

use kvm_bindings::{CpuId, Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

use lockstep_guest_abi::linux as abi;

use super::tables::Blob;

/// Page-table flags of the stubs page: present, read-only, and
/// user-accessible. On this host's PVM the `SYSCALL` target runs in the
/// guest's supervisor mode at hardware ring 3 and fetches with user
/// permissions (measured: a user-mode #PF at LSTAR when the page was
/// supervisor-only, and CS reads 0x33 there); read-only keeps the stubs
/// tamper-proof on every host. Nothing on the page is secret.
pub const STUBS_PAGE_FLAGS: u64 = 1 | 4;

/// Why the syscall MSRs could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SyscallEntryError {
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of the {want} syscall MSRs (STAR, LSTAR, FMASK)")]
    MsrsRefused { set: usize, want: usize },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SyscallEntryError {
    move |source| SyscallEntryError::Kvm { what, source }
}

/// The stub's bytes, written after the fault stubs' page.
pub fn stub_blob() -> Blob {
    Blob {
        addr: abi::SYSCALL_STUB_ADDR,
        bytes: abi::syscall_stub().to_vec(),
    }
}

/// The MSRs that route `SYSCALL` to the stub.
pub fn msrs() -> [(u32, u64); 3] {
    [
        (abi::MSR_STAR, abi::STAR_VALUE),
        (abi::MSR_LSTAR, abi::SYSCALL_STUB_ADDR),
        (abi::MSR_FMASK, abi::FMASK_VALUE),
    ]
}

/// Whether KVM offers FSGSBASE (CPUID leaf 7, EBX bit 0).
pub fn has_fsgsbase(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 7 && e.index == 0 && e.ebx & 1 != 0)
}

/// Sets the syscall MSRs and, where KVM offers it, CR4.FSGSBASE (the
/// personality switches app threads' FS base with `WRFSBASE`).
pub fn configure(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), SyscallEntryError> {
    let entries: Vec<kvm_msr_entry> = msrs()
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let want = entries.len();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|_| SyscallEntryError::MsrsRefused { set: 0, want })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != want {
        return Err(SyscallEntryError::MsrsRefused { set, want });
    }
    if has_fsgsbase(cpuid) {
        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        sregs.cr4 |= abi::CR4_FSGSBASE;
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_lies_in_the_supervisor_stub_page_after_the_fault_stubs() {
        let blob = stub_blob();
        let page = lockstep_guest_abi::STUBS_ADDR;
        assert!(blob.addr >= page + 0x300, "after the fault stubs");
        assert!(blob.addr + blob.bytes.len() as u64 <= page + 0x1000);
        let lstar = msrs().iter().find(|m| m.0 == abi::MSR_LSTAR).map(|m| m.1);
        assert_eq!(lstar, Some(blob.addr));
    }
}
