//! The personality's state and the one place it meets the VMM: `sync`.

use alloc::vec::Vec;

use lockstep_guest_abi::EV_STOP;
use lockstep_guest_linux::fs::Fs;
use lockstep_guest_linux::space::AddressSpace;

use super::disk::BlkDev;
use super::fd::FdTable;
use super::sched::Threads;
use super::sock::NetStack;
use super::stats::Stats;
use crate::ports;

/// Longest wait of one sync call.
pub const MAX_WAIT_NS: u64 = 1_000_000_000;
/// Polls that find nothing (`epoll_wait` with no timeout, `clock_gettime`,
/// `sched_yield`) before the scheduler makes a sync call anyway: a thread
/// that waits by polling must see time pass and input arrive. A count, so
/// the point is the same in a replay.
pub const SPIN_LIMIT: u32 = 64;
/// Console bytes kept before they are written (one exit per write).
const CONSOLE_BATCH: usize = 16 * 1024;

/// Deterministic pseudo-random numbers from the boot seed (xoshiro256**,
/// seeded by splitmix64): `getrandom` and `/dev/urandom`. Not
/// cryptographic; the seed is fresh from the host for every boot.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed ^ 0x6c6f_636b_7374_6570;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub struct Kernel {
    /// Virtual time (ns since the Unix epoch) of the last sync call.
    pub now: u64,
    pub boot_ns: u64,
    /// Top of the personality's stack (system calls start here).
    pub stack_top: u64,
    pub rng: Rng,
    pub disk: Option<BlkDev>,
    pub fs: Option<Fs>,
    pub net: Option<NetStack>,
    pub fds: FdTable,
    pub threads: Threads,
    pub space: AddressSpace,
    pub cwd: Vec<u8>,
    pub umask: u32,
    pub stats: Stats,
    /// The app's `sigaction`s (64 signals × 32 bytes), kept only to be
    /// read back: nothing is delivered.
    pub sigactions: Vec<[u8; 32]>,
    /// The app's name (argv[0]), for /proc/self/stat.
    pub name: Vec<u8>,
    pub console: Vec<u8>,
    /// The host asked the guest to stop.
    pub stop: bool,
    pub idle_polls: u32,
    pub mem_size: u64,
    /// The app's executable segments.
    pub code: Vec<(u64, u64)>,
    /// The vDSO (absent with boot word `vdso=0`).
    pub vdso: Option<super::vdso::Vdso>,
}

impl Kernel {
    /// The sync call: sends what the network stack queued, waits (with
    /// `wait`) until an event or `deadline`, takes the new time and inputs.
    pub fn sync(&mut self, mut wait: bool, deadline: u64) {
        self.flush_console();
        if let Some(n) = self.net.as_mut() {
            n.before_sync(self.now);
            wait &= !n.rx_pending();
        }
        let r = ports::sync(wait, deadline);
        self.now = self.now.max(r.now_ns);
        self.stop |= r.events & EV_STOP != 0;
        if let Some(n) = self.net.as_mut() {
            n.after_sync(self.now);
        }
        self.stats.syncs += 1;
        self.stats.waits += u64::from(wait);
        self.idle_polls = 0;
        self.publish_time();
    }

    /// The vDSO's clocks follow the sync calls.
    fn publish_time(&mut self) {
        let mono = self.monotonic();
        if let Some(v) = self.vdso.as_mut() {
            v.publish(self.now, mono);
        }
    }

    /// Counts a poll that found nothing; past [`SPIN_LIMIT`] of them in a
    /// row, makes a sync call without waiting.
    pub fn idle_poll(&mut self) {
        self.idle_polls += 1;
        if self.idle_polls >= SPIN_LIMIT {
            self.sync(false, 0);
        }
    }

    /// Takes what the disk saw while the file system waited for it.
    pub fn absorb_disk(&mut self) {
        if let Some(d) = self.disk.as_mut() {
            self.now = self.now.max(d.now);
            self.stop |= d.stop;
            let syncs = d.take_syncs();
            self.stats.syncs += syncs;
            if syncs > 0 {
                self.publish_time();
            }
        }
    }

    pub fn console_write(&mut self, b: &[u8]) {
        self.console.extend_from_slice(b);
        if self.console.len() >= CONSOLE_BATCH {
            self.flush_console();
        }
    }

    /// A line of the personality's own, in order with the app's output.
    pub fn say(&mut self, args: core::fmt::Arguments<'_>) {
        let line = alloc::fmt::format(args);
        self.console_write(line.as_bytes());
        self.console_write(b"\n");
    }

    pub fn flush_console(&mut self) {
        if !self.console.is_empty() {
            ports::console(&self.console);
            self.console.clear();
        }
    }

    /// Whether `addr` lies in the app's own code.
    pub fn image_contains(&self, addr: u64) -> bool {
        self.code.iter().any(|(lo, hi)| (*lo..*hi).contains(&addr))
    }

    /// Nanoseconds since boot (CLOCK_MONOTONIC), from 1 s so it is never 0.
    pub fn monotonic(&self) -> u64 {
        self.now.saturating_sub(self.boot_ns) + 1_000_000_000
    }

    /// Stops the guest: everything written is made durable first.
    pub fn shutdown(&mut self, status: u32) -> ! {
        if let Some(d) = self.disk.as_mut() {
            d.now = d.now.max(self.now);
        }
        if let (Some(fs), Some(d)) = (self.fs.as_mut(), self.disk.as_mut())
            && fs.dirty()
            && fs.sync(d).is_err()
        {
            self.say(format_args!(
                "linux: the final sync of the file system failed"
            ));
        }
        self.absorb_disk();
        self.flush_console();
        super::stats::report(self, status);
        self.flush_console();
        ports::exit(status)
    }
}
