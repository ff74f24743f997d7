//! `workload=disk`: `ops` random 4 KiB reads and writes spread over the disk
//! with up to `inflight` in flight. Every written block carries a header
//! (block number, version, CRC-32C of its payload); reads of blocks written
//! in this run must return exactly the last version written. Never two
//! operations on one block at once. Summary line, exit 0 (1 on a mismatch
//! or I/O error).
//!
//! `race=N` first runs N rounds of two writes to the same block issued back
//! to back (both in flight at once), then a read of it: the device executes
//! overlapping requests in submission order, so the read must return the
//! second write, however the host timed them.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;

use lockstep_guest_abi::EV_STOP;
use lockstep_guest_services::crc32c::{crc32c, crc32c_append};

use crate::blk::{Disk, Done};
use crate::cmdline::Settings;
use crate::{ports, say};

const BLOCK: usize = 4096;
const SECTORS: u64 = (BLOCK / 512) as u64;
const MAGIC: &[u8; 8] = b"LKDISKW1";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64* (randomness only from BootParams::seed): the multiply
        // decorrelates the low bits of consecutive outputs, which plain
        // xorshift leaves linearly related.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    }
}

/// The content of `block` at `version`.
fn make(block: u64, version: u64) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK];
    let mut r = Rng(block.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version ^ 1);
    for w in d[32..].chunks_mut(8) {
        w.copy_from_slice(&r.next().to_le_bytes());
    }
    d[0..8].copy_from_slice(MAGIC);
    d[8..16].copy_from_slice(&block.to_le_bytes());
    d[16..24].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c(&d[32..]);
    d[24..28].copy_from_slice(&crc.to_le_bytes());
    d
}

#[derive(Default)]
struct Tally {
    writes: u64,
    reads: u64,
    verified: u64,
    unverified: u64,
    mismatches: u64,
    errors: u64,
    /// CRC over every completed operation, in completion order.
    checksum: u32,
}

impl Tally {
    /// Counts one completion; a read is checked against the version last
    /// written to its block, if this run wrote it.
    fn complete(&mut self, d: &Done, versions: &BTreeMap<u64, u64>) {
        let block = d.user >> 1;
        self.checksum = crc32c_append(self.checksum, &d.user.to_le_bytes());
        if !d.ok {
            self.errors += 1;
            return;
        }
        if d.user & 1 == 1 {
            self.writes += 1;
            return;
        }
        self.reads += 1;
        self.checksum = crc32c_append(self.checksum, &d.data);
        match versions.get(&block) {
            Some(&v) if d.data == make(block, v) => self.verified += 1,
            Some(_) => self.mismatches += 1,
            None => self.unverified += 1,
        }
    }
}

/// Runs the workload.
pub fn run(s: &Settings, seed: u64, disk: Option<Disk>, start: u64) -> ! {
    let Some(mut disk) = disk else {
        say!("disk: no disk device");
        ports::exit(1);
    };
    let blocks = disk.capacity() / SECTORS;
    if blocks == 0 {
        say!("disk: the disk is smaller than one block");
        ports::exit(1);
    }
    // A working set of at most 256 blocks spread over the whole disk, so
    // reads often hit blocks written earlier in the run and get verified.
    let span = blocks.min(256);
    let stride = blocks / span;
    let ro = disk.read_only();
    let mut rng = Rng(seed | 1);
    let mut versions: BTreeMap<u64, u64> = BTreeMap::new();
    let mut busy: BTreeSet<u64> = BTreeSet::new();
    let mut t = Tally::default();
    let mut submitted = 0u64;
    let mut next_version = 1u64;
    let mut now = start;
    let mut stopping = false;
    let mut done = Vec::new();
    for _ in 0..if ro { 0 } else { s.race } {
        let block = rng.next() % span * stride;
        let (first, second) = (next_version, next_version + 1);
        next_version += 2;
        versions.insert(block, second);
        disk.write(block * SECTORS, make(block, first), block << 1 | 1);
        disk.write(block * SECTORS, make(block, second), block << 1 | 1);
        now = settle(&mut disk, &mut done, now, &mut t, &versions);
        disk.read(block * SECTORS, BLOCK, block << 1);
        now = settle(&mut disk, &mut done, now, &mut t, &versions);
    }
    if s.race > 0 {
        // Only the race reads have been verified so far.
        say!(
            "disk: {} of {} racing write pairs read back as the later write",
            t.verified,
            s.race
        );
    }
    loop {
        while !stopping && submitted < s.ops && disk.jobs() < s.inflight {
            let block = rng.next() % span * stride;
            if !busy.insert(block) {
                continue;
            }
            submitted += 1;
            // user = block << 1 | is_write
            if !ro && rng.next().is_multiple_of(2) {
                let v = next_version;
                next_version += 1;
                versions.insert(block, v);
                disk.write(block * SECTORS, make(block, v), block << 1 | 1);
            } else {
                disk.read(block * SECTORS, BLOCK, block << 1);
            }
        }
        if !disk.busy() && (stopping || submitted >= s.ops) {
            break;
        }
        let r = ports::sync(true, now + 1_000_000_000);
        now = now.max(r.now_ns);
        if r.events & EV_STOP != 0 {
            stopping = true;
        }
        disk.reap(&mut done);
        for d in done.drain(..) {
            busy.remove(&(d.user >> 1));
            t.complete(&d, &versions);
        }
    }
    say!(
        "disk: {} ops={} writes={} reads={} verified={} unverified={} mismatches={} errors={} checksum=0x{:08x}",
        if stopping { "stopped" } else { "done" },
        submitted,
        t.writes,
        t.reads,
        t.verified,
        t.unverified,
        t.mismatches,
        t.errors,
        t.checksum
    );
    ports::exit(u32::from(t.mismatches + t.errors > 0))
}

/// Waits until every request in flight has completed and counts them.
fn settle(
    disk: &mut Disk,
    done: &mut Vec<Done>,
    mut now: u64,
    t: &mut Tally,
    versions: &BTreeMap<u64, u64>,
) -> u64 {
    while disk.busy() {
        let r = ports::sync(true, now + 1_000_000_000);
        now = now.max(r.now_ns);
        disk.reap(done);
        for d in done.drain(..) {
            t.complete(&d, versions);
        }
    }
    now
}
