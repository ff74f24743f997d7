//! Test helper: a driver-side view of one split virtqueue in a real
//! `GuestMemoryMmap`, laid out by `virtio_queue::mock::MockSplitQueue`.
//! Shared by the blkio and netio tests (netio includes it with `#[path]`).
#![allow(dead_code)]

use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

pub type Mem = GuestMemoryMmap<()>;

pub fn memory(size: usize) -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

/// The driver's side of a queue: descriptor table, avail and used rings.
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    /// Lays out a queue of `size` at `base` and returns it with a ready `Queue`.
    pub fn new(mem: &Mem, base: u64, size: u16) -> (Ring, Queue) {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        let q: Queue = mock.create_queue().expect("queue");
        let r = Ring {
            size,
            desc: mock.desc_table_addr().0,
            avail: mock.avail_addr().0,
            used: mock.used_addr().0,
        };
        (r, q)
    }

    pub fn set_desc(&self, mem: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_desc(mem, self.desc, i, addr, len, flags, next);
    }

    /// Writes a chain of (addr, len, writable) buffers at descriptors
    /// `first..`, linked in order.
    pub fn chain(&self, mem: &Mem, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, (addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == bufs.len();
            let mut flags = if *w { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.set_desc(mem, i, *addr, *len, flags, if last { 0 } else { i + 1 });
        }
    }

    pub fn avail_idx(&self, mem: &Mem) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.avail + 2))
            .expect("avail idx")
    }

    pub fn set_avail_idx(&self, mem: &Mem, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Publishes `head` in the avail ring.
    pub fn publish(&self, mem: &Mem, head: u16) {
        let idx = self.avail_idx(mem);
        let slot = u64::from(idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + slot * 2))
            .expect("avail ring");
        self.set_avail_idx(mem, idx.wrapping_add(1));
    }

    pub fn used_idx(&self, mem: &Mem) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.used + 2))
            .expect("used idx")
    }

    pub fn used_flags(&self, mem: &Mem) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.used))
            .expect("used flags")
    }

    /// Used entry `n` (counted from 0, not wrapped): (id, len).
    pub fn used_entry(&self, mem: &Mem, n: u16) -> (u32, u32) {
        let at = self.used + 4 + u64::from(n % self.size) * 8;
        let id = mem.read_obj::<u32>(GuestAddress(at)).expect("used id");
        let len = mem.read_obj::<u32>(GuestAddress(at + 4)).expect("used len");
        (id, len)
    }
}

pub fn write_desc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table + u64::from(i) * 16))
        .expect("descriptor");
}

pub fn read_bytes(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr))
        .expect("read guest memory");
    v
}

pub fn write_bytes(mem: &Mem, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr))
        .expect("write guest memory");
}

/// The whole of guest memory, for determinism checks.
pub fn snapshot(mem: &Mem, size: usize) -> Vec<u8> {
    read_bytes(mem, 0, size)
}
