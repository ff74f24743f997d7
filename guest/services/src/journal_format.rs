//! The on-disk format of the key-value log (`journal`), version 1
//! (documented in `docs/guest-services.md`). Everything is little-endian.
//!
//! ```text
//! sector 0, 1      superblock copies (slot = generation % 2)
//! sectors 2..8     unused
//! sectors 8..      two equal halves; generation g writes half g % 2
//! ```
//!
//! A half holds commits back to back, each starting on a fresh sector:
//! a 48-byte commit header, the records, zero padding to the sector end.

use alloc::vec::Vec;

use crate::crc32c::{crc32c, crc32c_append};

/// Bytes per sector.
pub const SECTOR: usize = 512;
/// Format version in the superblock.
pub const FORMAT_VERSION: u32 = 1;
/// Superblock magic.
pub const SB_MAGIC: [u8; 8] = *b"LKSTEPSB";
/// Commit header magic ("LKC1").
pub const COMMIT_MAGIC: u32 = u32::from_le_bytes(*b"LKC1");
/// Size of a commit header.
pub const COMMIT_HEADER: usize = 48;
/// Size of a record header (length, generation, crc).
pub const RECORD_HEADER: usize = 12;
/// First sector of the data halves.
pub const DATA_START: u64 = 8;
/// Smallest half the journal accepts, in sectors (32 KiB).
pub const MIN_HALF_SECTORS: u64 = 64;

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_APPEND: u8 = 3;
const OP_EXPIRE: u8 = 4;
const OP_FLUSH: u8 = 5;

/// Rounds `n` bytes up to whole sectors (in bytes).
pub fn round_up(n: usize) -> usize {
    n.div_ceil(SECTOR) * SECTOR
}

// ---------------------------------------------------------------------------
// Layout and superblock.
// ---------------------------------------------------------------------------

/// Where the two halves lie on a disk of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The disk size the layout was made for, in sectors.
    pub capacity_sectors: u64,
    /// Size of each half, in sectors (a multiple of 8).
    pub half_sectors: u64,
}

impl Layout {
    /// The layout for a disk of `capacity_sectors`, or `None` if too small.
    pub fn for_capacity(capacity_sectors: u64) -> Option<Layout> {
        let half = (capacity_sectors.checked_sub(DATA_START)? / 2) & !7;
        (half >= MIN_HALF_SECTORS).then_some(Layout {
            capacity_sectors,
            half_sectors: half,
        })
    }

    /// First sector of the half that generation `gen` writes.
    pub fn region_start(&self, generation: u64) -> u64 {
        DATA_START + (generation % 2) * self.half_sectors
    }
}

/// One superblock copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub region_start: u64,
    pub region_sectors: u64,
    pub capacity_sectors: u64,
}

impl Superblock {
    /// The superblock of generation `generation` under `layout`.
    pub fn new(layout: Layout, generation: u64) -> Self {
        Superblock {
            generation,
            region_start: layout.region_start(generation),
            region_sectors: layout.half_sectors,
            capacity_sectors: layout.capacity_sectors,
        }
    }

    /// The sector this superblock is written to (its slot).
    pub fn sector(&self) -> u64 {
        self.generation % 2
    }

    /// The layout the superblock describes.
    pub fn layout(&self) -> Layout {
        Layout {
            capacity_sectors: self.capacity_sectors,
            half_sectors: self.region_sectors,
        }
    }

    /// One full sector.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = alloc::vec![0u8; SECTOR];
        s[0..8].copy_from_slice(&SB_MAGIC);
        s[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        s[16..24].copy_from_slice(&self.generation.to_le_bytes());
        s[24..32].copy_from_slice(&self.region_start.to_le_bytes());
        s[32..40].copy_from_slice(&self.region_sectors.to_le_bytes());
        s[40..48].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        let crc = crc32c(&s[0..48]);
        s[48..52].copy_from_slice(&crc.to_le_bytes());
        s
    }

    /// Decodes one sector; `None` unless magic, version, checksum and the
    /// region bounds (inside `disk_sectors`) are all valid.
    pub fn decode(s: &[u8], disk_sectors: u64) -> Option<Self> {
        if s.len() < 52 || s[0..8] != SB_MAGIC || le32(&s[8..12]) != FORMAT_VERSION {
            return None;
        }
        if le32(&s[48..52]) != crc32c(&s[0..48]) {
            return None;
        }
        let sb = Superblock {
            generation: le64(&s[16..24]),
            region_start: le64(&s[24..32]),
            region_sectors: le64(&s[32..40]),
            capacity_sectors: le64(&s[40..48]),
        };
        let layout = Layout::for_capacity(sb.capacity_sectors)?;
        let sane = sb.generation != 0
            && sb.capacity_sectors <= disk_sectors
            && layout.half_sectors == sb.region_sectors
            && layout.region_start(sb.generation) == sb.region_start;
        sane.then_some(sb)
    }
}

/// The newest valid superblock among the two slots (`sectors` holds at
/// least the first two sectors of the disk).
pub fn newest_superblock(sectors: &[u8], disk_sectors: u64) -> Option<Superblock> {
    let a = sectors
        .get(..SECTOR)
        .and_then(|s| Superblock::decode(s, disk_sectors));
    let b = sectors
        .get(SECTOR..2 * SECTOR)
        .and_then(|s| Superblock::decode(s, disk_sectors));
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.generation >= b.generation { a } else { b }),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------
// Records.
// ---------------------------------------------------------------------------

/// One logged change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Absolute: key = value with expiry (0 = none).
    Set {
        key: &'a [u8],
        value: &'a [u8],
        expire_at_ms: u64,
    },
    /// Removes a key.
    Del { key: &'a [u8] },
    /// Appends to a key that was live when logged.
    Append { key: &'a [u8], data: &'a [u8] },
    /// Sets the expiry of a key that was live when logged (0 = persist).
    Expire { key: &'a [u8], expire_at_ms: u64 },
    /// Removes every key.
    Flush,
}

/// Encoded size of a SET record: what one key costs in a snapshot.
pub const fn set_record_len(key: usize, value: usize) -> usize {
    RECORD_HEADER + 1 + 4 + key + 4 + value + 8
}

impl Op<'_> {
    /// Encoded size of the record.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER
            + match self {
                Op::Set { key, value, .. } => 1 + 4 + key.len() + 4 + value.len() + 8,
                Op::Del { key } => 1 + 4 + key.len(),
                Op::Append { key, data } => 1 + 4 + key.len() + 4 + data.len(),
                Op::Expire { key, .. } => 1 + 4 + key.len() + 8,
                Op::Flush => 1,
            }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends the record for `op` in generation `generation`.
pub fn encode_record(out: &mut Vec<u8>, generation: u64, op: &Op<'_>) {
    let start = out.len();
    let body_len = (op.encoded_len() - RECORD_HEADER) as u32;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&(generation as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    match op {
        Op::Set {
            key,
            value,
            expire_at_ms,
        } => {
            out.push(OP_SET);
            put_bytes(out, key);
            put_bytes(out, value);
            out.extend_from_slice(&expire_at_ms.to_le_bytes());
        }
        Op::Del { key } => {
            out.push(OP_DEL);
            put_bytes(out, key);
        }
        Op::Append { key, data } => {
            out.push(OP_APPEND);
            put_bytes(out, key);
            put_bytes(out, data);
        }
        Op::Expire { key, expire_at_ms } => {
            out.push(OP_EXPIRE);
            put_bytes(out, key);
            out.extend_from_slice(&expire_at_ms.to_le_bytes());
        }
        Op::Flush => out.push(OP_FLUSH),
    }
    let crc = crc32c_append(crc32c(&out[start..start + 8]), &out[start + 12..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    Truncated,
    Checksum,
    Generation,
    Malformed,
}

/// Decodes the record at the start of `buf`; returns it and its length.
pub fn decode_record(buf: &[u8], generation: u64) -> Result<(Op<'_>, usize), RecordError> {
    if buf.len() < RECORD_HEADER {
        return Err(RecordError::Truncated);
    }
    let len = le32(&buf[0..4]) as usize;
    let total = RECORD_HEADER
        .checked_add(len)
        .ok_or(RecordError::Malformed)?;
    if buf.len() < total {
        return Err(RecordError::Truncated);
    }
    let crc = crc32c_append(crc32c(&buf[0..8]), &buf[RECORD_HEADER..total]);
    if crc != le32(&buf[8..12]) {
        return Err(RecordError::Checksum);
    }
    if le32(&buf[4..8]) != generation as u32 {
        return Err(RecordError::Generation);
    }
    let mut r = Reader {
        b: &buf[RECORD_HEADER..total],
    };
    let op = match r.u8()? {
        OP_SET => Op::Set {
            key: r.bytes()?,
            value: r.bytes()?,
            expire_at_ms: r.u64()?,
        },
        OP_DEL => Op::Del { key: r.bytes()? },
        OP_APPEND => Op::Append {
            key: r.bytes()?,
            data: r.bytes()?,
        },
        OP_EXPIRE => Op::Expire {
            key: r.bytes()?,
            expire_at_ms: r.u64()?,
        },
        OP_FLUSH => Op::Flush,
        _ => return Err(RecordError::Malformed),
    };
    if !r.b.is_empty() {
        return Err(RecordError::Malformed);
    }
    Ok((op, total))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.b.len() < n {
            return Err(RecordError::Malformed);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(le64(self.take(8)?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = le32(self.take(4)?) as usize;
        self.take(n)
    }
}

// ---------------------------------------------------------------------------
// Commits.
// ---------------------------------------------------------------------------

/// The chain value a generation's first commit must carry as `prev_crc`.
pub fn chain_seed(generation: u64) -> u32 {
    crc32c(&generation.to_le_bytes()) ^ 0x5EED_5EED
}

/// A decoded, checksum-valid commit header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitHeader {
    pub generation: u64,
    pub seq: u64,
    pub prev_crc: u32,
    pub payload_len: u32,
    pub record_count: u32,
    pub payload_crc: u32,
    /// The checksum of this header: the next commit's `prev_crc`.
    pub header_crc: u32,
}

/// What sits where a commit header is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderScan {
    /// All zero: never written.
    Zero,
    /// Not a commit header.
    NoMagic,
    /// The magic is there but the header's checksum is wrong.
    BadChecksum,
    /// A valid header.
    Valid(CommitHeader),
}

/// Reads the commit header at the start of `b` (at least 48 bytes).
pub fn scan_header(b: &[u8]) -> HeaderScan {
    let Some(h) = b.get(..COMMIT_HEADER) else {
        return HeaderScan::NoMagic;
    };
    if h.iter().all(|&x| x == 0) {
        return HeaderScan::Zero;
    }
    if le32(&h[0..4]) != COMMIT_MAGIC {
        return HeaderScan::NoMagic;
    }
    let crc = crc32c(&h[8..48]);
    if crc != le32(&h[4..8]) {
        return HeaderScan::BadChecksum;
    }
    HeaderScan::Valid(CommitHeader {
        generation: le64(&h[8..16]),
        seq: le64(&h[16..24]),
        prev_crc: le32(&h[24..28]),
        payload_len: le32(&h[28..32]),
        record_count: le32(&h[32..36]),
        payload_crc: le32(&h[36..40]),
        header_crc: crc,
    })
}

/// Builds one commit: records are appended after room for the header;
/// `finish` writes the header and pads to a whole sector.
#[derive(Debug)]
pub struct CommitBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl Default for CommitBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl CommitBuilder {
    /// An empty commit.
    pub fn new() -> Self {
        CommitBuilder {
            buf: alloc::vec![0; COMMIT_HEADER],
            count: 0,
        }
    }

    /// Adds one record.
    pub fn push(&mut self, generation: u64, op: &Op<'_>) {
        encode_record(&mut self.buf, generation, op);
        self.count += 1;
    }

    /// Number of records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of records so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - COMMIT_HEADER
    }

    /// Size on disk once finished (header + records + padding).
    pub fn disk_len(&self) -> usize {
        round_up(self.buf.len())
    }

    /// The sector-aligned bytes of the commit and its header checksum.
    pub fn finish(mut self, generation: u64, seq: u64, prev_crc: u32) -> (Vec<u8>, u32) {
        let payload_len = self.payload_len() as u32;
        let payload_crc = crc32c(&self.buf[COMMIT_HEADER..]);
        let h = &mut self.buf[..COMMIT_HEADER];
        h[0..4].copy_from_slice(&COMMIT_MAGIC.to_le_bytes());
        h[8..16].copy_from_slice(&generation.to_le_bytes());
        h[16..24].copy_from_slice(&seq.to_le_bytes());
        h[24..28].copy_from_slice(&prev_crc.to_le_bytes());
        h[28..32].copy_from_slice(&payload_len.to_le_bytes());
        h[32..36].copy_from_slice(&self.count.to_le_bytes());
        h[36..40].copy_from_slice(&payload_crc.to_le_bytes());
        let crc = crc32c(&h[8..48]);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
        let len = round_up(self.buf.len());
        self.buf.resize(len, 0);
        (self.buf, crc)
    }
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip() {
        let ops = [
            Op::Set {
                key: b"k",
                value: b"value",
                expire_at_ms: 7,
            },
            Op::Del { key: b"gone" },
            Op::Append {
                key: b"k",
                data: b"more",
            },
            Op::Expire {
                key: b"k",
                expire_at_ms: 0,
            },
            Op::Flush,
        ];
        let mut buf = Vec::new();
        for op in &ops {
            let before = buf.len();
            encode_record(&mut buf, 3, op);
            assert_eq!(buf.len() - before, op.encoded_len());
        }
        let mut at = 0;
        for op in &ops {
            let (got, n) = decode_record(&buf[at..], 3).expect("decodes");
            assert_eq!(&got, op);
            at += n;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            decode_record(&buf, 4).map(|_| ()),
            Err(RecordError::Generation)
        );
        buf[RECORD_HEADER + 3] ^= 1;
        assert_eq!(
            decode_record(&buf, 3).map(|_| ()),
            Err(RecordError::Checksum)
        );
        assert_eq!(
            decode_record(&buf[..5], 3).map(|_| ()),
            Err(RecordError::Truncated)
        );
    }

    #[test]
    fn set_record_len_matches_encoding() {
        let op = Op::Set {
            key: b"abc",
            value: b"defgh",
            expire_at_ms: 0,
        };
        assert_eq!(op.encoded_len(), set_record_len(3, 5));
    }

    #[test]
    fn superblock_roundtrip_and_newest_wins() {
        let layout = Layout::for_capacity(4096).expect("big enough");
        assert_eq!(layout.half_sectors, 2040);
        let sb1 = Superblock::new(layout, 1);
        let sb2 = Superblock::new(layout, 2);
        assert_eq!(sb1.region_start, DATA_START + layout.half_sectors);
        assert_eq!(sb2.region_start, DATA_START);
        let mut disk = alloc::vec![0u8; 2 * SECTOR];
        disk[SECTOR..].copy_from_slice(&sb1.encode());
        assert_eq!(newest_superblock(&disk, 4096), Some(sb1));
        disk[..SECTOR].copy_from_slice(&sb2.encode());
        assert_eq!(newest_superblock(&disk, 4096), Some(sb2));
        disk[20] ^= 0x40; // corrupt the newer copy: the older one wins
        assert_eq!(newest_superblock(&disk, 4096), Some(sb1));
        assert_eq!(newest_superblock(&disk, 100), None, "disk shrank");
        assert!(Layout::for_capacity(100).is_none());
    }

    #[test]
    fn commit_header_roundtrip() {
        let mut c = CommitBuilder::new();
        c.push(
            5,
            &Op::Set {
                key: b"a",
                value: b"b",
                expire_at_ms: 0,
            },
        );
        let (bytes, crc) = c.finish(5, 9, 1234);
        assert_eq!(bytes.len(), SECTOR);
        match scan_header(&bytes) {
            HeaderScan::Valid(h) => {
                assert_eq!(h.generation, 5);
                assert_eq!(h.seq, 9);
                assert_eq!(h.prev_crc, 1234);
                assert_eq!(h.record_count, 1);
                assert_eq!(h.header_crc, crc);
                assert_eq!(h.payload_len as usize, set_record_len(1, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scan_header(&[0; 64]), HeaderScan::Zero);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(scan_header(&bad), HeaderScan::BadChecksum);
    }
}
