//! The consumer side of the log hand-off: the shipping thread takes
//! published segments, reads them in place and releases them in order (see
//! buffers.rs for the model).

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::buffers::{Counters, LogConfig, LogStats, RawSegment, Shared};
use crate::wait::Waited;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("segment belongs to another consumer")]
    WrongConsumer,
    #[error("segments are released in order: expected segment {expected}, got {got}")]
    OutOfOrder { expected: u64, got: u64 },
}

/// The shipping side (file writer, socket sender). `Send`, not `Sync`: one
/// thread owns it; segments borrow it.
#[derive(Debug)]
pub struct LogConsumer {
    shared: Arc<Shared>,
    ring: RefCell<rtrb::Consumer<RawSegment>>,
    /// Segments handed out / released (segment numbers are these counts).
    received: Cell<u64>,
    released: Cell<u64>,
    /// Generations below this are sealed and all their segments received.
    sealed: Cell<u64>,
    /// Local copy of `shared.freed`.
    freed: Cell<u64>,
    spin: Duration,
}

/// A published run of whole entries inside one buffer. Valid until released
/// through [`LogConsumer::release`] (in order); its bytes cannot be borrowed
/// past that, because release takes the segment by value.
#[derive(Debug)]
pub struct Segment<'c> {
    owner: &'c LogConsumer,
    no: u64,
    generation: u64,
    index: usize,
    off: usize,
    len: usize,
    first_seq: u64,
    last_seq: u64,
}

impl Segment<'_> {
    /// The encoded entries.
    pub fn bytes(&self) -> &[u8] {
        let ptr = self.owner.shared.pool.at(self.index, self.off);
        // SAFETY: the producer published [off, off + len) of buffer `index`
        // (the ring's Release/Acquire pair orders its writes before this
        // read) and will not write it again until this segment is released,
        // which consumes the segment and so ends this borrow.
        unsafe { std::slice::from_raw_parts(ptr, self.len) }
    }

    /// Index of the buffer (as in [`LogConsumer::iovecs`]; also the
    /// io_uring registered-buffer index).
    pub fn buffer_index(&self) -> usize {
        self.index
    }

    /// Offset of the segment in its buffer.
    pub fn offset(&self) -> usize {
        self.off
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seqs of the first and last entry in the segment.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Position of the segment in the stream of segments (0, 1, …).
    pub fn number(&self) -> u64 {
        self.no
    }
}

impl LogConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        ring: rtrb::Consumer<RawSegment>,
        cfg: &LogConfig,
    ) -> Self {
        Self {
            shared,
            ring: RefCell::new(ring),
            received: Cell::new(0),
            released: Cell::new(0),
            sealed: Cell::new(0),
            freed: Cell::new(0),
            spin: cfg.spin,
        }
    }

    /// The next published segment, waiting up to `timeout` (spin, then
    /// park). `None` on timeout or when the producer has finished and
    /// everything was taken ([`Self::is_finished`] tells which).
    pub fn next_segment(&self, timeout: Duration) -> Option<Segment<'_>> {
        if let Some(s) = self.try_next_segment() {
            return Some(s);
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.shared.producer_closed.load(Ordering::Acquire) {
                // Everything pushed before the close is visible now.
                return self.try_next_segment();
            }
            let shared = &*self.shared;
            let ring = &self.ring;
            let ready = || {
                shared.producer_closed.load(Ordering::Acquire)
                    || ring.try_borrow().is_ok_and(|r| !r.is_empty())
            };
            match shared.to_consumer.wait(ready, self.spin, deadline) {
                Ok(how) => {
                    if how == Waited::Parked {
                        Counters::bump(&shared.counters.consumer_parks, 1);
                    }
                    if let Some(s) = self.try_next_segment() {
                        return Some(s);
                    }
                }
                Err(()) => return self.try_next_segment(),
            }
        }
    }

    /// The next published segment if one is there, without waiting.
    pub fn try_next_segment(&self) -> Option<Segment<'_>> {
        let mut ring = self.ring.try_borrow_mut().ok()?;
        loop {
            let raw = ring.pop().ok()?;
            // A slot came free: a producer stalled on a full ring may go on.
            self.shared.notify(&self.shared.slot_freed);
            if raw.len == 0 {
                self.sealed.set(raw.generation + 1);
                self.update_freed(None);
                continue;
            }
            let no = self.received.get();
            self.received.set(no + 1);
            return Some(Segment {
                owner: self,
                no,
                generation: raw.generation,
                index: (raw.generation % self.shared.pool.count as u64) as usize,
                off: raw.off as usize,
                len: raw.len as usize,
                first_seq: raw.first_seq,
                last_seq: raw.last_seq,
            });
        }
    }

    /// Gives a segment's bytes back. Segments must be released in the order
    /// they were received; a buffer returns to the producer once every
    /// segment in it is released and the producer has moved past it.
    pub fn release(&self, seg: Segment<'_>) -> Result<(), ReleaseError> {
        if !std::ptr::eq(seg.owner, self) {
            return Err(ReleaseError::WrongConsumer);
        }
        let expected = self.released.get();
        if seg.no != expected {
            return Err(ReleaseError::OutOfOrder {
                expected,
                got: seg.no,
            });
        }
        self.released.set(expected + 1);
        self.update_freed(Some(seg.generation));
        Ok(())
    }

    /// Recomputes how many generations are free. `released_gen`: the
    /// generation of the segment just released (every earlier generation is
    /// then fully released, since release is in order).
    fn update_freed(&self, released_gen: Option<u64>) {
        let sealed = self.sealed.get();
        let target = if self.released.get() == self.received.get() {
            // Nothing outstanding: every sealed buffer is done.
            sealed
        } else {
            // Outstanding segments start at or after released_gen.
            released_gen.map_or(self.freed.get(), |g| g.min(sealed))
        };
        if target > self.freed.get() {
            self.freed.set(target);
            self.shared.freed.store(target, Ordering::Release);
            self.shared.notify(&self.shared.buffer_freed);
        }
    }

    /// True once the producer has finished (or was dropped) and every
    /// segment has been taken.
    pub fn is_finished(&self) -> bool {
        self.shared.producer_closed.load(Ordering::Acquire)
            && self.ring.try_borrow().is_ok_and(|r| r.is_empty())
    }

    /// The buffers, for `io_uring::Submitter::register_buffers`: addresses
    /// are stable for the life of the pool.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        self.shared.pool.iovecs()
    }

    pub fn buffer_count(&self) -> usize {
        self.shared.pool.count
    }

    pub fn buffer_size(&self) -> usize {
        self.shared.pool.buf_size
    }

    /// Segments received but not yet released.
    pub fn outstanding(&self) -> u64 {
        self.received.get() - self.released.get()
    }

    pub fn stats(&self) -> LogStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for LogConsumer {
    fn drop(&mut self) {
        self.shared.consumer_closed.store(true, Ordering::Release);
        self.shared.notify(&self.shared.buffer_freed);
        self.shared.notify(&self.shared.slot_freed);
    }
}
