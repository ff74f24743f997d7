//! The journal writer: turns closed batches into sector-aligned disk writes,
//! one at a time, and compacts when the active half is full.
//!
//! Crash safety, step by step:
//! * a commit is written at `write_sector`, a fresh sector after the last
//!   valid commit; a crash mid-write leaves a commit whose checksum fails,
//!   recovery drops it, and the batch was never acknowledged;
//! * compaction writes a snapshot of the live keys into the *other* half as
//!   generation + 1 commits, and only after that write has completed writes
//!   the superblock of generation + 1 into its slot (generation % 2). Until
//!   that sector is durable the old superblock and the old half are intact
//!   and win; a torn superblock fails its checksum and the old one wins; once
//!   it is durable the new half wins. The old half is never written while it
//!   is the newest valid one.

use alloc::vec::Vec;

use super::format::{CommitBuilder, Layout, Op, SECTOR, Superblock, chain_seed};
use crate::limits::SNAPSHOT_COMMIT_BYTES;
use crate::store::Store;

/// A write the caller must perform: `data` (a whole number of sectors) at
/// `sector`. The caller reports completion with `write_done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWrite {
    pub sector: u64,
    pub data: Vec<u8>,
}

/// Why the journal cannot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// The live data does not fit a half, even compacted.
    Full,
    /// A disk write failed; the journal stopped.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    generation: u64,
    write_sector: u64,
    next_seq: u64,
    prev_crc: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inflight {
    None,
    /// The first superblock of a blank disk.
    Format,
    /// A group commit; on completion the position advances to `after`.
    Commit {
        batch: u64,
        after: Position,
    },
    /// Compaction step 1: the snapshot in the other half.
    Snapshot {
        batch: u64,
        after: Position,
    },
    /// Compaction step 2: the new superblock.
    Flip {
        batch: u64,
        after: Position,
    },
}

/// Counters for INFO and /stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub commits: u64,
    pub bytes_written: u64,
    pub compactions: u64,
}

/// The writer.
#[derive(Debug)]
pub struct Journal {
    layout: Layout,
    pos: Position,
    inflight: Inflight,
    failed: bool,
    pub stats: JournalStats,
}

/// What a completed write achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Nothing new is durable (e.g. the format write).
    Nothing,
    /// Every batch up to and including this one is durable.
    Durable(u64),
    /// A compaction step finished; perform this write next.
    Next(DiskWrite),
}

impl Journal {
    /// A journal for a blank disk: generation 1 in its half, plus the
    /// superblock write that creates it (which must complete first).
    pub fn format(layout: Layout) -> (Journal, DiskWrite) {
        let sb = Superblock::new(layout, 1);
        let j = Journal {
            layout,
            pos: Position {
                generation: 1,
                write_sector: sb.region_start,
                next_seq: 1,
                prev_crc: chain_seed(1),
            },
            inflight: Inflight::Format,
            failed: false,
            stats: JournalStats::default(),
        };
        let w = DiskWrite {
            sector: sb.sector(),
            data: sb.encode(),
        };
        (j, w)
    }

    /// A journal continuing the log that recovery scanned.
    pub fn resume(sb: Superblock, write_sector: u64, next_seq: u64, prev_crc: u32) -> Journal {
        Journal {
            layout: sb.layout(),
            pos: Position {
                generation: sb.generation,
                write_sector,
                next_seq,
                prev_crc,
            },
            inflight: Inflight::None,
            failed: false,
            stats: JournalStats::default(),
        }
    }

    /// Current generation.
    pub fn generation(&self) -> u64 {
        self.pos.generation
    }

    /// The generation records of the open batch must carry: the one the
    /// next commit will be written in. While a compaction is under way that
    /// is the new generation; if the next commit itself compacts, its
    /// records are replaced by the snapshot and never written.
    pub fn record_generation(&self) -> u64 {
        match self.inflight {
            Inflight::Snapshot { after, .. } | Inflight::Flip { after, .. } => after.generation,
            _ => self.pos.generation,
        }
    }

    /// Whether a write is outstanding.
    pub fn busy(&self) -> bool {
        self.inflight != Inflight::None
    }

    /// Whether a write failed (the journal accepts nothing more).
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn region_start(&self) -> u64 {
        self.layout.region_start(self.pos.generation)
    }

    fn region_end(&self) -> u64 {
        self.region_start() + self.layout.half_sectors
    }

    /// Bytes of the active half holding commits.
    pub fn used_bytes(&self) -> u64 {
        (self.pos.write_sector - self.region_start()) * SECTOR as u64
    }

    /// Size of one half in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.layout.half_sectors * SECTOR as u64
    }

    /// Most live data (snapshot bytes) the journal accepts: a snapshot must
    /// always fit a half with room to spare, or compaction would thrash.
    pub fn live_limit(&self) -> u64 {
        self.capacity_bytes() / 4 * 3
    }

    /// Writes batch `batch` (its records in `records`). `store` is the
    /// state after every batch up to `batch`: if the commit does not fit
    /// the active half, a snapshot of it replaces the commit (compaction).
    pub fn commit(
        &mut self,
        batch: u64,
        records: CommitBuilder,
        store: &Store,
        now_ms: u64,
    ) -> Result<DiskWrite, JournalError> {
        if self.failed {
            return Err(JournalError::Failed);
        }
        debug_assert!(!self.busy());
        let sectors = (records.disk_len() / SECTOR) as u64;
        if self.pos.write_sector + sectors <= self.region_end() {
            let p = self.pos;
            let (data, crc) = records.finish(p.generation, p.next_seq, p.prev_crc);
            self.inflight = Inflight::Commit {
                batch,
                after: Position {
                    write_sector: p.write_sector + sectors,
                    next_seq: p.next_seq + 1,
                    prev_crc: crc,
                    ..p
                },
            };
            return Ok(DiskWrite {
                sector: p.write_sector,
                data,
            });
        }
        let (data, after) = self.snapshot(store, now_ms).ok_or(JournalError::Full)?;
        self.inflight = Inflight::Snapshot { batch, after };
        Ok(DiskWrite {
            sector: self.layout.region_start(after.generation),
            data,
        })
    }

    /// Encodes every live key as generation + 1 commits for the other half;
    /// `None` if they do not fit.
    fn snapshot(&self, store: &Store, now_ms: u64) -> Option<(Vec<u8>, Position)> {
        let generation = self.pos.generation + 1;
        let mut out = Vec::with_capacity(store.snapshot_bytes() as usize + 4 * SECTOR);
        let mut seq = 1;
        let mut prev = chain_seed(generation);
        let mut c = CommitBuilder::new();
        let mut flush = |c: CommitBuilder, out: &mut Vec<u8>| {
            let (bytes, crc) = c.finish(generation, seq, prev);
            out.extend_from_slice(&bytes);
            seq += 1;
            prev = crc;
        };
        for (key, e) in store.iter() {
            if e.expired(now_ms) {
                continue;
            }
            c.push(
                generation,
                &Op::Set {
                    key,
                    value: &e.value,
                    expire_at_ms: e.expire_at_ms,
                },
            );
            if c.payload_len() >= SNAPSHOT_COMMIT_BYTES {
                flush(core::mem::take(&mut c), &mut out);
            }
        }
        // Always at least one commit, so the new half is never empty.
        if c.count() > 0 || out.is_empty() {
            flush(c, &mut out);
        }
        let sectors = (out.len() / SECTOR) as u64;
        if sectors > self.layout.half_sectors {
            return None;
        }
        let after = Position {
            generation,
            write_sector: self.layout.region_start(generation) + sectors,
            next_seq: seq,
            prev_crc: prev,
        };
        Some((out, after))
    }

    /// The outstanding write completed (`ok`) or failed.
    pub fn write_done(&mut self, ok: bool, bytes: usize) -> Result<Completion, JournalError> {
        if !ok {
            self.failed = true;
            self.inflight = Inflight::None;
            return Err(JournalError::Failed);
        }
        self.stats.bytes_written += bytes as u64;
        let r = match core::mem::replace(&mut self.inflight, Inflight::None) {
            Inflight::None | Inflight::Format => Completion::Nothing,
            Inflight::Commit { batch, after } => {
                self.pos = after;
                self.stats.commits += 1;
                Completion::Durable(batch)
            }
            Inflight::Snapshot { batch, after } => {
                self.inflight = Inflight::Flip { batch, after };
                let sb = Superblock::new(self.layout, after.generation);
                Completion::Next(DiskWrite {
                    sector: sb.sector(),
                    data: sb.encode(),
                })
            }
            Inflight::Flip { batch, after } => {
                self.pos = after;
                self.stats.compactions += 1;
                Completion::Durable(batch)
            }
        };
        Ok(r)
    }
}
