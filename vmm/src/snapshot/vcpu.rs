//! The vCPU's whole state as this VMM uses it: general registers, segment
//! and control registers, x87/SSE state and the MSRs the guest's
//! environment depends on. The guest runs at ring 3 with CR4.OSXSAVE clear
//! (no AVX state), takes no interrupts and has no APIC timer, so nothing
//! else of the vCPU changes while it runs (docs/join.md).

use kvm_bindings::{Msrs, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::SnapshotError;
use super::wire::{Reader, Writer};

/// MSRs captured, in order: the SYSCALL routing the VMM sets
/// (`kvm::syscall_entry`), and those ring-0 stubs or the guest could touch.
pub const MSRS: [u32; 5] = [
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
];

/// A captured vCPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// (index, value) of every MSR of [`MSRS`] KVM let us read.
    pub msrs: Vec<(u32, u64)>,
}

/// `kvm_fpu` without its padding, comparable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

impl VcpuState {
    /// Reads the vCPU (on the thread that runs it, between two `KVM_RUN`s).
    pub fn capture(vcpu: &VcpuFd) -> Result<VcpuState, SnapshotError> {
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let f = vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?;
        let entries: Vec<kvm_msr_entry> = MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Bad {
            what: "vCPU",
            why: "too many MSRs".into(),
        })?;
        // KVM reads MSRs in order and stops at the first it does not know.
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        let msrs = msrs.as_slice()[..read.min(MSRS.len())]
            .iter()
            .map(|e| (e.index, e.data))
            .collect();
        Ok(VcpuState {
            regs,
            sregs,
            fpu: FpuState {
                fpr: f.fpr,
                fcw: f.fcw,
                fsw: f.fsw,
                ftwx: f.ftwx,
                last_opcode: f.last_opcode,
                last_ip: f.last_ip,
                last_dp: f.last_dp,
                xmm: f.xmm,
                mxcsr: f.mxcsr,
            },
            msrs,
        })
    }

    /// Writes the state into a vCPU that has not run yet (the joiner's).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Bad {
            what: "vCPU",
            why: "too many MSRs".into(),
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(SnapshotError::Bad {
                what: "vCPU",
                why: format!("KVM set {set} of {} MSRs", entries.len()),
            });
        }
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        let f = &self.fpu;
        let fpu = kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        Ok(())
    }

    /// The vCPU block of a `State` message.
    pub fn encode(&self, w: &mut Writer) {
        let r = &self.regs;
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ] {
            w.u64(v);
        }
        let s = &self.sregs;
        for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
            w.u64(seg.base).u32(seg.limit).u16(seg.selector);
            for b in [
                seg.type_,
                seg.present,
                seg.dpl,
                seg.db,
                seg.s,
                seg.l,
                seg.g,
                seg.avl,
                seg.unusable,
            ] {
                w.u8(b);
            }
            w.u8(0);
        }
        for t in [&s.gdt, &s.idt] {
            w.u64(t.base).u16(t.limit);
        }
        for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base] {
            w.u64(v);
        }
        for v in s.interrupt_bitmap {
            w.u64(v);
        }
        let f = &self.fpu;
        for reg in &f.fpr {
            w.bytes(reg);
        }
        w.u16(f.fcw)
            .u16(f.fsw)
            .u8(f.ftwx)
            .u8(0)
            .u16(f.last_opcode)
            .u64(f.last_ip)
            .u64(f.last_dp);
        for reg in &f.xmm {
            w.bytes(reg);
        }
        w.u32(f.mxcsr);
        w.u32(self.msrs.len() as u32);
        for &(index, value) in &self.msrs {
            w.u32(index).u64(value);
        }
    }

    /// Reads the vCPU block; every value is as the primary's KVM read it,
    /// and KVM checks them again when the joiner sets them.
    pub fn decode(r: &mut Reader<'_>) -> Result<VcpuState, SnapshotError> {
        let mut g = [0u64; 18];
        for v in &mut g {
            *v = r.u64()?;
        }
        let regs = kvm_regs {
            rax: g[0],
            rbx: g[1],
            rcx: g[2],
            rdx: g[3],
            rsi: g[4],
            rdi: g[5],
            rsp: g[6],
            rbp: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: g[16],
            rflags: g[17],
        };
        let mut segs = [kvm_segment::default(); 8];
        for seg in &mut segs {
            seg.base = r.u64()?;
            seg.limit = r.u32()?;
            seg.selector = r.u16()?;
            let b: [u8; 9] = r.array()?;
            seg.type_ = b[0];
            seg.present = b[1];
            seg.dpl = b[2];
            seg.db = b[3];
            seg.s = b[4];
            seg.l = b[5];
            seg.g = b[6];
            seg.avl = b[7];
            seg.unusable = b[8];
            r.reserved(1)?;
        }
        let mut table = || -> Result<kvm_dtable, SnapshotError> {
            Ok(kvm_dtable {
                base: r.u64()?,
                limit: r.u16()?,
                ..Default::default()
            })
        };
        let gdt = table()?;
        let idt = table()?;
        let mut c = [0u64; 7];
        for v in &mut c {
            *v = r.u64()?;
        }
        let mut interrupt_bitmap = [0u64; 4];
        for v in &mut interrupt_bitmap {
            *v = r.u64()?;
        }
        let [cs, ds, es, fs, gs, ss, tr, ldt] = segs;
        let sregs = kvm_sregs {
            cs,
            ds,
            es,
            fs,
            gs,
            ss,
            tr,
            ldt,
            gdt,
            idt,
            cr0: c[0],
            cr2: c[1],
            cr3: c[2],
            cr4: c[3],
            cr8: c[4],
            efer: c[5],
            apic_base: c[6],
            interrupt_bitmap,
        };
        let mut fpu = FpuState::default();
        for reg in &mut fpu.fpr {
            *reg = r.array()?;
        }
        fpu.fcw = r.u16()?;
        fpu.fsw = r.u16()?;
        fpu.ftwx = r.u8()?;
        r.reserved(1)?;
        fpu.last_opcode = r.u16()?;
        fpu.last_ip = r.u64()?;
        fpu.last_dp = r.u64()?;
        for reg in &mut fpu.xmm {
            *reg = r.array()?;
        }
        fpu.mxcsr = r.u32()?;
        let n = r.u32()? as usize;
        if n > MSRS.len() {
            return Err(SnapshotError::Bad {
                what: "vCPU",
                why: format!("{n} MSRs, at most {} are defined", MSRS.len()),
            });
        }
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            let index = r.u32()?;
            if !MSRS.contains(&index) {
                return Err(SnapshotError::Bad {
                    what: "vCPU",
                    why: format!("MSR {index:#x} is not one a join carries"),
                });
            }
            msrs.push((index, r.u64()?));
        }
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            msrs,
        })
    }
}

/// The vCPU as the machine lends it to a join point: the machine knows
/// nothing of KVM, the runner passes its `VcpuFd`.
pub trait VcpuAccess {
    fn capture_state(&self) -> Result<VcpuState, SnapshotError>;
}

impl VcpuAccess for VcpuFd {
    fn capture_state(&self) -> Result<VcpuState, SnapshotError> {
        VcpuState::capture(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vcpu_block_round_trips_and_refuses_foreign_msrs() {
        let mut s = VcpuState::default();
        s.regs.rip = 0x40_1000;
        s.regs.rflags = 0x202;
        s.sregs.cs.selector = 0x2b;
        s.sregs.cs.l = 1;
        s.sregs.gdt.limit = 0x3f;
        s.sregs.cr3 = 0x1000;
        s.fpu.mxcsr = 0x1f80;
        s.fpu.xmm[3] = [7; 16];
        s.msrs = vec![(MSRS[1], 0xdead)];
        let mut w = Writer::default();
        s.encode(&mut w);
        let mut r = Reader::new(&w.buf, "vCPU");
        assert_eq!(VcpuState::decode(&mut r).unwrap(), s);
        r.finish().unwrap();
        // Cut anywhere: an error, never a panic.
        for cut in 0..w.buf.len() {
            assert!(VcpuState::decode(&mut Reader::new(&w.buf[..cut], "vCPU")).is_err());
        }
        let mut foreign = s.clone();
        foreign.msrs = vec![(0x10, 1)];
        let mut w = Writer::default();
        foreign.encode(&mut w);
        assert!(VcpuState::decode(&mut Reader::new(&w.buf, "vCPU")).is_err());
    }
}
