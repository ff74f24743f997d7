//! The producer side of the log hand-off: the vCPU thread encodes entries in
//! place and publishes them as segments (see buffers.rs for the model).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::buffers::{Counters, LogConfig, LogStats, RawSegment, Shared};
use crate::entry::{EncodeError, Entry, ExitKind, encode_into, encoded_len};
use crate::wait::{Event, Waited};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProducerError {
    #[error("cannot encode entry")]
    Encode(#[from] EncodeError),
    #[error("entry of {len} bytes does not fit in a log buffer of {buffer_size} bytes")]
    EntryTooLarge { len: usize, buffer_size: usize },
    #[error("exit index {exit_index} is before the previous entry's {previous}")]
    ExitIndexBackwards { previous: u64, exit_index: u64 },
    #[error("log buffers still full after {waited:?}: the consumer is not draining")]
    Stalled { waited: Duration },
    #[error("the log consumer has gone away")]
    ConsumerClosed,
}

/// The vCPU side. `Send`, so it can move to the vCPU thread.
#[derive(Debug)]
pub struct LogProducer {
    shared: Arc<Shared>,
    ring: rtrb::Producer<RawSegment>,
    /// Generation of the current buffer (index = generation % count).
    generation: u64,
    write_off: usize,
    /// Start of the bytes not yet published in the current buffer.
    pub_off: usize,
    /// Last assigned seq.
    seq: u64,
    /// Last published seq.
    pub_seq: u64,
    last_exit: u64,
    entries: u64,
    pub_entries: u64,
    bytes: u64,
    spin: Duration,
    stall_timeout: Duration,
    /// The seal marker for the current buffer is already in the ring.
    sealed: bool,
    finished: bool,
}

impl LogProducer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        ring: rtrb::Producer<RawSegment>,
        cfg: &LogConfig,
    ) -> Self {
        let first_seq = cfg.first_seq.max(1);
        Self {
            shared,
            ring,
            generation: 0,
            write_off: 0,
            pub_off: 0,
            seq: first_seq - 1,
            pub_seq: first_seq - 1,
            last_exit: cfg.first_exit_index,
            entries: 0,
            pub_entries: 0,
            bytes: 0,
            spin: cfg.spin,
            stall_timeout: cfg.stall_timeout,
            sealed: false,
            finished: false,
        }
    }

    /// Encodes `entry` in place at the end of the current buffer and returns
    /// its seq. Not visible to the consumer until [`Self::publish`]. Waits
    /// (spin, then park, up to the stall timeout) only when it must move to a
    /// new buffer and none is free.
    pub fn append(
        &mut self,
        exit_index: u64,
        exit_kind: ExitKind,
        entry: &Entry<'_>,
    ) -> Result<u64, ProducerError> {
        if exit_index < self.last_exit {
            return Err(ProducerError::ExitIndexBackwards {
                previous: self.last_exit,
                exit_index,
            });
        }
        entry.validate()?;
        let len = encoded_len(entry);
        let buf_size = self.shared.pool.buf_size;
        if len > buf_size {
            return Err(ProducerError::EntryTooLarge {
                len,
                buffer_size: buf_size,
            });
        }
        if self.write_off + len > buf_size {
            self.next_buffer()?;
        }
        let index = self.index();
        let dst = self.shared.pool.at(index, self.write_off);
        // SAFETY: [write_off, write_off + len) lies inside buffer `index`
        // (checked above). The producer owns that buffer (its generation is
        // below freed + count) and these bytes are unpublished, so the
        // consumer never reads them and no other reference to them exists.
        let out = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        let seq = self.seq + 1;
        encode_into(out, seq, exit_index, exit_kind, entry)?;
        self.seq = seq;
        self.write_off += len;
        self.last_exit = exit_index;
        self.entries += 1;
        self.bytes += len as u64;
        Ok(seq)
    }

    /// Hands everything appended since the last publish to the consumer as
    /// one segment. No-op when nothing is pending. Waits only if the ring of
    /// segment descriptors is full.
    pub fn publish(&mut self) -> Result<(), ProducerError> {
        if self.write_off == self.pub_off {
            return Ok(());
        }
        if self.shared.consumer_closed.load(Ordering::Relaxed) {
            return Err(ProducerError::ConsumerClosed);
        }
        let seg = RawSegment {
            generation: self.generation,
            off: self.pub_off as u32,
            len: (self.write_off - self.pub_off) as u32,
            first_seq: self.pub_seq + 1,
            last_seq: self.seq,
        };
        self.push(seg)?;
        self.pub_off = self.write_off;
        self.pub_seq = self.seq;
        let c = &self.shared.counters;
        // Only this thread writes these: plain stores, no read-modify-write.
        c.entries.store(self.entries, Ordering::Relaxed);
        c.bytes.store(self.bytes, Ordering::Relaxed);
        c.segments
            .store(c.segments.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.pub_entries = self.entries;
        if self.shared.wake_consumer {
            self.shared.notify(&self.shared.to_consumer);
        }
        Ok(())
    }

    /// Last assigned seq (first_seq - 1 before any entry).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Last seq handed to the consumer.
    pub fn published_seq(&self) -> u64 {
        self.pub_seq
    }

    /// Exit index of the last appended entry.
    pub fn last_exit_index(&self) -> u64 {
        self.last_exit
    }

    /// Appended entries not yet published.
    pub fn pending_entries(&self) -> u64 {
        self.entries - self.pub_entries
    }

    pub fn stats(&self) -> LogStats {
        self.shared.counters.snapshot()
    }

    /// Publishes what is pending and tells the consumer no more will come.
    /// Dropping the producer does the same, but cannot report a failure.
    pub fn finish(mut self) -> Result<u64, ProducerError> {
        let r = self.publish();
        self.close();
        r.map(|()| self.seq)
    }

    fn close(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.producer_closed.store(true, Ordering::Release);
            self.shared.notify(&self.shared.to_consumer);
        }
    }

    fn index(&self) -> usize {
        (self.generation % self.shared.pool.count as u64) as usize
    }

    /// Publishes the rest of the current buffer, seals it and moves to the
    /// next generation, waiting until that buffer is free.
    fn next_buffer(&mut self) -> Result<(), ProducerError> {
        self.publish()?;
        if !self.sealed {
            self.push(RawSegment {
                generation: self.generation,
                off: 0,
                len: 0,
                first_seq: 0,
                last_seq: 0,
            })?;
            // A stall below may fail and the caller retry: seal only once.
            self.sealed = true;
        }
        let next = self.generation + 1;
        let shared = &*self.shared;
        let count = shared.pool.count as u64;
        let free = || next < shared.freed.load(Ordering::Acquire) + count;
        if !free() {
            Self::wait_for(
                shared,
                &shared.buffer_freed,
                self.spin,
                self.stall_timeout,
                free,
            )?;
        }
        self.generation = next;
        self.sealed = false;
        self.write_off = 0;
        self.pub_off = 0;
        Ok(())
    }

    fn push(&mut self, seg: RawSegment) -> Result<(), ProducerError> {
        if self.ring.push(seg).is_ok() {
            return Ok(());
        }
        // Ring full: wait for the consumer to take descriptors.
        let ring = &self.ring;
        let shared = &*self.shared;
        Self::wait_for(
            shared,
            &shared.slot_freed,
            self.spin,
            self.stall_timeout,
            || ring.slots() > 0,
        )?;
        self.ring.push(seg).map_err(|_| ProducerError::Stalled {
            waited: Duration::ZERO,
        })
    }

    fn wait_for(
        shared: &Shared,
        event: &Event,
        spin: Duration,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), ProducerError> {
        let c = &shared.counters;
        Counters::bump(&c.stalls, 1);
        let start = Instant::now();
        let closed = || shared.consumer_closed.load(Ordering::Acquire);
        let r = event.wait(|| ready() || closed(), spin, Some(start + timeout));
        let waited = start.elapsed();
        Counters::bump(&c.stall_ns, waited.as_nanos() as u64);
        match r {
            Ok(how) => {
                if how == Waited::Parked {
                    Counters::bump(&c.stall_parks, 1);
                }
                if ready() {
                    Ok(())
                } else {
                    Err(ProducerError::ConsumerClosed)
                }
            }
            Err(()) => Err(ProducerError::Stalled { waited }),
        }
    }
}

impl Drop for LogProducer {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.publish() {
                tracing::warn!(error = %e, seq = self.seq, "log producer dropped with unpublished entries");
            }
            self.close();
        }
    }
}
