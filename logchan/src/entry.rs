//! Log entries: the typed [`Entry`], its 32-byte [`EntryHeader`] and the
//! encoder. The byte layout is specified in `docs/log-format.md`; this file is
//! its single implementation for writing (decode.rs is the one for reading).

use thiserror::Error;

/// Bytes of the fixed entry header.
pub const ENTRY_HEADER_LEN: usize = 32;
/// Largest payload a version-1 entry may carry. A header claiming more is
/// corrupt, which bounds what a reader ever waits for or allocates.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Every encoded entry is padded to a multiple of this, so headers stay
/// 8-byte aligned inside a buffer.
pub const ENTRY_ALIGN: usize = 8;
/// Largest encoded entry (header + maximal payload; already aligned).
pub const MAX_ENTRY_LEN: usize = ENTRY_HEADER_LEN + MAX_PAYLOAD;
/// Number of registers in a [`Entry::Digest`].
pub const DIGEST_REGS: usize = 18;

/// Register order inside [`Entry::Digest`]'s `regs`.
pub mod reg {
    pub const RAX: usize = 0;
    pub const RBX: usize = 1;
    pub const RCX: usize = 2;
    pub const RDX: usize = 3;
    pub const RSI: usize = 4;
    pub const RDI: usize = 5;
    pub const RSP: usize = 6;
    pub const RBP: usize = 7;
    /// r8 is at 8, r9 at 9, … r15 at 15.
    pub const R8: usize = 8;
    pub const R15: usize = 15;
    pub const RIP: usize = 16;
    pub const RFLAGS: usize = 17;
}

/// The `kind` field: which payload follows the header. Kind 4 is reserved
/// (a host-dependent device register read, which no device here has).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum EntryKind {
    Sync = 1,
    NetRx = 2,
    BlkDone = 3,
    Output = 5,
    Digest = 6,
    KeepAlive = 7,
    End = 8,
    Boot = 9,
}

impl EntryKind {
    /// `None` for a value version 1 does not define (the decoder calls such an
    /// entry corrupt rather than skipping it: a replayer that skipped an input
    /// would diverge silently).
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Sync,
            2 => Self::NetRx,
            3 => Self::BlkDone,
            5 => Self::Output,
            6 => Self::Digest,
            7 => Self::KeepAlive,
            8 => Self::End,
            9 => Self::Boot,
            _ => return None,
        })
    }
}

/// The `exit_kind` field: what exit the recorder was handling when the entry
/// took effect, so the replayer can check it stands at the same kind of exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ExitKind {
    /// Not tied to a guest exit (keep-alive, end of recording).
    None = 0,
    SyncPort = 1,
    PioOut = 2,
    PioIn = 3,
    MmioRead = 4,
    MmioWrite = 5,
}

impl ExitKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::SyncPort,
            2 => Self::PioOut,
            3 => Self::PioIn,
            4 => Self::MmioRead,
            5 => Self::MmioWrite,
            _ => return None,
        })
    }
}

/// `Output::what`: which kind of external output was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OutputKind {
    NetFrame = 1,
    DiskWrite = 2,
}

impl OutputKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::NetFrame),
            2 => Some(Self::DiskWrite),
            _ => None,
        }
    }
}

/// `End::reason`: why the recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EndReason {
    /// The guest asked to exit; `status` is its exit status.
    GuestExit = 1,
    /// The host stopped the VM (operator, shutdown, go-live of the backup).
    HostStop = 2,
    /// The VMM hit an error; `status` is a VMM-defined code.
    Error = 3,
}

impl EndReason {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::GuestExit),
            2 => Some(Self::HostStop),
            3 => Some(Self::Error),
            _ => None,
        }
    }
}

/// One non-deterministic input or check, borrowing its byte blobs (a decoded
/// entry points into the buffer it was decoded from: no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// The result of one guest sync call, with the guest's own arguments
    /// (flags, deadline) so a replay that computes different ones is caught
    /// at this exit.
    Sync {
        flags: u32,
        events: u32,
        now_ns: u64,
        deadline_ns: u64,
    },
    /// A received frame delivered into guest memory at this exit.
    NetRx { frame: &'a [u8] },
    /// A disk request completed at this exit; `data` is the read data when
    /// the log carries it, else empty.
    BlkDone { id: u16, status: u8, data: &'a [u8] },
    /// The hash of an output the guest produced at this exit.
    Output {
        what: OutputKind,
        len: u32,
        hash: u64,
    },
    /// A state digest for divergence checks. `mem_hash` 0 = not computed.
    Digest {
        regs: [u64; DIGEST_REGS],
        output_hash: u64,
        mem_hash: u64,
    },
    /// Nothing happened; keeps an idle stream flowing.
    KeepAlive,
    /// The recording ended.
    End { reason: EndReason, status: i32 },
    /// What the guest booted with, as the VMM encodes it (exit index 0,
    /// before any other entry): a replayer builds the identical VM from it.
    Boot { config: &'a [u8] },
}

impl Entry<'_> {
    pub fn kind(&self) -> EntryKind {
        match self {
            Entry::Sync { .. } => EntryKind::Sync,
            Entry::NetRx { .. } => EntryKind::NetRx,
            Entry::BlkDone { .. } => EntryKind::BlkDone,
            Entry::Output { .. } => EntryKind::Output,
            Entry::Digest { .. } => EntryKind::Digest,
            Entry::KeepAlive => EntryKind::KeepAlive,
            Entry::End { .. } => EntryKind::End,
            Entry::Boot { .. } => EntryKind::Boot,
        }
    }

    /// Payload bytes, without header and padding.
    pub fn payload_len(&self) -> usize {
        match self {
            Entry::Sync { .. } => SYNC_LEN,
            Entry::NetRx { frame } => frame.len(),
            Entry::BlkDone { data, .. } => BLK_FIXED_LEN + data.len(),
            Entry::Output { .. } => OUTPUT_LEN,
            Entry::Digest { .. } => DIGEST_LEN,
            Entry::KeepAlive => 0,
            Entry::End { .. } => END_LEN,
            Entry::Boot { config } => config.len(),
        }
    }

    /// Whether this entry can be encoded at all.
    pub fn validate(&self) -> Result<(), EncodeError> {
        let len = self.payload_len();
        if len > MAX_PAYLOAD {
            return Err(EncodeError::PayloadTooLarge { len });
        }
        Ok(())
    }
}

// Fixed payload sizes (see docs/log-format.md for the field offsets).
pub(crate) const SYNC_LEN: usize = 24;
pub(crate) const BLK_FIXED_LEN: usize = 4;
pub(crate) const OUTPUT_LEN: usize = 16;
pub(crate) const DIGEST_LEN: usize = DIGEST_REGS * 8 + 16;
pub(crate) const END_LEN: usize = 8;

/// The decoded 32-byte entry header (only ever built from an entry whose crc
/// matched, or by the encoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub crc: u32,
    pub payload_len: u32,
    pub seq: u64,
    pub exit_index: u64,
    pub kind: EntryKind,
    pub exit_kind: ExitKind,
}

impl EntryHeader {
    /// Bytes the whole entry occupies: header, payload and padding.
    pub fn encoded_len(&self) -> usize {
        entry_len_for_payload(self.payload_len as usize)
    }
}

/// A decoded entry with its header and the exact bytes it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: EntryHeader,
    pub entry: Entry<'a>,
    /// The whole encoded entry, padding included.
    pub bytes: &'a [u8],
}

/// Why an entry could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge { len: usize },
    #[error("entry needs {need} bytes but the buffer has {have}")]
    BufferTooSmall { need: usize, have: usize },
}

/// Encoded size of an entry with a payload of `payload_len` bytes.
pub const fn entry_len_for_payload(payload_len: usize) -> usize {
    (ENTRY_HEADER_LEN + payload_len + ENTRY_ALIGN - 1) & !(ENTRY_ALIGN - 1)
}

/// Encoded size of `entry`: header + payload + padding to 8.
pub fn encoded_len(entry: &Entry<'_>) -> usize {
    entry_len_for_payload(entry.payload_len())
}

/// Encodes `entry` at the start of `buf` and returns the bytes written
/// (always [`encoded_len`]). The whole entry, padding included, is written,
/// so `buf` may hold stale data.
pub fn encode_into(
    buf: &mut [u8],
    seq: u64,
    exit_index: u64,
    exit_kind: ExitKind,
    entry: &Entry<'_>,
) -> Result<usize, EncodeError> {
    entry.validate()?;
    let payload_len = entry.payload_len();
    let total = entry_len_for_payload(payload_len);
    let have = buf.len();
    let Some(out) = buf.get_mut(..total) else {
        return Err(EncodeError::BufferTooSmall { need: total, have });
    };
    let (head, rest) = out.split_at_mut(ENTRY_HEADER_LEN);
    let (payload, pad) = rest.split_at_mut(payload_len);
    // payload_len <= MAX_PAYLOAD (validated), so it fits in u32.
    head[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    head[16..24].copy_from_slice(&exit_index.to_le_bytes());
    head[24..26].copy_from_slice(&(entry.kind() as u16).to_le_bytes());
    head[26..28].copy_from_slice(&(exit_kind as u16).to_le_bytes());
    head[28..32].fill(0);
    write_payload(payload, entry);
    pad.fill(0);
    // Header and payload are contiguous: one crc pass over both.
    let crc = crate::hash::checksum(&out[4..ENTRY_HEADER_LEN + payload_len]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
    Ok(total)
}

/// Writes the payload of `entry`; `p` is exactly `entry.payload_len()` long.
fn write_payload(p: &mut [u8], entry: &Entry<'_>) {
    match *entry {
        Entry::Sync {
            flags,
            events,
            now_ns,
            deadline_ns,
        } => {
            p[0..4].copy_from_slice(&flags.to_le_bytes());
            p[4..8].copy_from_slice(&events.to_le_bytes());
            p[8..16].copy_from_slice(&now_ns.to_le_bytes());
            p[16..24].copy_from_slice(&deadline_ns.to_le_bytes());
        }
        Entry::NetRx { frame } => p.copy_from_slice(frame),
        Entry::BlkDone { id, status, data } => {
            p[0..2].copy_from_slice(&id.to_le_bytes());
            p[2] = status;
            p[3] = 0;
            p[BLK_FIXED_LEN..].copy_from_slice(data);
        }
        Entry::Output { what, len, hash } => {
            p[0] = what as u8;
            p[1..4].fill(0);
            p[4..8].copy_from_slice(&len.to_le_bytes());
            p[8..16].copy_from_slice(&hash.to_le_bytes());
        }
        Entry::Digest {
            ref regs,
            output_hash,
            mem_hash,
        } => {
            for (dst, r) in p.chunks_exact_mut(8).zip(regs.iter()) {
                dst.copy_from_slice(&r.to_le_bytes());
            }
            let o = DIGEST_REGS * 8;
            p[o..o + 8].copy_from_slice(&output_hash.to_le_bytes());
            p[o + 8..o + 16].copy_from_slice(&mem_hash.to_le_bytes());
        }
        Entry::KeepAlive => {}
        Entry::End { reason, status } => {
            p[0..4].copy_from_slice(&(reason as u32).to_le_bytes());
            p[4..8].copy_from_slice(&status.to_le_bytes());
        }
        Entry::Boot { config } => p.copy_from_slice(config),
    }
}
