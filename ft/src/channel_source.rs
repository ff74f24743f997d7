//! The backup's log source: verified stream bytes the I/O thread received,
//! handed to the replaying vCPU thread through an SPSC ring. The replay
//! never runs past what has arrived: with nothing new it waits here.
//!
//! Where the log ends for a backup that goes live is explicit: the **cut**,
//! the highest seq any of its acks covered when it suspected its primary
//! (`plane::BackupPlane`). The replay applies every entry up to the cut —
//! however far behind it is, and wherever those entries still wait — and
//! nothing after it; "the ring is empty right now" is never the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_vmm::dataplane::shared::{VmShared, wait_until};
use lockstep_vmm::replay::cursor::{ChunkSource, SourceError};

use crate::shared::FtShared;

/// How long the waiting vCPU spins before it parks.
const SPIN: Duration = Duration::from_micros(20);
/// How often a starved replay looks for new log data. The I/O thread does
/// not wake it (that would cost the I/O thread a cross-CPU wake-up per
/// chunk); a backup only has to keep up, not to be early.
const POLL: Duration = Duration::from_millis(1);

/// A run of whole, verified entries as received (or the re-encoded stream
/// header, `last_seq` 0).
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub last_seq: u64,
}

/// The stream as the I/O thread hands it on: the header (re-encoded) as
/// the first chunk, then runs of whole, verified entries.
pub struct ChannelChunks {
    rx: rtrb::Consumer<Chunk>,
    ft: Arc<FtShared>,
    shared: Arc<VmShared>,
    /// The last seq handed to the replay.
    delivered: u64,
}

impl ChannelChunks {
    pub fn new(rx: rtrb::Consumer<Chunk>, ft: Arc<FtShared>, shared: Arc<VmShared>) -> Self {
        ChannelChunks {
            rx,
            ft,
            shared,
            delivered: 0,
        }
    }

    /// `chunk` as far as the cut allows (`None`: wholly past it).
    fn up_to_cut(&mut self, mut chunk: Chunk) -> Option<Vec<u8>> {
        if let Some(cut) = self.ft.cut_at()
            && chunk.last_seq > cut
        {
            if self.delivered >= cut {
                return None;
            }
            chunk.bytes.truncate(entries_up_to(&chunk.bytes, cut));
            chunk.last_seq = cut;
        }
        self.delivered = self.delivered.max(chunk.last_seq);
        Some(chunk.bytes)
    }

    /// The log has ended for a backup going live: the cut is made, the
    /// arbiter won, and every entry up to the cut is in the replay's hands.
    fn at_the_cut(&self) -> bool {
        FtShared::flag(&self.ft.go_live) && self.ft.cut_at().is_some_and(|c| self.delivered >= c)
    }
}

/// Bytes of the whole entries in `bytes` whose seq is at most `seq`.
pub fn entries_up_to(mut bytes: &[u8], seq: u64) -> usize {
    let mut len = 0;
    while let Ok((rec, used)) = logchan::decode(bytes) {
        if rec.header.seq > seq {
            break;
        }
        len += used;
        bytes = &bytes[used..];
    }
    len
}

impl ChunkSource for ChannelChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        loop {
            if let Ok(chunk) = self.rx.pop() {
                self.ft.replay_buffer.taken(chunk.bytes.len());
                match self.up_to_cut(chunk) {
                    Some(bytes) => return Ok(Some(bytes)),
                    None => continue,
                }
            }
            // Everything received has been taken: the stream ends here if
            // the backup goes live at its cut, or the primary ended the run.
            if self.at_the_cut() || FtShared::flag(&self.ft.stream_ended) {
                return Ok(None);
            }
            if self.shared.forced() {
                return Err(SourceError::Stopping);
            }
            let (rx, ft, shared) = (&self.rx, &self.ft, &self.shared);
            wait_until(Instant::now() + POLL, SPIN, || {
                !rx.is_empty()
                    || shared.forced()
                    || FtShared::flag(&ft.go_live)
                    || FtShared::flag(&ft.stream_ended)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use logchan::{Entry, ExitKind};

    use super::*;

    fn entries(first: u64, last: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in first..=last {
            let e = Entry::KeepAlive;
            let mut buf = vec![0u8; logchan::encoded_len(&e)];
            logchan::encode_into(&mut buf, seq, 1, ExitKind::SyncPort, &e).unwrap();
            out.extend(buf);
        }
        out
    }

    fn source() -> (ChannelChunks, rtrb::Producer<Chunk>, Arc<FtShared>) {
        let (tx, rx) = rtrb::RingBuffer::new(8);
        let ft = Arc::new(FtShared::default());
        let src = ChannelChunks::new(rx, ft.clone(), Arc::new(VmShared::default()));
        (src, tx, ft)
    }

    #[test]
    fn the_replay_gets_everything_up_to_the_cut_and_nothing_after() {
        let (mut src, mut tx, ft) = source();
        let push = |tx: &mut rtrb::Producer<Chunk>, a, b| {
            tx.push(Chunk {
                bytes: entries(a, b),
                last_seq: b,
            })
            .unwrap()
        };
        push(&mut tx, 1, 3);
        push(&mut tx, 4, 6);
        push(&mut tx, 7, 9);
        ft.set_cut(5, Instant::now());
        ft.set(&ft.go_live);
        assert_eq!(src.next_chunk().unwrap(), Some(entries(1, 3)));
        assert_eq!(
            src.next_chunk().unwrap(),
            Some(entries(4, 5)),
            "cut inside a chunk"
        );
        assert_eq!(src.next_chunk().unwrap(), None, "past the cut: the end");
    }

    #[test]
    fn the_end_waits_for_acked_entries_still_on_their_way() {
        let (mut src, mut tx, ft) = source();
        ft.set_cut(6, Instant::now());
        ft.set(&ft.go_live);
        tx.push(Chunk {
            bytes: entries(1, 3),
            last_seq: 3,
        })
        .unwrap();
        assert_eq!(src.next_chunk().unwrap(), Some(entries(1, 3)));
        assert!(
            !src.at_the_cut(),
            "entries 4..=6 are acked but not here yet"
        );
        tx.push(Chunk {
            bytes: entries(4, 6),
            last_seq: 6,
        })
        .unwrap();
        assert_eq!(src.next_chunk().unwrap(), Some(entries(4, 6)));
        assert_eq!(src.next_chunk().unwrap(), None);
    }
}
