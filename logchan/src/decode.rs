//! Decoding entries: [`decode`] checks one entry on its own (length, crc,
//! kind, payload shape); [`StreamState`] adds what only a stream position
//! knows (seq continuity, exit index order, stream offsets for errors).
//!
//! The rule every reader builds on: a decoded entry is never returned unless
//! its crc matched and every byte of it, padding included, is what the encoder
//! would have written for it.

use thiserror::Error;

use crate::entry::{
    BLK_FIXED_LEN, DIGEST_LEN, DIGEST_REGS, END_LEN, ENTRY_HEADER_LEN, EndReason, Entry,
    EntryHeader, EntryKind, ExitKind, MAX_PAYLOAD, OUTPUT_LEN, OutputKind, Record, SYNC_LEN,
    entry_len_for_payload,
};
use crate::wire::{u16_at, u32_at, u64_at};

/// What is wrong with a corrupt entry.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Corruption {
    #[error("payload length {len} exceeds the maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge { len: u32 },
    #[error("crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("non-zero padding after the payload")]
    Padding,
    #[error("non-zero reserved header field {value:#x}")]
    Reserved { value: u32 },
    #[error("unknown entry kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("unknown exit kind {exit_kind}")]
    UnknownExitKind { exit_kind: u16 },
    #[error("{kind:?} payload is malformed ({len} bytes): {what}")]
    BadPayload {
        kind: EntryKind,
        len: u32,
        what: &'static str,
    },
    #[error("sequence gap: expected seq {expected}, found {found}")]
    SeqGap { expected: u64, found: u64 },
    #[error("exit index went backwards: {found} after {previous}")]
    ExitIndexBackwards { previous: u64, found: u64 },
}

/// Why no entry could be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes stop inside an entry: a torn or truncated tail, or a stream
    /// that has not delivered the rest yet. Not an error of the data itself.
    #[error(
        "log ends at offset {offset} after seq {after_seq} (incomplete entry: {have} of {need} bytes)"
    )]
    Incomplete {
        /// Stream offset where the incomplete entry starts.
        offset: u64,
        /// Last seq decoded before it (0 when none, or for a bare [`decode`]).
        after_seq: u64,
        /// Bytes present from `offset` on.
        have: usize,
        /// Bytes needed to go on: the whole entry once its header is present,
        /// else the header.
        need: usize,
    },
    /// The entry at `offset` is damaged or out of order; nothing at or after
    /// it may be used.
    #[error("corrupt entry seq {seq} at offset {offset}: {reason}")]
    Corrupt {
        /// The seq this entry should carry (inside a stream: the one after
        /// the last good entry; for a bare [`decode`]: the header's own,
        /// unverified, field).
        seq: u64,
        offset: u64,
        reason: Corruption,
    },
}

impl DecodeError {
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

/// Decodes the entry at the start of `buf`; returns it and its encoded length.
/// Errors carry offset 0 and the entry's own seq: use [`StreamState`] for
/// stream positions and continuity checks.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    decode_entry(buf).map_err(|f| f.at(0, 0, None))
}

/// How many bytes the entry starting at `prefix` needs in total, as far as
/// the bytes present tell: the header length until the header is there, then
/// the whole entry. A header whose length field is out of range is corrupt
/// (so no reader waits for, or buffers, more than [`crate::MAX_ENTRY_LEN`]).
pub fn entry_need(prefix: &[u8]) -> Result<usize, DecodeError> {
    need_inner(prefix).map_err(|f| f.at(0, 0, None))
}

/// A decoding failure before it is placed at a stream position.
#[derive(Debug)]
enum Fault {
    Incomplete {
        have: usize,
        need: usize,
    },
    Corrupt {
        claimed_seq: u64,
        reason: Corruption,
    },
}

impl Fault {
    /// `expected_seq`: inside a stream, the seq the entry should carry.
    fn at(self, offset: u64, after_seq: u64, expected_seq: Option<u64>) -> DecodeError {
        match self {
            Fault::Incomplete { have, need } => DecodeError::Incomplete {
                offset,
                after_seq,
                have,
                need,
            },
            Fault::Corrupt {
                claimed_seq,
                reason,
            } => DecodeError::Corrupt {
                seq: expected_seq.unwrap_or(claimed_seq),
                offset,
                reason,
            },
        }
    }
}

fn need_inner(buf: &[u8]) -> Result<usize, Fault> {
    if buf.len() < ENTRY_HEADER_LEN {
        return Ok(ENTRY_HEADER_LEN);
    }
    let len = u32_at(buf, 4);
    if len as usize > MAX_PAYLOAD {
        return Err(Fault::Corrupt {
            claimed_seq: u64_at(buf, 8),
            reason: Corruption::PayloadTooLarge { len },
        });
    }
    Ok(entry_len_for_payload(len as usize))
}

fn decode_entry(buf: &[u8]) -> Result<(Record<'_>, usize), Fault> {
    let total = need_inner(buf)?;
    if buf.len() < total {
        return Err(Fault::Incomplete {
            have: buf.len(),
            need: total,
        });
    }
    let bytes = &buf[..total];
    let claimed_seq = u64_at(bytes, 8);
    let corrupt = |reason| Fault::Corrupt {
        claimed_seq,
        reason,
    };
    let payload_len = u32_at(bytes, 4);
    let end = ENTRY_HEADER_LEN + payload_len as usize;
    let stored = u32_at(bytes, 0);
    let computed = crate::hash::checksum(&bytes[4..end]);
    if stored != computed {
        return Err(corrupt(Corruption::Crc { stored, computed }));
    }
    // Padding is outside the crc; requiring zeros makes every byte of an
    // entry either checked or fixed, so a decoded entry re-encodes exactly.
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(corrupt(Corruption::Padding));
    }
    let reserved = u32_at(bytes, 28);
    if reserved != 0 {
        return Err(corrupt(Corruption::Reserved { value: reserved }));
    }
    let kind_raw = u16_at(bytes, 24);
    let kind = EntryKind::from_u16(kind_raw)
        .ok_or_else(|| corrupt(Corruption::UnknownKind { kind: kind_raw }))?;
    let exit_raw = u16_at(bytes, 26);
    let exit_kind = ExitKind::from_u16(exit_raw).ok_or_else(|| {
        corrupt(Corruption::UnknownExitKind {
            exit_kind: exit_raw,
        })
    })?;
    let entry = decode_payload(kind, &bytes[ENTRY_HEADER_LEN..end]).map_err(|what| {
        corrupt(Corruption::BadPayload {
            kind,
            len: payload_len,
            what,
        })
    })?;
    let header = EntryHeader {
        crc: stored,
        payload_len,
        seq: claimed_seq,
        exit_index: u64_at(bytes, 16),
        kind,
        exit_kind,
    };
    Ok((
        Record {
            header,
            entry,
            bytes,
        },
        total,
    ))
}

/// Parses a payload whose crc already matched; the error names the rule the
/// (well-checksummed, so written by a broken or foreign encoder) payload broke.
fn decode_payload(kind: EntryKind, p: &[u8]) -> Result<Entry<'_>, &'static str> {
    let exact = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err("wrong length for this kind")
        }
    };
    Ok(match kind {
        EntryKind::Sync => {
            exact(SYNC_LEN)?;
            Entry::Sync {
                flags: u32_at(p, 0),
                events: u32_at(p, 4),
                now_ns: u64_at(p, 8),
                deadline_ns: u64_at(p, 16),
            }
        }
        EntryKind::NetRx => Entry::NetRx { frame: p },
        EntryKind::BlkDone => {
            if p.len() < BLK_FIXED_LEN {
                return Err("shorter than its fixed fields");
            }
            if p[3] != 0 {
                return Err("non-zero reserved byte");
            }
            Entry::BlkDone {
                id: u16_at(p, 0),
                status: p[2],
                data: &p[BLK_FIXED_LEN..],
            }
        }
        EntryKind::Output => {
            exact(OUTPUT_LEN)?;
            let what = OutputKind::from_u8(p[0]).ok_or("unknown output kind")?;
            if p[1..4] != [0, 0, 0] {
                return Err("non-zero reserved bytes");
            }
            Entry::Output {
                what,
                len: u32_at(p, 4),
                hash: u64_at(p, 8),
            }
        }
        EntryKind::Digest => {
            exact(DIGEST_LEN)?;
            let mut regs = [0u64; DIGEST_REGS];
            for (i, r) in regs.iter_mut().enumerate() {
                *r = u64_at(p, i * 8);
            }
            Entry::Digest {
                regs,
                output_hash: u64_at(p, DIGEST_REGS * 8),
                mem_hash: u64_at(p, DIGEST_REGS * 8 + 8),
            }
        }
        EntryKind::KeepAlive => {
            exact(0)?;
            Entry::KeepAlive
        }
        EntryKind::End => {
            exact(END_LEN)?;
            let reason = EndReason::from_u32(u32_at(p, 0)).ok_or("unknown end reason")?;
            Entry::End {
                reason,
                status: u32_at(p, 4) as i32,
            }
        }
        EntryKind::Boot => Entry::Boot { config: p },
    })
}

/// Position in a stream of entries: the next expected seq, the last exit
/// index and the stream offset of the next entry. Every reader (file, socket)
/// decodes through one of these so all report the same errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    next_seq: u64,
    last_exit_index: u64,
    offset: u64,
}

impl StreamState {
    /// `first_seq` from the stream header; `offset` = stream offset of the
    /// first entry (the header's length).
    pub fn new(first_seq: u64, offset: u64) -> Self {
        Self {
            next_seq: first_seq,
            last_exit_index: 0,
            offset,
        }
    }

    /// Decodes the entry at the start of `buf`, which sits at [`Self::offset`]
    /// in the stream, and advances past it. On error nothing advances.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<(Record<'a>, usize), DecodeError> {
        let after = self.last_seq();
        let (rec, used) =
            decode_entry(buf).map_err(|f| f.at(self.offset, after, Some(self.next_seq)))?;
        let corrupt = |reason| DecodeError::Corrupt {
            seq: self.next_seq,
            offset: self.offset,
            reason,
        };
        if rec.header.seq != self.next_seq {
            return Err(corrupt(Corruption::SeqGap {
                expected: self.next_seq,
                found: rec.header.seq,
            }));
        }
        if rec.header.exit_index < self.last_exit_index {
            return Err(corrupt(Corruption::ExitIndexBackwards {
                previous: self.last_exit_index,
                found: rec.header.exit_index,
            }));
        }
        self.next_seq += 1;
        self.last_exit_index = rec.header.exit_index;
        self.offset += used as u64;
        Ok((rec, used))
    }

    /// The error for a stream that ends with `have` bytes of an unfinished
    /// entry (`need` as far as known).
    pub fn incomplete(&self, have: usize, need: usize) -> DecodeError {
        DecodeError::Incomplete {
            offset: self.offset,
            after_seq: self.last_seq(),
            have,
            need,
        }
    }

    /// [`entry_need`] placed at this stream position.
    pub fn need(&self, prefix: &[u8]) -> Result<usize, DecodeError> {
        need_inner(prefix).map_err(|f| f.at(self.offset, self.last_seq(), Some(self.next_seq)))
    }

    /// Last seq decoded (first_seq - 1 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.wrapping_sub(1)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn last_exit_index(&self) -> u64 {
        self.last_exit_index
    }

    /// Stream offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}
