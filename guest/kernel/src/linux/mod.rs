//! The Linux x86-64 personality (`workload=app`, docs/linux-personality.md):
//! an unmodified static Linux program runs at ring 3 beside this code and
//! its `syscall`s are served here, at ring 3, through the VMM's three-
//! instruction ring-0 stub ([`entry`]). Exits stay one sync call per event-
//! loop iteration: the scheduler makes the call only when every app thread
//! is blocked (or a thread polls without end, [`kernel::SPIN_LIMIT`]).
//!
//! Determinism by construction: threads switch only at system calls; time
//! is the sync call's logged virtual time; `getrandom` comes from the boot
//! seed; no signal is ever delivered asynchronously. A replay or an FT
//! backup needs nothing beyond the existing log: the app itself arrives as
//! disk reads.

mod boot;
mod disk;
mod dispatch;
mod entry;
mod fd;
mod files;
mod info;
mod kernel;
mod mem;
mod netstack;
mod path;
mod pipe;
mod poll;
mod sched;
mod sock;
mod sockopt;
mod stats;
mod synth;
mod time;
mod uaccess;
mod vdso;

use core::cell::UnsafeCell;

use crate::blk::Disk;
use crate::cmdline::Settings;
use crate::net::Net;
use entry::Frame;
use kernel::Kernel;

/// Why a system call did not produce a value.
pub enum Fail {
    /// An errno value (returned negated).
    E(u32),
    /// The calling thread waits; the call is resumed or retried later.
    Block(Wait),
    /// The frame now holds another thread (the caller exited).
    Switched,
}

/// A system call's result.
pub type Sys = Result<u64, Fail>;

/// What a blocked thread waits for.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Re-run the call after the next events; `deadline` (virtual ns) is
    /// when a call with a timeout gives up.
    Retry { deadline: Option<u64> },
    /// A futex word; woken by `FUTEX_WAKE` (result 0) or the deadline.
    Futex { addr: u64, deadline: Option<u64> },
}

impl Wait {
    pub fn deadline(&self) -> Option<u64> {
        match self {
            Wait::Retry { deadline } | Wait::Futex { deadline, .. } => *deadline,
        }
    }
}

/// One system call: number, arguments, and for a retry the deadline the
/// first attempt set.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub nr: u64,
    pub a: [u64; 6],
    pub deadline: Option<u64>,
}

impl Call {
    fn of(f: &Frame, deadline: Option<u64>) -> Call {
        Call {
            nr: f.rax,
            a: [f.arg(0), f.arg(1), f.arg(2), f.arg(3), f.arg(4), f.arg(5)],
            deadline,
        }
    }
}

impl From<u32> for Fail {
    fn from(e: u32) -> Fail {
        Fail::E(e)
    }
}

/// The personality's state: one instance, touched only by the ring-3 code
/// that runs between an app's `syscall` and its return.
struct Global(UnsafeCell<Option<Kernel>>);

// SAFETY: the guest has one vCPU, no interrupts and no signals; the
// personality runs only inside `syscall` (and at boot), never re-entered.
unsafe impl Sync for Global {}

static KERNEL: Global = Global(UnsafeCell::new(None));

fn kernel() -> &'static mut Kernel {
    // SAFETY: see `Global`: only one `syscall` (or boot) runs at a time,
    // and each takes this reference once and passes it down.
    match unsafe { &mut *KERNEL.0.get() } {
        Some(k) => k,
        None => crate::fail("linux: a system call before the personality started"),
    }
}

/// Serves one system call of the current thread (called by the entry).
extern "C" fn syscall(frame: &mut Frame) {
    let k = kernel();
    let call = Call::of(frame, None);
    k.stats.count(call.nr);
    // Only an unbroken run of polls that find nothing counts towards the
    // spin limit: any other call is progress.
    let polls = k.idle_polls;
    let r = dispatch::dispatch(k, &call, frame);
    if k.idle_polls == polls {
        k.idle_polls = 0;
    }
    match r {
        Ok(v) => frame.rax = v,
        Err(Fail::E(e)) => frame.rax = (-i64::from(e)) as u64,
        Err(Fail::Block(w)) => sched::block(k, frame, w),
        Err(Fail::Switched) => {}
    }
    if k.stop {
        k.shutdown(0);
    }
}

/// Where the heap starts in app mode (below: the app's image and brk).
pub fn heap_start(mem_size: u64) -> u64 {
    boot::low_end(mem_size)
}

/// Boots the app on the disk and runs it; never returns.
pub fn run(
    bp: &lockstep_guest_abi::BootParams,
    s: &Settings,
    net: Option<Net>,
    disk: Option<Disk>,
    now: u64,
) -> ! {
    let (k, first) = boot::boot(bp, s, net, disk, now);
    // SAFETY: boot is single-threaded and no system call can run before
    // `enter` below starts the app.
    unsafe { *KERNEL.0.get() = Some(k) };
    let k = kernel();
    entry::install(k.stack_top);
    entry::enter(k.stack_top, &first)
}
