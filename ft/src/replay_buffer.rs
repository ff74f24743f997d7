//! The backup's bounded log buffer (the paper's §3.2: "bounded buffers on
//! both sides"): what the backup has received, verified and acknowledged
//! but not yet replayed. The I/O thread adds each chunk it hands to the
//! replay; the replaying vCPU thread takes it away when it pops it.
//!
//! At the limit (bytes or chunks) the I/O thread stops reading the logging
//! socket: no read is armed until the replay has taken something. The
//! kernel's receive buffer then fills, TCP's window closes, the primary's
//! sends stop completing, its log buffers fill, and its vCPU stalls (the
//! paper's "full primary buffer stalls the primary"). Nothing is dropped
//! or reordered on the way: the bytes wait in the socket, in order.
//!
//! Acks keep their meaning (docs/failover.md): the backup acks only what it
//! handed to the replay, so everything acked is in this buffer or already
//! replayed, and a failover replays all of it. The buffer bounds how much
//! that is: the failover's replay time is bounded with it.
//!
//! The bound is `limit + two reads`: a read armed just before the limit
//! was reached, and the one the receive engine re-arms on its completion
//! before the plane has counted it (each at most one receive buffer, 256
//! KiB, plus, on the encrypted channel, the rest of a record begun in the
//! read before, ≤ 64 KiB, and the rest of an entry cut across reads).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lockstep_vmm::dataplane::io_thread::IoWaker;

/// Default bound in bytes: ~100 ms of a saturated 1 Gbit/s link (the lag
/// the throttle aims at), with room to spare for bursts.
pub const DEFAULT_MAX_BYTES: u64 = 32 << 20;
/// Default bound in chunks (one chunk is the verified entries of one read).
pub const DEFAULT_MAX_CHUNKS: u64 = 4096;

/// The bound and the current fill; shared by the I/O thread (adds, pauses
/// reads) and the vCPU thread (takes, wakes a paused I/O thread).
pub struct ReplayBuffer {
    max_bytes: AtomicU64,
    max_chunks: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    /// The I/O thread stopped reading at the limit and is to be woken when
    /// the replay takes something.
    paused: AtomicBool,
    /// Times the I/O thread stopped reading at the limit.
    pauses: AtomicU64,
    waker: OnceLock<std::sync::Arc<IoWaker>>,
}

impl Default for ReplayBuffer {
    fn default() -> Self {
        ReplayBuffer {
            max_bytes: AtomicU64::new(DEFAULT_MAX_BYTES),
            max_chunks: AtomicU64::new(DEFAULT_MAX_CHUNKS),
            bytes: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            waker: OnceLock::new(),
        }
    }
}

impl ReplayBuffer {
    /// Sets the bound (each at least 1); call before the stream starts.
    pub fn set_limits(&self, max_bytes: u64, max_chunks: u64) {
        self.max_bytes.store(max_bytes.max(1), Ordering::Relaxed);
        self.max_chunks.store(max_chunks.max(1), Ordering::Relaxed);
    }

    /// The I/O thread's waker, for a replay that takes from a full buffer.
    pub fn set_waker(&self, waker: std::sync::Arc<IoWaker>) {
        let _ = self.waker.set(waker);
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    pub fn max_chunks(&self) -> u64 {
        self.max_chunks.load(Ordering::Relaxed)
    }

    /// Bytes held (received, not yet taken by the replay).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Acquire)
    }

    /// Times reading stopped at the limit.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// I/O thread: a chunk of `len` bytes was handed to the replay.
    pub fn added(&self, len: usize) {
        self.bytes.fetch_add(len as u64, Ordering::AcqRel);
        self.chunks.fetch_add(1, Ordering::AcqRel);
    }

    /// vCPU thread: the replay took a chunk of `len` bytes. Wakes the I/O
    /// thread if it stopped reading and there is room again.
    pub fn taken(&self, len: usize) {
        let len = len as u64;
        // Saturating: a chunk counted twice or never would be a bug, but it
        // must not wrap the fill into a permanent pause.
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(len))
            });
        let _ = self
            .chunks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(1))
            });
        if self.paused.load(Ordering::Acquire)
            && !self.is_full()
            && let Some(w) = self.waker.get()
        {
            w.wake();
        }
    }

    /// At the limit: no more reads until the replay takes something.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes() || self.chunks() >= self.max_chunks()
    }

    /// I/O thread: whether it may read now; records a pause (and asks to be
    /// woken) when it may not.
    pub fn may_read(&self) -> bool {
        let full = self.is_full();
        let was = self.paused.swap(full, Ordering::AcqRel);
        if full && !was {
            self.pauses.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                bytes = self.bytes(),
                chunks = self.chunks(),
                "replay buffer full: not reading the logging channel until the replay catches up"
            );
        }
        !full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_at_either_limit_and_resumes_when_the_replay_takes() {
        let b = ReplayBuffer::default();
        b.set_limits(1000, 3);
        assert!(b.may_read());
        b.added(600);
        assert!(b.may_read());
        b.added(500);
        assert!(!b.may_read(), "over the byte limit");
        assert_eq!(b.pauses(), 1);
        assert!(!b.may_read());
        assert_eq!(b.pauses(), 1, "one pause, however often asked");
        b.taken(600);
        assert!(b.may_read(), "room again");
        b.added(10);
        b.added(10);
        assert!(!b.may_read(), "at the chunk limit");
        assert_eq!(b.pauses(), 2);
        b.taken(10);
        assert!(b.may_read());
        assert_eq!((b.bytes(), b.chunks()), (510, 2));
    }

    #[test]
    fn a_miscount_never_wraps_into_a_permanent_pause() {
        let b = ReplayBuffer::default();
        b.taken(100);
        assert_eq!((b.bytes(), b.chunks()), (0, 0));
        assert!(b.may_read());
    }
}
