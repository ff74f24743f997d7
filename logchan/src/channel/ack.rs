//! The ack: 40 bytes the backup sends back on the logging connection.
//!
//! ```text
//! off 0  [u8; 4] magic "LSAK"
//! off 4  u16     version = 1
//! off 6  u16     flags          bit 0: diverged (below); others 0
//! off 8  u64     acked_seq      last entry received and verified
//! off 16 u64     replayed_seq   last entry the backup has applied
//! off 24 u64     replayed_exit  the backup's exit index
//! off 32 u32     reserved = 0
//! off 36 u32     crc32c over bytes 0..36
//! ```
//!
//! Flag `diverged` (bit 0) is a backup's last word: its replay diverged
//! from the log at exit `replayed_exit`, so it stops and can never take
//! over; the primary ends the connection and treats the backup as lost
//! with that reason (docs/log-format.md).
//!
//! `acked_seq` is what the output rule waits for: the primary releases an
//! output once `acked_seq` reaches the output's tag. Acks are cumulative, so
//! a lost or coalesced ack costs nothing but delay.

use thiserror::Error;

use crate::wire::{check_seal, seal, u16_at, u32_at, u64_at};

/// Bytes of one ack.
pub const ACK_LEN: usize = 40;
pub const ACK_MAGIC: [u8; 4] = *b"LSAK";
pub const ACK_VERSION: u16 = 1;
const CRC_OFF: usize = 36;
/// The backup's replay diverged: this is its last ack.
pub const ACK_FLAG_DIVERGED: u16 = 1;

/// A decoded ack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// Last entry the backup has received and verified.
    pub acked_seq: u64,
    /// Last entry the backup has applied (replayed).
    pub replayed_seq: u64,
    /// The backup's exit index.
    pub replayed_exit: u64,
    /// The backup's replay diverged at `replayed_exit`: it stops.
    pub diverged: bool,
}

/// Why an ack was refused. Any of these ends the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AckError {
    #[error("not an ack (magic {found:02x?})")]
    BadMagic { found: [u8; 4] },
    #[error("ack version {found} is not supported: this build reads version {ACK_VERSION}")]
    UnsupportedVersion { found: u16 },
    #[error("ack crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("ack has flags {flags:#x}; version 1 defines only bit 0 (diverged)")]
    Flags { flags: u16 },
    #[error("ack reserved field is {value:#x}, expected 0")]
    Reserved { value: u32 },
    #[error("acked seq went backwards: {acked} after {previous}")]
    Regressed { previous: u64, acked: u64 },
    #[error("ack for seq {acked}, but only entries up to seq {sent} were sent")]
    Ahead { acked: u64, sent: u64 },
    #[error("ack says seq {replayed} was replayed but only seq {acked} was received")]
    ReplayedAhead { replayed: u64, acked: u64 },
}

impl Ack {
    pub fn encode(&self) -> [u8; ACK_LEN] {
        let mut b = [0u8; ACK_LEN];
        b[0..4].copy_from_slice(&ACK_MAGIC);
        b[4..6].copy_from_slice(&ACK_VERSION.to_le_bytes());
        if self.diverged {
            b[6..8].copy_from_slice(&ACK_FLAG_DIVERGED.to_le_bytes());
        }
        // 32..36 reserved: zero.
        b[8..16].copy_from_slice(&self.acked_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.replayed_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.replayed_exit.to_le_bytes());
        seal(&mut b, CRC_OFF);
        b
    }

    /// Checks magic, version, crc, then the fixed fields (version before
    /// crc, as for the stream header, so another version is named as such).
    pub fn decode(b: &[u8; ACK_LEN]) -> Result<Ack, AckError> {
        let found = [b[0], b[1], b[2], b[3]];
        if found != ACK_MAGIC {
            return Err(AckError::BadMagic { found });
        }
        let version = u16_at(b, 4);
        if version != ACK_VERSION {
            return Err(AckError::UnsupportedVersion { found: version });
        }
        check_seal(b, CRC_OFF)
            .map_err(|(stored, computed)| AckError::BadCrc { stored, computed })?;
        let flags = u16_at(b, 6);
        if flags & !ACK_FLAG_DIVERGED != 0 {
            return Err(AckError::Flags { flags });
        }
        let reserved = u32_at(b, 32);
        if reserved != 0 {
            return Err(AckError::Reserved { value: reserved });
        }
        Ok(Ack {
            acked_seq: u64_at(b, 8),
            replayed_seq: u64_at(b, 16),
            replayed_exit: u64_at(b, 24),
            diverged: flags & ACK_FLAG_DIVERGED != 0,
        })
    }

    /// The sender's plausibility checks: acks never go backwards, never
    /// cover an entry that was not sent (`sent`: the highest seq handed to
    /// the socket), and nothing is replayed before it is received.
    pub fn check(&self, previous: u64, sent: u64) -> Result<(), AckError> {
        if self.acked_seq < previous {
            return Err(AckError::Regressed {
                previous,
                acked: self.acked_seq,
            });
        }
        if self.acked_seq > sent {
            return Err(AckError::Ahead {
                acked: self.acked_seq,
                sent,
            });
        }
        if self.replayed_seq > self.acked_seq {
            return Err(AckError::ReplayedAhead {
                replayed: self.replayed_seq,
                acked: self.acked_seq,
            });
        }
        Ok(())
    }
}
