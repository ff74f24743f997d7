//! The zero-copy hand-off from the vCPU thread (producer) to the thread that
//! ships the log (consumer): a pool of fixed, page-aligned buffers in one
//! mapping, an rtrb SPSC ring of segment descriptors, and two atomics.
//!
//! * The producer encodes each entry once, in place, into the current buffer.
//!   `append` touches no atomic and makes no syscall; `publish` pushes one
//!   descriptor (a Release store), fences, and reads one flag — it makes a
//!   syscall only when the consumer is parked.
//! * Buffers are used round-robin by generation number (`generation % count`).
//!   Because segments are released in order, buffers free up in order too, so
//!   the "free list" is one counter: `freed` = generations fully released.
//!   The producer may write generation `g` while `g < freed + count`.
//! * When the producer moves past a buffer it sends a seal marker through
//!   the ring behind that buffer's last segment; the consumer frees a buffer
//!   once it has seen its seal and released every segment in it.
//! * A full pool (or ring) stalls the producer: the paper's "full primary
//!   buffer stalls the primary". It waits (spin, spin + yield, park: see
//!   wait.rs) up to a bound, then fails with a typed error.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::wait::Event;

/// Sizing and waiting policy of a producer/consumer pair.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Number of buffers (≥ 2 for the producer to fill one while the
    /// consumer drains another; 1 works but serialises them).
    pub buffers: usize,
    /// Bytes per buffer, rounded up to whole pages. Entries larger than a
    /// buffer are refused, so use ≥ [`crate::MAX_ENTRY_LEN`] in the VMM.
    pub buffer_size: usize,
    /// Published-but-not-yet-taken segments the ring holds.
    pub ring_slots: usize,
    /// Seq of the first entry (1 from boot; later for a stream that starts
    /// mid-run).
    pub first_seq: u64,
    /// Exit index the stream starts from (entries may not go below it).
    pub first_exit_index: u64,
    /// How long either side keeps checking (spinning, then spinning and
    /// yielding) before it parks on a futex.
    pub spin: Duration,
    /// How long the producer waits for a free buffer before giving up.
    pub stall_timeout: Duration,
    /// Whether `publish` wakes a parked consumer. Waking a thread that
    /// sleeps on another CPU costs the waker ~12 µs on this project's hosts
    /// (an IPI in a VM); a consumer that needs no low latency (a file
    /// writer) polls instead and the producer never pays it.
    pub wake_consumer: bool,
}

impl LogConfig {
    pub fn new(buffers: usize, buffer_size: usize) -> Self {
        Self {
            buffers,
            buffer_size,
            ring_slots: 4096,
            first_seq: 1,
            first_exit_index: 0,
            spin: Duration::from_micros(50),
            stall_timeout: Duration::from_secs(10),
            wake_consumer: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum BufferError {
    #[error("need at least one buffer, one ring slot and a non-zero buffer size")]
    Empty,
    #[error("a pool of {count} buffers of {size} bytes is too large")]
    TooLarge { count: usize, size: usize },
    #[error("cannot map {len} bytes for log buffers")]
    Map {
        len: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of a producer/consumer pair (snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Entries and bytes published (appended ones count once published).
    pub entries: u64,
    pub bytes: u64,
    pub segments: u64,
    /// Times the producer had to wait for a buffer or ring slot.
    pub stalls: u64,
    /// Of those, how many parked (slept) rather than only spinning.
    pub stall_parks: u64,
    /// Total time the producer spent stalled.
    pub stall_ns: u64,
    /// Times the consumer parked waiting for a segment.
    pub consumer_parks: u64,
    /// Futex wakes issued (each one is a syscall on the waking side).
    pub wakeups: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) entries: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) segments: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) stall_parks: AtomicU64,
    pub(crate) stall_ns: AtomicU64,
    pub(crate) consumer_parks: AtomicU64,
    pub(crate) wakeups: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> LogStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogStats {
            entries: r(&self.entries),
            bytes: r(&self.bytes),
            segments: r(&self.segments),
            stalls: r(&self.stalls),
            stall_parks: r(&self.stall_parks),
            stall_ns: r(&self.stall_ns),
            consumer_parks: r(&self.consumer_parks),
            wakeups: r(&self.wakeups),
        }
    }

    pub(crate) fn bump(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The mapping that holds every buffer; its addresses never change, so they
/// can be registered with io_uring once.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) base: NonNull<u8>,
    pub(crate) buf_size: usize,
    pub(crate) count: usize,
    pub(crate) map_len: usize,
}

// SAFETY: the pool is plain anonymous memory; which thread may touch which
// bytes is decided by the producer/consumer protocol in this file (the
// producer writes only unpublished bytes of the buffer it owns, the consumer
// reads only published, unreleased segments).
unsafe impl Send for Pool {}
// SAFETY: as above; shared references only hand out the base address.
unsafe impl Sync for Pool {}

impl Pool {
    fn new(count: usize, size: usize) -> Result<Self, BufferError> {
        let page = page_size();
        let buf_size = size
            .checked_next_multiple_of(page)
            .ok_or(BufferError::TooLarge { count, size })?;
        let map_len = buf_size
            .checked_mul(count)
            .ok_or(BufferError::TooLarge { count, size })?;
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // affected. MAP_POPULATE faults the pages in now so the vCPU thread
        // never takes a page fault on its first pass through a buffer.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BufferError::Map {
                len: map_len,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(BufferError::Map {
            len: map_len,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self {
            base,
            buf_size,
            count,
            map_len,
        })
    }

    /// Address of byte `off` of buffer `index` (both in range by construction).
    pub(crate) fn at(&self, index: usize, off: usize) -> *mut u8 {
        debug_assert!(index < self.count && off <= self.buf_size);
        // SAFETY: index < count and off <= buf_size, so the result lies in
        // (or one past the end of a buffer inside) the mapping.
        unsafe { self.base.as_ptr().add(index * self.buf_size + off) }
    }

    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.at(i, 0).cast(),
                iov_len: self.buf_size,
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the pool is
        // dropped only when both the producer and the consumer are gone, and
        // segments borrow the consumer, so no reference into it survives.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// What travels through the ring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawSegment {
    pub(crate) generation: u64,
    pub(crate) off: u32,
    /// 0 = seal marker: the producer has moved past buffer `generation`.
    pub(crate) len: u32,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// Buffer generations fully released (written by the consumer).
    pub(crate) freed: AtomicU64,
    pub(crate) producer_closed: AtomicBool,
    pub(crate) consumer_closed: AtomicBool,
    /// Segments available / producer closed.
    pub(crate) to_consumer: Event,
    /// `LogConfig::wake_consumer`.
    pub(crate) wake_consumer: bool,
    /// A buffer was freed / consumer closed.
    pub(crate) buffer_freed: Event,
    /// A ring slot was freed / consumer closed. Separate from
    /// `buffer_freed` so a producer waiting for a buffer is not woken by
    /// every descriptor the consumer pops.
    pub(crate) slot_freed: Event,
    pub(crate) counters: Counters,
}

impl Shared {
    /// Wakes `event`'s waiter if it is parked, counting the futex wake.
    pub(crate) fn notify(&self, event: &Event) {
        if event.notify() {
            Counters::bump(&self.counters.wakeups, 1);
        }
    }
}

impl Shared {
    /// The pool and the state both ends share, for `cfg` (checked).
    pub(crate) fn new(cfg: &LogConfig) -> Result<Arc<Shared>, BufferError> {
        if cfg.buffers == 0 || cfg.buffer_size == 0 || cfg.ring_slots == 0 {
            return Err(BufferError::Empty);
        }
        // Offsets and lengths travel as u32.
        if cfg.buffer_size > u32::MAX as usize / 2 {
            return Err(BufferError::TooLarge {
                count: cfg.buffers,
                size: cfg.buffer_size,
            });
        }
        let pool = Pool::new(cfg.buffers, cfg.buffer_size)?;
        Ok(Arc::new(Shared {
            pool,
            freed: AtomicU64::new(0),
            producer_closed: AtomicBool::new(false),
            consumer_closed: AtomicBool::new(false),
            to_consumer: Event::default(),
            wake_consumer: cfg.wake_consumer,
            buffer_freed: Event::default(),
            slot_freed: Event::default(),
            counters: Counters::default(),
        }))
    }
}
