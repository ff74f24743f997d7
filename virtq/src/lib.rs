//! Split-virtqueue access for device models that face a hostile guest.
//!
//! `virtio_queue::DescriptorChain` ends its iteration silently on most
//! errors (a bad `next`, a table outside memory, a nested indirect table), so
//! a device cannot tell a finished chain from a broken one. This module walks
//! chains itself and names every way a chain can be wrong; the devices turn
//! those into an error status or a zero-length used entry and keep running.
//! The `Queue` from `virtio-queue` still holds the ring addresses and
//! `next_avail`/`next_used`, and writes the used ring.
//!
//! Everything here is a pure function of guest memory and the queue state,
//! as record/replay requires (docs/architecture.md, "Invariants"): no time,
//! no host state. The few other helpers both device models need
//! (configuration space reads, the warning limiter) live here too.
//!
//! `blkio` and `netio` both use this crate, so the guest-facing parser
//! exists, and is fuzzed, once.

pub mod host_writes;
use std::num::Wrapping;
use std::ops::Range;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// `VRING_DESC_F_NEXT`: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
const DESC_F_KNOWN: u16 = DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT;

/// Size of one split-ring descriptor in guest memory.
const DESC_SIZE: u64 = 16;

/// One guest buffer of a chain, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes (may be 0; devices decide whether that is allowed).
    pub len: u32,
    /// Device-writable (`VRING_DESC_F_WRITE`).
    pub writable: bool,
}

/// Why a descriptor chain was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The avail ring named a head outside the descriptor table.
    #[error("head index {head} is outside the descriptor table ({size} entries)")]
    HeadOutOfRange {
        /// The head index read from the avail ring.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor table entry could not be read.
    #[error("descriptor table entry at {0:#x} is outside guest memory")]
    TableOutOfMemory(u64),
    /// `next` points past the end of the (direct or indirect) table.
    #[error("next index {next} is outside its table ({size} entries)")]
    NextOutOfRange {
        /// The offending `next` value.
        next: u16,
        /// Entries in the table being walked.
        size: u16,
    },
    /// More descriptors than the table holds were visited: the chain loops.
    #[error("chain visits more than the {0} descriptors of its table: a loop")]
    Loop(u16),
    /// The chain has more buffers than the device accepts.
    #[error("chain has more than {0} buffers")]
    TooManyBuffers(usize),
    /// Unknown descriptor flag bits.
    #[error("descriptor flags {0:#06x} contain reserved bits")]
    ReservedFlags(u16),
    /// `VRING_DESC_F_INDIRECT` inside an indirect table (spec 2.7.5.3.1).
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// `VRING_DESC_F_INDIRECT` together with `VRING_DESC_F_NEXT` (spec 2.7.5.3.1).
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect table whose length is not a non-zero multiple of 16.
    #[error("indirect table length {0} is not a non-zero multiple of 16 below 1 MiB")]
    IndirectTableLen(u32),
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len} is outside guest memory")]
    BufferOutOfMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (spec 2.7.4.2).
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
}

/// Why the avail ring itself cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// `avail.idx` or an avail ring entry is outside guest memory.
    #[error("avail ring at {0:#x} is outside guest memory")]
    AvailOutOfMemory(u64),
    /// `avail.idx` moved further than the queue size past what the device
    /// consumed: the driver is broken (virtio-queue's `InvalidAvailRingIndex`).
    #[error("avail idx {avail} is more than the queue size {size} ahead of {next}")]
    AvailIndexJump {
        /// `avail.idx` as read.
        avail: u16,
        /// The device's `next_avail`.
        next: u16,
        /// The queue size.
        size: u16,
    },
}

/// Number of avail entries the driver has published and the device not yet
/// consumed.
pub fn pending<M: GuestMemory + ?Sized>(queue: &Queue, mem: &M) -> Result<u16, RingError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| RingError::AvailOutOfMemory(queue.avail_ring()))?;
    let next = Wrapping(queue.next_avail());
    let n = (avail - next).0;
    if n > queue.size() {
        return Err(RingError::AvailIndexJump {
            avail: avail.0,
            next: next.0,
            size: queue.size(),
        });
    }
    Ok(n)
}

/// Pops the next head index from the avail ring, or `None` if there is none.
/// The head is not validated here: `walk_chain` does that.
pub fn pop_head<M: GuestMemory + ?Sized>(
    queue: &mut Queue,
    mem: &M,
) -> Result<Option<u16>, RingError> {
    if pending(queue, mem)? == 0 {
        return Ok(None);
    }
    let next = queue.next_avail();
    // `size` is a non-zero power of two (virtio-queue checks it), so `%` is safe.
    let slot = u64::from(next % queue.size());
    let addr = queue.avail_ring() + 4 + slot * 2;
    let head = mem
        .read_obj::<u16>(GuestAddress(addr))
        .map_err(|_| RingError::AvailOutOfMemory(addr))?;
    queue.set_next_avail(next.wrapping_add(1));
    Ok(Some(u16::from_le(head)))
}

/// Gives the last popped head back to the avail ring (the device found no
/// use for it yet, e.g. an RX buffer too small for this one frame).
pub fn unpop_head(queue: &mut Queue) {
    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
}

/// Reads one raw descriptor: (addr, len, flags, next).
fn read_desc<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    index: u16,
) -> Result<(u64, u32, u16, u16), ChainError> {
    let at = table
        .checked_add(u64::from(index) * DESC_SIZE)
        .ok_or(ChainError::TableOutOfMemory(table.raw_value()))?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, at)
        .map_err(|_| ChainError::TableOutOfMemory(at.raw_value()))?;
    let addr = u64::from_le_bytes([
        raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
    ]);
    let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    let flags = u16::from_le_bytes([raw[12], raw[13]]);
    let next = u16::from_le_bytes([raw[14], raw[15]]);
    Ok((addr, len, flags, next))
}

/// Walks the chain starting at `head` of a queue whose descriptor table is
/// at `table` with `size` entries, into `out` (cleared first).
///
/// Checks: the head and every `next` inside their table; no loops (at most
/// `size` steps per table); known flags only; one level of indirection with
/// a well-formed table and no NEXT on the indirect descriptor; every buffer
/// inside guest memory; readable buffers before writable ones; at most
/// `max_buffers` buffers. Zero-length buffers are returned as they are.
pub fn walk_chain<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    max_buffers: usize,
    out: &mut Vec<Segment>,
) -> Result<(), ChainError> {
    out.clear();
    if head >= size {
        return Err(ChainError::HeadOutOfRange { head, size });
    }
    let mut table = table;
    let mut table_size = size;
    let mut index = head;
    let mut indirect = false;
    let mut steps_left = u32::from(size);
    let mut seen_writable = false;
    loop {
        if steps_left == 0 {
            return Err(ChainError::Loop(table_size));
        }
        steps_left -= 1;
        let (addr, len, flags, next) = read_desc(mem, table, index)?;
        if flags & !DESC_F_KNOWN != 0 {
            return Err(ChainError::ReservedFlags(flags));
        }
        if flags & DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if flags & DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let entries = len / DESC_SIZE as u32;
            if len == 0 || !len.is_multiple_of(DESC_SIZE as u32) || entries > u32::from(u16::MAX) {
                return Err(ChainError::IndirectTableLen(len));
            }
            if !mem.check_range(GuestAddress(addr), len as usize, Permissions::Read) {
                return Err(ChainError::TableOutOfMemory(addr));
            }
            table = GuestAddress(addr);
            // Checked just above: entries <= u16::MAX.
            table_size = entries as u16;
            index = 0;
            indirect = true;
            steps_left = entries;
            continue;
        }
        let writable = flags & DESC_F_WRITE != 0;
        if !writable && seen_writable {
            return Err(ChainError::ReadableAfterWritable);
        }
        seen_writable |= writable;
        let perm = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let in_memory = addr.checked_add(u64::from(len)).is_some()
            && (len == 0 || mem.check_range(GuestAddress(addr), len as usize, perm));
        if !in_memory {
            return Err(ChainError::BufferOutOfMemory { addr, len });
        }
        if out.len() >= max_buffers {
            return Err(ChainError::TooManyBuffers(max_buffers));
        }
        out.push(Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        });
        if flags & DESC_F_NEXT == 0 {
            return Ok(());
        }
        if next >= table_size {
            return Err(ChainError::NextOutOfRange {
                next,
                size: table_size,
            });
        }
        index = next;
    }
}

/// Total length of `segs`.
pub fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Calls `copy(addr, range)` for each piece of the concatenation of `segs`
/// that covers bytes `offset..offset + len` of it, `range` being the piece's
/// place in `0..len`. Returns false if the segments are too short or a copy
/// fails.
fn for_each_piece(
    segs: &[Segment],
    mut offset: u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, Range<usize>) -> bool,
) -> bool {
    let mut done = 0usize;
    for s in segs {
        if done == len {
            break;
        }
        let seg_len = u64::from(s.len);
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        // Both bounded by u32::MAX, so the casts are lossless.
        let n = ((seg_len - offset) as usize).min(len - done);
        if !copy(s.addr.unchecked_add(offset), done..done + n) {
            return false;
        }
        done += n;
        offset = 0;
    }
    done == len
}

/// Copies `buf.len()` bytes out of the concatenation of `segs`, starting
/// `offset` bytes into it. Returns false (with `buf` partly filled) if the
/// segments are too short or memory cannot be read.
pub fn read_from_segments<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> bool {
    for_each_piece(segs, offset, buf.len(), |addr, r| {
        mem.read_slice(&mut buf[r], addr).is_ok()
    })
}

/// Copies `data` into the concatenation of `segs`, starting `offset` bytes
/// into it. Returns false if the segments are too short or memory cannot be
/// written.
pub fn write_to_segments<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    offset: u64,
    data: &[u8],
) -> bool {
    for_each_piece(segs, offset, data.len(), |addr, r| {
        let len = r.len();
        let ok = mem.write_slice(&data[r], addr).is_ok();
        host_writes::note(addr.0, len);
        ok
    })
}

/// Reads `data.len()` bytes of a device's configuration space `space` from
/// `offset`; bytes outside it read as 0 (the driver may read at any offset).
pub fn read_config(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(src) = usize::try_from(offset).ok().and_then(|o| space.get(o..)) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Counts occurrences per kind and says which ones to log: the first few of
/// each kind, then every power of two, so a guest that floods malformed
/// chains cannot flood the host log. Counting instead of a clock keeps the
/// device models free of time.
#[derive(Clone, Debug)]
pub struct WarnLimiter {
    counts: Vec<u64>,
}

impl WarnLimiter {
    /// Occurrences of each kind that are always logged.
    const ALWAYS: u64 = 4;

    /// A limiter for `kinds` distinct kinds.
    pub fn new(kinds: usize) -> Self {
        Self {
            counts: vec![0; kinds],
        }
    }

    /// Counts one occurrence of `kind`; returns the running count if this
    /// one should be logged.
    pub fn hit(&mut self, kind: usize) -> Option<u64> {
        let c = self.counts.get_mut(kind)?;
        *c += 1;
        (*c <= Self::ALWAYS || c.is_power_of_two()).then_some(*c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("guest memory")
    }

    fn put(
        mem: &GuestMemoryMmap<()>,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(table + u64::from(i) * 16))
            .expect("write desc");
    }

    #[test]
    fn direct_and_indirect_chains_are_walked() {
        let m = mem();
        put(&m, 0, 0, 0x1000, 16, DESC_F_NEXT, 1);
        put(&m, 0, 1, 0x2000, 512, DESC_F_WRITE, 0);
        let mut out = Vec::new();
        walk_chain(&m, GuestAddress(0), 4, 0, 8, &mut out).expect("direct");
        assert_eq!(out.len(), 2);
        assert!(out[1].writable);

        put(&m, 0, 2, 0x8000, 32, DESC_F_INDIRECT, 0);
        put(&m, 0x8000, 0, 0x3000, 10, DESC_F_NEXT, 1);
        put(&m, 0x8000, 1, 0x4000, 20, DESC_F_WRITE, 0);
        walk_chain(&m, GuestAddress(0), 4, 2, 8, &mut out).expect("indirect");
        assert_eq!(total_len(&out), 30);
    }

    #[test]
    fn broken_chains_are_named() {
        let m = mem();
        let mut out = Vec::new();
        let w = |head| {
            let mut o = Vec::new();
            walk_chain(&m, GuestAddress(0), 4, head, 8, &mut o)
        };
        assert!(matches!(w(4), Err(ChainError::HeadOutOfRange { .. })));
        put(&m, 0, 0, 0x1000, 16, DESC_F_NEXT, 0);
        assert_eq!(w(0), Err(ChainError::Loop(4)));
        put(&m, 0, 0, 0x1000, 16, DESC_F_NEXT, 9);
        assert!(matches!(
            w(0),
            Err(ChainError::NextOutOfRange { next: 9, .. })
        ));
        put(&m, 0, 0, 0x1000, 16, 0x80, 0);
        assert_eq!(w(0), Err(ChainError::ReservedFlags(0x80)));
        put(&m, 0, 0, 0xFFFF_0000, 16, 0, 0);
        assert!(matches!(w(0), Err(ChainError::BufferOutOfMemory { .. })));
        put(&m, 0, 0, u64::MAX - 4, 16, 0, 0);
        assert!(matches!(w(0), Err(ChainError::BufferOutOfMemory { .. })));
        put(&m, 0, 0, 0x1000, 16, DESC_F_WRITE | DESC_F_NEXT, 1);
        put(&m, 0, 1, 0x1000, 16, 0, 0);
        assert_eq!(w(0), Err(ChainError::ReadableAfterWritable));
        put(&m, 0, 0, 0x8000, 24, DESC_F_INDIRECT, 0);
        assert_eq!(w(0), Err(ChainError::IndirectTableLen(24)));
        put(&m, 0, 0, 0x8000, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1);
        assert_eq!(w(0), Err(ChainError::IndirectWithNext));
        put(&m, 0, 0, 0x8000, 32, DESC_F_INDIRECT, 0);
        put(&m, 0x8000, 0, 0x9000, 16, DESC_F_INDIRECT, 0);
        assert_eq!(w(0), Err(ChainError::NestedIndirect));
        put(&m, 0, 0, 0xFFFF_0000, 32, DESC_F_INDIRECT, 0);
        assert!(matches!(w(0), Err(ChainError::TableOutOfMemory(_))));
        // A long but legal chain still hits the device's buffer limit.
        for i in 0..4 {
            put(&m, 0, i, 0x1000, 1, DESC_F_NEXT, i + 1);
        }
        put(&m, 0, 3, 0x1000, 1, 0, 0);
        assert_eq!(
            walk_chain(&m, GuestAddress(0), 4, 0, 3, &mut out),
            Err(ChainError::TooManyBuffers(3))
        );
        // The descriptor table itself outside memory.
        assert!(matches!(
            walk_chain(&m, GuestAddress(0xFFFF_FFF0), 4, 1, 3, &mut out),
            Err(ChainError::TableOutOfMemory(_))
        ));
    }

    #[test]
    fn segment_copies_span_buffers() {
        let m = mem();
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 3,
                writable: true,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 5,
                writable: true,
            },
        ];
        assert!(write_to_segments(&m, &segs, 1, b"abcdef"));
        let mut back = [0u8; 6];
        assert!(read_from_segments(&m, &segs, 1, &mut back));
        assert_eq!(&back, b"abcdef");
        assert!(!write_to_segments(&m, &segs, 4, b"abcdef"));
    }

    #[test]
    fn warn_limiter_thins_out() {
        let mut l = WarnLimiter::new(2);
        let logged = (0..100).filter(|_| l.hit(1).is_some()).count();
        assert_eq!(logged, 4 + 4); // 1..=4, then 8, 16, 32, 64
        assert!(l.hit(5).is_none());
    }
}
