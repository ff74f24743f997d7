//! Opening the store at boot: recovery from the disk log (or formatting a
//! blank disk), driven through the non-blocking disk API and sync calls.

use alloc::vec::Vec;

use lockstep_guest_abi::EV_STOP;
use lockstep_guest_services::Engine;
use lockstep_guest_services::journal::recovery::{self, Start};
use lockstep_guest_services::journal::{SECTOR, SUPERBLOCK_READ_SECTORS};
use lockstep_guest_services::store::Store;

use super::{DISK_FAILED, MAX_WAIT_NS};
use crate::blk::{Disk, Done};
use crate::{Size, ports, say};

/// Waits for the single outstanding job; stops the guest on EV_STOP (no
/// write of ours is outstanding that could be torn by stopping) and on
/// I/O errors.
fn wait_one(disk: &mut Disk, now: &mut u64) -> Done {
    let mut done = Vec::new();
    loop {
        let s = ports::sync(true, *now + MAX_WAIT_NS);
        *now = (*now).max(s.now_ns);
        disk.reap(&mut done);
        if let Some(d) = done.pop() {
            if !d.ok {
                say!("kv: disk I/O error during recovery; stopping");
                ports::exit(DISK_FAILED);
            }
            return d;
        }
        if s.events & EV_STOP != 0 && !disk.busy() {
            say!("kv: stopped by the host during recovery");
            ports::exit(0);
        }
    }
}

fn read(disk: &mut Disk, sector: u64, len: usize, now: &mut u64) -> Vec<u8> {
    disk.read(sector, len, 0);
    wait_one(disk, now).data
}

/// `e`, which starts without data, after its `kv: recovered ...` line.
fn empty(e: Engine) -> Engine {
    say!("kv: recovered 0 keys (0 records, tail: clean)");
    e
}

/// The engine for this boot, with the `kv: recovered ...` line printed.
pub fn open(disk: Option<&mut Disk>, now: &mut u64) -> Engine {
    let Some(disk) = disk else {
        say!("kv: no disk: data will not survive a restart");
        return empty(Engine::volatile(*now));
    };
    let sb = read(disk, 0, SUPERBLOCK_READ_SECTORS as usize * SECTOR, now);
    match recovery::start(&sb, disk.capacity()) {
        Start::TooSmall => {
            say!(
                "kv: the disk ({}) is too small for a log: data will not survive a restart",
                Size(disk.capacity() * 512)
            );
            empty(Engine::volatile(*now))
        }
        Start::Blank(_) if disk.read_only() => {
            say!("kv: the read-only disk holds no log: serving an empty, read-only store");
            empty(Engine::read_only(Store::new(), *now))
        }
        Start::Blank(layout) => {
            let mut e = Engine::format(layout, *now);
            while let Some(w) = e.next_write() {
                disk.write(w.sector, w.data, 0);
                let d = wait_one(disk, now);
                e.write_done(d.ok);
            }
            say!(
                "kv: formatted a new log on the blank disk (two halves of {})",
                Size(layout.half_sectors * SECTOR as u64)
            );
            empty(e)
        }
        Start::Scan(mut r) => {
            let mut store = Store::new();
            while let Some((sector, len)) = r.next_read() {
                let data = read(disk, sector, len, now);
                r.feed(&data, &mut store);
            }
            let (journal, rep) = r.finish(&mut store, *now / 1_000_000);
            say!(
                "kv: recovered {} keys ({} records, tail: {})",
                rep.keys,
                rep.records,
                rep.tail
            );
            let mut e = if disk.read_only() {
                Engine::read_only(store, *now)
            } else {
                Engine::durable_with(store, journal, *now)
            };
            e.recovery = Some(rep);
            e
        }
    }
}
