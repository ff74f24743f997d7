//! The sender's held segments: published log segments taken from the
//! [`LogConsumer`], kept (unreleased, so the producer cannot reuse their
//! bytes) while the kernel may still read them, and released in order once
//! it is done.
//!
//! Positions are stream offsets: the stream header is bytes 0..64, the
//! first segment starts at 64, each segment follows the previous one.

use std::collections::VecDeque;

use crate::consumer::{LogConsumer, Segment};
use crate::header::STREAM_HEADER_LEN;

/// One held segment and where it sits in the stream.
struct Held {
    seg: Segment<'static>,
    start: u64,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.seg.len() as u64
    }
}

/// A contiguous run of unsent bytes inside one log buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub(crate) ptr: *const u8,
    pub(crate) len: u32,
    pub(crate) buffer_index: u16,
    /// Seq of the last entry that ends inside the range.
    pub(crate) last_seq: u64,
}

pub(crate) struct Outbox {
    // Field order matters: `held` borrows `*consumer` and is dropped first.
    held: VecDeque<Held>,
    /// Index in `held` of the first segment not wholly sent.
    first_unsent: usize,
    /// Stream offset after the last segment taken.
    take_pos: u64,
    /// Base address of every log buffer (from `iovecs()`, whose pointers
    /// carry the provenance of the whole mapping).
    bases: Vec<libc::iovec>,
    consumer: Box<LogConsumer>,
}

// SAFETY: `LogConsumer` is `Send` (one thread owns it). The segments in
// `held` borrow only the consumer in this same `Outbox`, which never hands
// them out, so moving the whole box to another thread moves every reference
// together with its referent. `Outbox` stays `!Sync` (the consumer is).
unsafe impl Send for Outbox {}

impl Outbox {
    pub(crate) fn new(consumer: LogConsumer) -> Self {
        let bases = consumer.iovecs();
        Outbox {
            held: VecDeque::new(),
            first_unsent: 0,
            take_pos: STREAM_HEADER_LEN as u64,
            bases,
            consumer: Box::new(consumer),
        }
    }

    pub(crate) fn iovecs(&self) -> &[libc::iovec] {
        &self.bases
    }

    pub(crate) fn consumer(&self) -> &LogConsumer {
        &self.consumer
    }

    /// Stream offset after everything taken so far.
    pub(crate) fn take_pos(&self) -> u64 {
        self.take_pos
    }

    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes every segment published so far.
    pub(crate) fn take_published(&mut self) {
        while let Some(seg) = self.consumer.try_next_segment() {
            // SAFETY: the segment borrows `*self.consumer`, a heap value
            // whose address never changes and that is dropped only after
            // `held` (field order) or leaked with it (`into_leaked`). The
            // 'static segment never leaves this `Outbox`, and is given back
            // to the consumer through `release`, so it cannot outlive it.
            let seg: Segment<'static> =
                unsafe { std::mem::transmute::<Segment<'_>, Segment<'static>>(seg) };
            let start = self.take_pos;
            self.take_pos += seg.len() as u64;
            self.held.push_back(Held { seg, start });
        }
    }

    /// The unsent bytes from stream offset `sent_pos`: the rest of the first
    /// unsent segment, extended over the following segments as long as they
    /// continue it in the same buffer, up to `max` bytes (at least the rest
    /// of one segment).
    pub(crate) fn next_range(&self, sent_pos: u64, max: usize) -> Option<Range> {
        let first = self.held.get(self.first_unsent)?;
        let skip = usize::try_from(sent_pos.checked_sub(first.start)?).ok()?;
        if skip >= first.seg.len() {
            return None;
        }
        let index = first.seg.buffer_index();
        let mut end_off = first.seg.offset() + first.seg.len();
        let mut len = first.seg.len() - skip;
        let mut last_seq = first.seg.last_seq();
        for next in self.held.iter().skip(self.first_unsent + 1) {
            let s = &next.seg;
            if s.buffer_index() != index || s.offset() != end_off || len + s.len() > max {
                break;
            }
            end_off += s.len();
            len += s.len();
            last_seq = s.last_seq();
        }
        let base = self.bases.get(index)?;
        let off = first.seg.offset() + skip;
        Some(Range {
            // In bounds: off + len <= end_off <= the buffer's size.
            ptr: base.iov_base.cast::<u8>().cast_const().wrapping_add(off),
            len: u32::try_from(len).ok()?,
            buffer_index: u16::try_from(index).ok()?,
            last_seq,
        })
    }

    /// Everything before `sent_pos` is sent: returns the segments and
    /// entries that became wholly sent.
    pub(crate) fn mark_sent(&mut self, sent_pos: u64) -> (u64, u64) {
        let (mut segs, mut entries) = (0, 0);
        while let Some(h) = self.held.get(self.first_unsent) {
            if h.end() > sent_pos {
                break;
            }
            segs += 1;
            entries += h.seg.last_seq() + 1 - h.seg.first_seq();
            self.first_unsent += 1;
        }
        (segs, entries)
    }

    /// Releases, in order, every wholly sent segment that ends at or before
    /// `frontier` (the kernel has finished with every byte before it).
    pub(crate) fn release_before(&mut self, frontier: u64) {
        while self.first_unsent > 0 && self.held.front().is_some_and(|h| h.end() <= frontier) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.first_unsent -= 1;
            if let Err(e) = self.consumer.release(h.seg) {
                // Impossible: segments are taken and released in order, all
                // from this consumer.
                tracing::error!("log segment release failed: {e}");
            }
        }
    }

    /// Keeps the consumer, its segments and the buffer mapping alive for
    /// the rest of the process: for memory the kernel may still read.
    pub(crate) fn into_leaked(self) {
        std::mem::forget(self);
    }
}
