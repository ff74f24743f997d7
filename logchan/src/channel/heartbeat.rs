//! The heartbeat datagram: 40 bytes over UDP, both directions.
//!
//! ```text
//! off 0  [u8; 4] magic "LSHB"
//! off 4  u16     version = 1
//! off 6  u8      role      1 primary, 2 backup
//! off 7  u8      flags     none defined in version 1; passed through
//! off 8  u64     epoch     FT pair run number
//! off 16 u64     counter   the sender's heartbeat number (1, 2, …)
//! off 24 u64     log_seq   the sender's latest seq (sent, or received)
//! off 32 u32     reserved = 0
//! off 36 u32     crc32c over bytes 0..36
//! ```
//!
//! A heartbeat of another epoch (a stale process of an earlier pair) is
//! ignored and counted by the receiver, never treated as a sign of life.
//!
//! **Version 2** (an authenticated channel) is the same 36 bytes with
//! version = 2, followed by a 32-byte HMAC-SHA256 of them under the
//! sender's heartbeat key of this session (68 bytes; no crc: the MAC
//! covers more). A side with a key accepts only version 2 under its peer's
//! key, and only with a counter above the last one it accepted.

use thiserror::Error;

use crate::secure::{BEAT_MAC_LEN, BeatKey};
use crate::wire::{check_seal, seal, u16_at, u32_at, u64_at};

pub const HEARTBEAT_LEN: usize = 40;
/// Bytes of a signed (version 2) heartbeat.
pub const SIGNED_HEARTBEAT_LEN: usize = CRC_OFF + BEAT_MAC_LEN;
/// The version of a signed heartbeat.
pub const SIGNED_HEARTBEAT_VERSION: u16 = 2;
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"LSHB";
pub const HEARTBEAT_VERSION: u16 = 1;
const CRC_OFF: usize = 36;

/// Which side of the FT pair sent a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Primary = 1,
    Backup = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Primary),
            2 => Some(Role::Backup),
            _ => None,
        }
    }
}

/// A decoded heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub role: Role,
    pub flags: u8,
    pub epoch: u64,
    pub counter: u64,
    pub log_seq: u64,
}

/// Why a datagram is not a heartbeat (it is then ignored and counted).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeartbeatError {
    #[error("heartbeat of {len} bytes, expected {HEARTBEAT_LEN}")]
    Length { len: usize },
    #[error("not a heartbeat (magic {found:02x?})")]
    BadMagic { found: [u8; 4] },
    #[error(
        "heartbeat version {found} is not supported: this build reads version {HEARTBEAT_VERSION}"
    )]
    UnsupportedVersion { found: u16 },
    #[error("heartbeat crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("heartbeat with unknown role {role}")]
    UnknownRole { role: u8 },
    #[error("heartbeat reserved field is {value:#x}, expected 0")]
    Reserved { value: u32 },
    #[error(
        "heartbeat not signed with the peer's key of this session (forged, or from another session)"
    )]
    Forged,
}

impl Heartbeat {
    pub fn encode(&self) -> [u8; HEARTBEAT_LEN] {
        let mut b = [0u8; HEARTBEAT_LEN];
        self.fields(&mut b, HEARTBEAT_VERSION);
        seal(&mut b, CRC_OFF);
        b
    }

    /// The signed (version 2) datagram: the fields, then their MAC under
    /// `key`.
    pub fn encode_signed(&self, key: &BeatKey) -> [u8; SIGNED_HEARTBEAT_LEN] {
        let mut b = [0u8; SIGNED_HEARTBEAT_LEN];
        self.fields(&mut b, SIGNED_HEARTBEAT_VERSION);
        let mac = key.sign(&b[..CRC_OFF]);
        b[CRC_OFF..].copy_from_slice(&mac);
        b
    }

    /// Decodes a signed datagram; anything not signed under `key` is
    /// [`HeartbeatError::Forged`] (checked before any field is believed).
    pub fn decode_signed(b: &[u8], key: &BeatKey) -> Result<Heartbeat, HeartbeatError> {
        if b.len() != SIGNED_HEARTBEAT_LEN {
            return Err(HeartbeatError::Length { len: b.len() });
        }
        if !key.verify(&b[..CRC_OFF], &b[CRC_OFF..]) {
            return Err(HeartbeatError::Forged);
        }
        let version = u16_at(b, 4);
        if version != SIGNED_HEARTBEAT_VERSION {
            return Err(HeartbeatError::UnsupportedVersion { found: version });
        }
        Self::fields_of(b)
    }

    fn fields(&self, b: &mut [u8], version: u16) {
        b[0..4].copy_from_slice(&HEARTBEAT_MAGIC);
        b[4..6].copy_from_slice(&version.to_le_bytes());
        b[6] = self.role as u8;
        b[7] = self.flags;
        b[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.counter.to_le_bytes());
        b[24..32].copy_from_slice(&self.log_seq.to_le_bytes());
    }

    fn fields_of(b: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        let found = [b[0], b[1], b[2], b[3]];
        if found != HEARTBEAT_MAGIC {
            return Err(HeartbeatError::BadMagic { found });
        }
        let role = Role::from_u8(b[6]).ok_or(HeartbeatError::UnknownRole { role: b[6] })?;
        let reserved = u32_at(b, 32);
        if reserved != 0 {
            return Err(HeartbeatError::Reserved { value: reserved });
        }
        Ok(Heartbeat {
            role,
            flags: b[7],
            epoch: u64_at(b, 8),
            counter: u64_at(b, 16),
            log_seq: u64_at(b, 24),
        })
    }

    /// Decodes one datagram (its whole payload: a datagram of another
    /// length is refused, not truncated or padded).
    pub fn decode(b: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        if b.len() != HEARTBEAT_LEN {
            return Err(HeartbeatError::Length { len: b.len() });
        }
        let found = [b[0], b[1], b[2], b[3]];
        if found != HEARTBEAT_MAGIC {
            return Err(HeartbeatError::BadMagic { found });
        }
        let version = u16_at(b, 4);
        if version != HEARTBEAT_VERSION {
            return Err(HeartbeatError::UnsupportedVersion { found: version });
        }
        check_seal(b, CRC_OFF)
            .map_err(|(stored, computed)| HeartbeatError::BadCrc { stored, computed })?;
        Self::fields_of(b)
    }
}
