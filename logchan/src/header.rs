//! The 64-byte stream header that opens every log stream (file or socket):
//! it names the format version and the guest the log belongs to, so a
//! replayer refuses a log recorded against another kernel or configuration
//! before it applies a single entry.

use std::fmt;

use thiserror::Error;

use crate::wire::{check_seal, seal, u16_at, u32_at, u64_at};

/// First 8 bytes of every stream.
pub const STREAM_MAGIC: [u8; 8] = *b"LSTPLOG\0";
/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the stream header.
pub const STREAM_HEADER_LEN: usize = 64;

/// Bits of [`StreamHeader::flags`].
pub mod flags {
    /// `BlkDone` entries carry the read data (clear: the backup executes disk
    /// reads itself and `BlkDone` data is empty).
    pub const READ_DATA_LOGGED: u32 = 1 << 0;
    /// Every bit version 1 defines; any other set bit is refused, because it
    /// would announce a behaviour this reader does not implement.
    pub const KNOWN: u32 = READ_DATA_LOGGED;
}

/// Which guest a log belongs to: the replayer must run the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestIdentity {
    /// xxh3-64 of the guest kernel ELF ([`crate::content_hash`]).
    pub kernel_hash: u64,
    /// xxh3-64 of the boot parameters and device configuration the VMM fed
    /// the guest.
    pub boot_hash: u64,
    /// Guest memory size in bytes.
    pub mem_size: u64,
}

/// The decoded stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    pub flags: u32,
    pub identity: GuestIdentity,
    /// FT pair run number; 0 for `lockstep record`.
    pub epoch: u64,
    /// Seq of the first entry in this stream: 1 for a stream from boot; the
    /// primary's next seq for a stream that starts mid-run (a backup that
    /// joins after a live clone).
    pub first_seq: u64,
    /// The primary's output lease in milliseconds: it releases an output
    /// only within this long after sending the log entry the backup's ack
    /// covers, and the backup goes live no sooner than this long after its
    /// last ack (`docs/failover.md`). 0: no lease (a log file).
    pub lease_ms: u32,
}

/// Why a stream header was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeaderError {
    #[error("log ends inside the stream header ({have} of {need} bytes)")]
    Incomplete { have: usize, need: usize },
    #[error("not a lockstep log (magic {found:02x?})")]
    BadMagic { found: [u8; 8] },
    #[error("log format version {found} is not supported: this build reads version {supported}")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("stream header length {found}, expected {STREAM_HEADER_LEN}")]
    BadLength { found: u16 },
    #[error("stream header crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("stream header has unknown flags {flags:#x}")]
    UnknownFlags { flags: u32 },
    #[error("stream header first seq is 0 (seqs start at 1)")]
    ZeroFirstSeq,
}

/// One field that differs between a log and the VMM that wants to replay it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityDiff {
    pub field: IdentityField,
    pub log: u64,
    pub ours: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityField {
    KernelHash,
    BootHash,
    MemSize,
}

impl fmt::Display for IdentityField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentityField::KernelHash => "kernel hash",
            IdentityField::BootHash => "boot/device configuration hash",
            IdentityField::MemSize => "memory size",
        })
    }
}

/// The log was recorded against another guest; lists every field that
/// differs (at least one).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("log was recorded for another guest: {}", describe(.diffs))]
pub struct IdentityMismatch {
    pub diffs: Vec<IdentityDiff>,
}

fn describe(diffs: &[IdentityDiff]) -> String {
    let parts: Vec<String> = diffs
        .iter()
        .map(|d| format!("{} {:#x} in the log, {:#x} here", d.field, d.log, d.ours))
        .collect();
    parts.join("; ")
}

/// Bytes the header crc covers (everything before it).
const CRC_OFF: usize = 60;

impl StreamHeader {
    /// A header for a stream from boot (first seq 1).
    pub fn new(identity: GuestIdentity, flags: u32, epoch: u64) -> Self {
        Self {
            flags,
            identity,
            epoch,
            first_seq: 1,
            lease_ms: 0,
        }
    }

    /// The same header announcing an output lease of `lease_ms`.
    pub fn with_lease_ms(self, lease_ms: u32) -> Self {
        Self { lease_ms, ..self }
    }

    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[0..8].copy_from_slice(&STREAM_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(STREAM_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.identity.kernel_hash.to_le_bytes());
        b[24..32].copy_from_slice(&self.identity.boot_hash.to_le_bytes());
        b[32..40].copy_from_slice(&self.identity.mem_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.epoch.to_le_bytes());
        b[48..56].copy_from_slice(&self.first_seq.to_le_bytes());
        b[56..60].copy_from_slice(&self.lease_ms.to_le_bytes());
        seal(&mut b, CRC_OFF);
        b
    }

    /// Parses the header at the start of `buf` (extra bytes are ignored).
    /// Checks run magic, version, length, crc, then the fields, so a log of
    /// another version is named as such rather than as a crc failure.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        let Some(b) = buf.get(..STREAM_HEADER_LEN) else {
            return Err(HeaderError::Incomplete {
                have: buf.len(),
                need: STREAM_HEADER_LEN,
            });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != STREAM_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let len = u16_at(b, 10);
        if len as usize != STREAM_HEADER_LEN {
            return Err(HeaderError::BadLength { found: len });
        }
        check_seal(b, CRC_OFF)
            .map_err(|(stored, computed)| HeaderError::BadCrc { stored, computed })?;
        let flags = u32_at(b, 12);
        if flags & !flags::KNOWN != 0 {
            return Err(HeaderError::UnknownFlags { flags });
        }
        let first_seq = u64_at(b, 48);
        if first_seq == 0 {
            return Err(HeaderError::ZeroFirstSeq);
        }
        Ok(Self {
            flags,
            identity: GuestIdentity {
                kernel_hash: u64_at(b, 16),
                boot_hash: u64_at(b, 24),
                mem_size: u64_at(b, 32),
            },
            epoch: u64_at(b, 40),
            first_seq,
            lease_ms: u32_at(b, 56),
        })
    }

    /// Refuses a log recorded for another guest than `ours`, naming every
    /// field that differs.
    pub fn check_identity(&self, ours: &GuestIdentity) -> Result<(), IdentityMismatch> {
        let log = &self.identity;
        let diffs: Vec<IdentityDiff> = [
            (IdentityField::KernelHash, log.kernel_hash, ours.kernel_hash),
            (IdentityField::BootHash, log.boot_hash, ours.boot_hash),
            (IdentityField::MemSize, log.mem_size, ours.mem_size),
        ]
        .into_iter()
        .filter(|(_, l, o)| l != o)
        .map(|(field, log, ours)| IdentityDiff { field, log, ours })
        .collect();
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(IdentityMismatch { diffs })
        }
    }

    pub fn read_data_logged(&self) -> bool {
        self.flags & flags::READ_DATA_LOGGED != 0
    }
}
