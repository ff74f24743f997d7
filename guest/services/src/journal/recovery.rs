//! Recovery: find the newest superblock, then scan its half from the start,
//! commit by commit, applying each fully valid commit to the store. The scan
//! stops at the first thing that is not the next commit of this generation
//! and drops it, reporting what it dropped.
//!
//! The scan is driven by the caller, who owns the disk: it asks
//! [`Recovery::next_read`] what to read, reads it, and hands the bytes to
//! [`Recovery::feed`]. Nothing is read past the end of the log.

use alloc::vec::Vec;
use core::fmt;

use super::format::{
    COMMIT_HEADER, HeaderScan, Layout, Op, SECTOR, Superblock, chain_seed, decode_record,
    newest_superblock, round_up, scan_header,
};
use super::writer::Journal;
use crate::crc32c::crc32c;
use crate::store::Store;

/// Sectors the caller should read at boot to find the superblocks.
pub const SUPERBLOCK_READ_SECTORS: u64 = 8;

/// Bytes read per step when the scan does not need more.
const READ_CHUNK: usize = 256 * 1024;

/// How the log ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The scan reached never-written space or the end of the half.
    Clean,
    /// The scan reached old data (an older generation, a commit out of
    /// sequence, or bytes that are no commit): ignored, nothing was lost.
    Stale,
    /// The scan stopped at a commit that is torn or corrupt and dropped it.
    Dropped {
        /// First sector of what was dropped.
        at_sector: u64,
        /// Bytes dropped (the damaged commit as far as it can be known).
        bytes: u64,
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tail::Clean | Tail::Stale => f.write_str("clean"),
            Tail::Dropped {
                at_sector,
                bytes,
                reason,
            } => write!(f, "dropped {bytes} bytes at sector {at_sector} ({reason})"),
        }
    }
}

/// What recovery found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Generation of the recovered log.
    pub generation: u64,
    /// Commits applied.
    pub commits: u64,
    /// Records applied.
    pub records: u64,
    /// Keys in the store after recovery.
    pub keys: usize,
    /// Keys dropped because they had expired by recovery time.
    pub expired: usize,
    /// Bytes of the half in use (valid commits).
    pub used_bytes: u64,
    /// How the log ended.
    pub tail: Tail,
}

/// What the first sectors of the disk say.
#[derive(Debug)]
pub enum Start {
    /// No valid superblock: the disk must be formatted (it is blank, or not
    /// ours). Writing the returned layout's superblock creates the log.
    Blank(Layout),
    /// The disk is too small for a log.
    TooSmall,
    /// A log exists: scan it.
    Scan(Recovery),
}

/// Reads the superblocks (`sectors` = the first
/// [`SUPERBLOCK_READ_SECTORS`] sectors of a disk of `disk_sectors`).
pub fn start(sectors: &[u8], disk_sectors: u64) -> Start {
    match newest_superblock(sectors, disk_sectors) {
        Some(sb) => Start::Scan(Recovery::new(sb)),
        None => match Layout::for_capacity(disk_sectors) {
            Some(l) => Start::Blank(l),
            None => Start::TooSmall,
        },
    }
}

/// An ongoing scan.
#[derive(Debug)]
pub struct Recovery {
    sb: Superblock,
    region_end: u64,
    /// Sector of the next expected commit header (= `buf[off]`).
    pos: u64,
    buf: Vec<u8>,
    off: usize,
    /// Next sector to read (= `pos` + buffered sectors).
    read_next: u64,
    /// Bytes the next step needs buffered, at least.
    want: usize,
    last_seq: u64,
    prev_crc: u32,
    commits: u64,
    records: u64,
    tail: Option<Tail>,
}

impl Recovery {
    fn new(sb: Superblock) -> Self {
        Recovery {
            sb,
            region_end: sb.region_start + sb.region_sectors,
            pos: sb.region_start,
            buf: Vec::new(),
            off: 0,
            read_next: sb.region_start,
            want: COMMIT_HEADER,
            last_seq: 0,
            prev_crc: chain_seed(sb.generation),
            commits: 0,
            records: 0,
            tail: None,
        }
    }

    /// The superblock being recovered.
    pub fn superblock(&self) -> Superblock {
        self.sb
    }

    /// The next read: (first sector, bytes), or `None` when the scan is over.
    pub fn next_read(&self) -> Option<(u64, usize)> {
        if self.tail.is_some() {
            return None;
        }
        let buffered = self.buf.len() - self.off;
        let need = round_up(self.want.saturating_sub(buffered)).max(READ_CHUNK);
        let left = ((self.region_end - self.read_next) as usize).saturating_mul(SECTOR);
        let n = need.min(left);
        (n > 0).then_some((self.read_next, n))
    }

    /// Hands over the bytes of the read [`next_read`](Self::next_read) asked
    /// for (a whole number of sectors) and applies every complete, valid
    /// commit to `store`.
    pub fn feed(&mut self, data: &[u8], store: &mut Store) {
        if self.tail.is_some() {
            return;
        }
        // Drop consumed bytes before growing the buffer, so a long log is
        // scanned with a bounded buffer.
        if self.off > 0 {
            self.buf.drain(..self.off);
            self.off = 0;
        }
        let whole = data.len() / SECTOR * SECTOR;
        self.buf.extend_from_slice(&data[..whole]);
        self.read_next += (whole / SECTOR) as u64;
        self.scan(store);
    }

    fn stop(&mut self, tail: Tail) {
        self.tail = Some(tail);
    }

    fn scan(&mut self, store: &mut Store) {
        loop {
            if self.pos >= self.region_end {
                return self.stop(Tail::Clean);
            }
            let avail = &self.buf[self.off..];
            if avail.len() < COMMIT_HEADER {
                self.want = COMMIT_HEADER;
                if self.read_next >= self.region_end {
                    return self.stop(Tail::Clean);
                }
                return;
            }
            let h = match scan_header(avail) {
                HeaderScan::Zero => return self.stop(Tail::Clean),
                HeaderScan::NoMagic => return self.stop(Tail::Stale),
                HeaderScan::BadChecksum => {
                    return self.stop(Tail::Dropped {
                        at_sector: self.pos,
                        bytes: SECTOR as u64,
                        reason: "corrupt commit header",
                    });
                }
                HeaderScan::Valid(h) => h,
            };
            if h.generation != self.sb.generation
                || h.seq != self.last_seq + 1
                || h.prev_crc != self.prev_crc
            {
                return self.stop(Tail::Stale);
            }
            let len = round_up(COMMIT_HEADER + h.payload_len as usize);
            let room = (self.region_end - self.pos) as usize * SECTOR;
            if len > room {
                return self.stop(Tail::Dropped {
                    at_sector: self.pos,
                    bytes: room as u64,
                    reason: "commit runs past the end of the log",
                });
            }
            if avail.len() < len {
                self.want = len;
                return;
            }
            let payload = &avail[COMMIT_HEADER..COMMIT_HEADER + h.payload_len as usize];
            if crc32c(payload) != h.payload_crc {
                return self.stop(Tail::Dropped {
                    at_sector: self.pos,
                    bytes: len as u64,
                    reason: "torn or corrupt commit",
                });
            }
            // Decode everything before applying anything: a commit is atomic.
            let mut ops: Vec<Op<'_>> = Vec::with_capacity(h.record_count as usize);
            let mut at = 0;
            let mut bad = false;
            while at < payload.len() {
                match decode_record(&payload[at..], self.sb.generation) {
                    Ok((op, n)) => {
                        ops.push(op);
                        at += n;
                    }
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
            if bad || ops.len() != h.record_count as usize {
                return self.stop(Tail::Dropped {
                    at_sector: self.pos,
                    bytes: len as u64,
                    reason: "corrupt record",
                });
            }
            for op in &ops {
                apply(store, op);
            }
            self.records += ops.len() as u64;
            self.commits += 1;
            self.last_seq = h.seq;
            self.prev_crc = h.header_crc;
            self.pos += (len / SECTOR) as u64;
            self.off += len;
            self.want = COMMIT_HEADER;
        }
    }

    /// Whether the scan is over.
    pub fn is_done(&self) -> bool {
        self.tail.is_some()
    }

    /// Ends recovery: drops keys expired at `now_ms` and returns the journal
    /// positioned after the last valid commit, plus the report.
    pub fn finish(self, store: &mut Store, now_ms: u64) -> (Journal, RecoveryReport) {
        let expired = store.drop_expired(now_ms);
        let report = RecoveryReport {
            generation: self.sb.generation,
            commits: self.commits,
            records: self.records,
            keys: store.len(),
            expired,
            used_bytes: (self.pos - self.sb.region_start) * SECTOR as u64,
            tail: self.tail.unwrap_or(Tail::Clean),
        };
        let journal = Journal::resume(self.sb, self.pos, self.last_seq + 1, self.prev_crc);
        (journal, report)
    }
}

/// Applies one record to the store.
pub fn apply(store: &mut Store, op: &Op<'_>) {
    match *op {
        Op::Set {
            key,
            value,
            expire_at_ms,
        } => store.set(key, value.to_vec(), expire_at_ms),
        Op::Del { key } => {
            store.remove(key);
        }
        Op::Append { key, data } => {
            store.append(key, data);
        }
        Op::Expire { key, expire_at_ms } => {
            store.set_expiry(key, expire_at_ms);
        }
        Op::Flush => store.clear(),
    }
}
