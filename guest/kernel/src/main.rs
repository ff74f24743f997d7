//! The lockstep guest: a `no_std` program that runs entirely at ring 3
//! inside lockstep's VM (see `docs/guest-services.md`). The VMM builds page
//! tables, GDT, TSS and IDT, and enters `_start` at ring 3 with RDI =
//! `&BootParams`. There are no interrupts: the guest is one event loop that
//! makes one sync call (an exit) per iteration.
//!
//! Determinism: no CPUID/RDTSC/RDRAND/…, no HLT; time comes only from sync
//! calls, randomness only from `BootParams::seed`.
#![no_std]
#![no_main]

extern crate alloc;

mod blk;
mod cmdline;
mod console;
mod devices;
mod hal;
mod heap;
mod kv;
mod linux;
mod net;
mod ports;
mod rt;
mod workloads;

use core::fmt::Write;
use core::ptr::{addr_of, read_volatile};

use lockstep_guest_abi::{ABI_VERSION, BOOT_MAGIC, BootParams};

use crate::cmdline::{Settings, Workload};
use crate::console::StackBuf;

/// Exit status for a boot-time configuration error.
pub const BAD_BOOT: u32 = 2;

/// The entry point: RDI = `&BootParams`, RSP ≡ 8 (mod 16) as after a call.
#[unsafe(no_mangle)]
pub extern "C" fn _start(bp: *const BootParams) -> ! {
    main(bp)
}

/// Validates the boot parameters' header before trusting the rest.
fn check_params(bp: *const BootParams) -> Result<&'static BootParams, &'static str> {
    if bp.is_null() || !(bp as usize).is_multiple_of(8) {
        return Err("bad BootParams address");
    }
    // SAFETY: the VMM maps the boot parameters page readable at this
    // address; the header fields are read before anything else is trusted.
    let (magic, version, size) = unsafe {
        (
            read_volatile(addr_of!((*bp).magic)),
            read_volatile(addr_of!((*bp).abi_version)),
            read_volatile(addr_of!((*bp).size)),
        )
    };
    if magic != BOOT_MAGIC {
        return Err("bad BootParams magic");
    }
    if version != ABI_VERSION {
        return Err("unsupported guest ABI version");
    }
    if size as usize != core::mem::size_of::<BootParams>() {
        return Err("BootParams size mismatch");
    }
    // SAFETY: magic, version and size match this build's BootParams; the
    // page stays mapped and is not changed by the VMM after boot.
    let p = unsafe { &*bp };
    if p.heap_start == 0 || p.heap_end <= p.heap_start {
        return Err("empty heap in BootParams");
    }
    Ok(p)
}

pub(crate) fn fail(msg: &str) -> ! {
    say!("lockstep guest: {msg}");
    ports::exit(BAD_BOOT)
}

/// "64MiB" / "512KiB" (rounded down).
pub struct Size(pub u64);

impl core::fmt::Display for Size {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 >= 1 << 20 {
            write!(f, "{}MiB", self.0 >> 20)
        } else {
            write!(f, "{}KiB", self.0 >> 10)
        }
    }
}

fn main(bp: *const BootParams) -> ! {
    let bp = check_params(bp).unwrap_or_else(|e| fail(e));
    if bp.param("workload") == Some(b"app") {
        // The lower half of RAM holds the app's image and brk area.
        heap::init(
            linux::heap_start(bp.mem_size).max(bp.heap_start),
            bp.heap_end,
        );
    } else {
        heap::init(bp.heap_start, bp.heap_end);
    }
    let settings: Settings = cmdline::parse(bp).unwrap_or_else(|e| fail(e));
    let first = ports::sync(false, 0);
    let w = settings.workload;

    // Devices the workload uses are opened (MMIO exits happen only here).
    let net = match (w, bp.net_mmio) {
        (Workload::Kv | Workload::App, a) if a != 0 => {
            Some(net::Net::open(a).unwrap_or_else(|e| fail(e)))
        }
        _ => None,
    };
    let disk = match (w, bp.blk_mmio) {
        (Workload::Kv | Workload::Disk | Workload::App, a) if a != 0 => {
            Some(blk::Disk::open(a).unwrap_or_else(|e| fail(e)))
        }
        _ => None,
    };

    let mut netdesc = StackBuf::<32>::new();
    let _ = match (&net, bp.net_mmio) {
        (Some(n), _) => {
            let m = n.mac();
            write!(
                netdesc,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )
        }
        (None, 0) => netdesc.write_str("none"),
        (None, _) => netdesc.write_str("unused"),
    };
    let mut diskdesc = StackBuf::<32>::new();
    let _ = match (&disk, bp.blk_mmio) {
        (Some(d), _) => write!(
            diskdesc,
            "{}{}",
            Size(d.capacity() * 512),
            if d.read_only() { "(ro)" } else { "" }
        ),
        (None, 0) => diskdesc.write_str("none"),
        (None, _) => diskdesc.write_str("unused"),
    };
    say!(
        "lockstep guest {} (abi {}): workload={} mem={} net={} ip={}/{} disk={}",
        env!("CARGO_PKG_VERSION"),
        ABI_VERSION,
        w.name(),
        Size(bp.mem_size),
        netdesc.as_str(),
        settings.ip,
        settings.prefix,
        diskdesc.as_str(),
    );

    match w {
        Workload::Kv => kv::run(
            &settings,
            bp.seed,
            bp.heap_end - bp.heap_start,
            net,
            disk,
            first.now_ns,
        ),
        Workload::Compute => workloads::compute::run(settings.iters_millions),
        Workload::Disk => workloads::disk::run(&settings, bp.seed, disk, first.now_ns),
        Workload::Idle => {
            workloads::idle::run(settings.duration_ms, settings.tick_ms, first.now_ns)
        }
        Workload::Hostile => {
            workloads::hostile::run(bp.net_mmio, bp.blk_mmio, settings.duration_ms, first.now_ns)
        }
        Workload::App => linux::run(bp, &settings, net, disk, first.now_ns),
    }
}
