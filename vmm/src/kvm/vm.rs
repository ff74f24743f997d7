//! The KVM VM: guest RAM, the ring-3 boot environment, one vCPU.

use std::io;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use lockstep_guest_abi::{self as abi, BootParams};

use super::elf::{self, ElfError};
use super::tables;

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm)")]
    KvmMissing,
    #[error("no permission to open /dev/kvm: run as root or join the group that owns it")]
    KvmDenied,
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] io::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    KvmVersion(i32),
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "guest memory of {mib} MiB is not usable: it must be a multiple of 2 MiB between {min} and {max} MiB"
    )]
    BadMemSize { mib: u64, min: u64, max: u64 },
    #[error("cannot allocate {mib} MiB of guest memory")]
    Alloc {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("kernel image")]
    Elf(#[from] ElfError),
    #[error(
        "kernel image leaves no room for a heap: it ends at {end:#x}, the stack starts at {stack:#x}"
    )]
    NoHeap { end: u64, stack: u64 },
    #[error("writing guest memory at {0:#x}")]
    Memory(u64),
    #[error("command line is {0} bytes; the ABI allows {max}", max = abi::CMDLINE_MAX)]
    CmdlineTooLong(usize),
    #[error("setting up the SYSCALL entry")]
    SyscallEntry(#[from] super::syscall_entry::SyscallEntryError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens /dev/kvm, turning the usual failures into advice.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmDenied,
        _ => VmError::KvmOpen(io::Error::from_raw_os_error(e.errno())),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::KvmVersion(version));
    }
    Ok(kvm)
}

/// What the guest is booted with.
pub struct VmConfig<'a> {
    pub mem_size: u64,
    pub kernel: &'a [u8],
    pub cmdline: String,
    pub seed: u64,
    pub net: bool,
    pub blk: bool,
}

/// A built VM, ready to run.
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestMemoryMmap,
    pub mem_size: u64,
    pub boot: BootParams,
    pub entry: u64,
}

/// Checks a memory size against the ABI's bounds.
pub fn check_mem_size(mem_size: u64) -> Result<(), VmError> {
    let ok = mem_size.is_multiple_of(2 << 20) && (abi::MIN_MEM..=abi::MAX_MEM).contains(&mem_size);
    if ok {
        Ok(())
    } else {
        Err(VmError::BadMemSize {
            mib: mem_size >> 20,
            min: abi::MIN_MEM >> 20,
            max: abi::MAX_MEM >> 20,
        })
    }
}

/// Builds the boot parameters for a kernel ending at `kernel_end`.
pub fn boot_params(cfg: &VmConfig<'_>, kernel_end: u64) -> Result<BootParams, VmError> {
    let stack_top = cfg.mem_size;
    let stack_bottom = stack_top - abi::STACK_SIZE;
    let heap_start = kernel_end.next_multiple_of(0x1000);
    if heap_start + (1 << 20) > stack_bottom {
        return Err(VmError::NoHeap {
            end: kernel_end,
            stack: stack_bottom,
        });
    }
    let line = cfg.cmdline.as_bytes();
    if line.len() > abi::CMDLINE_MAX {
        return Err(VmError::CmdlineTooLong(line.len()));
    }
    let mut boot = BootParams {
        mem_size: cfg.mem_size,
        heap_start,
        heap_end: stack_bottom,
        stack_top,
        net_mmio: if cfg.net { abi::MMIO_NET } else { 0 },
        blk_mmio: if cfg.blk { abi::MMIO_BLK } else { 0 },
        seed: cfg.seed,
        cmdline_len: line.len() as u32,
        ..BootParams::default()
    };
    boot.cmdline[..line.len()].copy_from_slice(line);
    Ok(boot)
}

/// The boot parameters as the bytes the guest sees.
pub fn boot_params_bytes(boot: &BootParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of::<BootParams>());
    out.extend_from_slice(&boot.magic.to_le_bytes());
    out.extend_from_slice(&boot.abi_version.to_le_bytes());
    out.extend_from_slice(&boot.size.to_le_bytes());
    for v in [
        boot.mem_size,
        boot.heap_start,
        boot.heap_end,
        boot.stack_top,
        boot.net_mmio,
        boot.blk_mmio,
        boot.seed,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&boot.cmdline_len.to_le_bytes());
    out.extend_from_slice(&boot.reserved.to_le_bytes());
    out.extend_from_slice(&boot.cmdline);
    out
}

impl Vm {
    /// Creates the VM, loads the kernel and builds its ring-3 environment.
    pub fn new(cfg: &VmConfig<'_>) -> Result<Vm, VmError> {
        check_mem_size(cfg.mem_size)?;
        let image = elf::parse(cfg.kernel, cfg.mem_size, abi::STACK_SIZE)?;
        let boot = boot_params(cfg, image.end)?;

        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), cfg.mem_size as usize)])
            .map_err(|source| VmError::Alloc {
            mib: cfg.mem_size >> 20,
            source,
        })?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|_| VmError::Memory(0))?;
        // Transparent huge pages: fewer TLB misses for the guest, and a
        // read of untouched RAM (a memory digest) maps the huge zero page
        // instead of faulting in every 4 KiB page. Advice only.
        // SAFETY: madvise on the mapping `mem` owns; it changes no contents.
        unsafe {
            libc::madvise(host.cast(), cfg.mem_size as usize, libc::MADV_HUGEPAGE);
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: cfg.mem_size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a live mapping of `mem_size` bytes
        // owned by `mem`, which lives in the returned `Vm` as long as `fd`.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

        let write = |addr: u64, bytes: &[u8]| {
            mem.write_slice(bytes, GuestAddress(addr))
                .map_err(|_| VmError::Memory(addr))
        };
        let trampoline = abi::syscall_rewrite::maps_trampoline(&cfg.cmdline);
        for blob in tables::system_tables(cfg.mem_size, trampoline) {
            write(blob.addr, &blob.bytes)?;
        }
        for seg in &image.segments {
            write(seg.addr, seg.data)?;
        }
        write(abi::BOOT_PARAMS_ADDR, &boot_params_bytes(&boot))?;

        let vcpu = fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let vm = Vm {
            kvm,
            fd,
            vcpu,
            mem,
            mem_size: cfg.mem_size,
            boot,
            entry: image.entry,
        };
        vm.reset_vcpu()?;
        super::syscall_entry::configure(&vm.vcpu, &cpuid)?;
        Ok(vm)
    }

    /// Puts the vCPU at the ring-3 entry point with the boot register state.
    fn reset_vcpu(&self) -> Result<(), VmError> {
        let mut sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let user = |selector: u16, code: bool| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_: if code { 11 } else { 3 },
            present: 1,
            dpl: 3,
            db: u8::from(!code),
            s: 1,
            l: u8::from(code),
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = user(abi::SEL_USER_CODE, true);
        let data = user(abi::SEL_USER_DATA, false);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = abi::GDT_ADDR;
        sregs.gdt.limit = tables::GDT_LIMIT;
        sregs.idt.base = abi::IDT_ADDR;
        sregs.idt.limit = 256 * 16 - 1;
        sregs.tr = kvm_segment {
            base: abi::TSS_ADDR,
            limit: tables::TSS_LIMIT as u32,
            selector: abi::SEL_TSS,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        sregs.cr3 = abi::PML4_ADDR;
        // PG | AM | WP | NE | ET | MP | PE: MP with OSFXSR lets ring 3 use SSE.
        sregs.cr0 = 0x8005_0033;
        // PAE | OSFXSR | OSXMMEXCPT.
        sregs.cr4 = 0x620;
        // SCE | LME | LMA | NXE.
        sregs.efer = 0xd01;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
        let regs = kvm_regs {
            rip: self.entry,
            // As if `call` had pushed a return address: the SysV ABI entry state.
            rsp: self.boot.stack_top - 8,
            rdi: abi::BOOT_PARAMS_ADDR,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_are_checked() {
        assert!(check_mem_size(256 << 20).is_ok());
        assert!(check_mem_size(abi::MIN_MEM).is_ok());
        assert!(check_mem_size((256 << 20) + 4096).is_err());
        assert!(check_mem_size(8 << 20).is_err());
        assert!(check_mem_size(4 << 30).is_err());
    }

    #[test]
    fn boot_params_bytes_match_the_abi_struct() {
        let cfg = VmConfig {
            mem_size: 64 << 20,
            kernel: &[],
            cmdline: "workload=kv ip=10.77.0.2/24".into(),
            seed: 7,
            net: true,
            blk: false,
        };
        let boot = boot_params(&cfg, abi::KERNEL_BASE + 0x1234).unwrap();
        assert_eq!(boot.heap_start, abi::KERNEL_BASE + 0x2000);
        assert_eq!(boot.heap_end, (64 << 20) - abi::STACK_SIZE);
        assert_eq!(boot.blk_mmio, 0);
        let bytes = boot_params_bytes(&boot);
        assert_eq!(bytes.len(), std::mem::size_of::<BootParams>());
        // SAFETY: BootParams is repr(C) plain data of exactly this size.
        let back: BootParams = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(back.param("ip"), Some(&b"10.77.0.2/24"[..]));
        assert_eq!(back.seed, 7);
        assert_eq!(back.net_mmio, abi::MMIO_NET);
        let long = VmConfig {
            cmdline: "x".repeat(abi::CMDLINE_MAX + 1),
            ..cfg
        };
        assert!(matches!(
            boot_params(&long, abi::KERNEL_BASE),
            Err(VmError::CmdlineTooLong(_))
        ));
    }
}
