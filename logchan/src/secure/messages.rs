//! The two messages of a logging channel's opening: the primary's
//! `Attach` (which VM it runs, and its heartbeat key) and the backup's
//! `Verdict` (accepted with its own heartbeat key, or refused with a
//! reason). With a pair key they travel inside the handshake's first
//! encrypted records; with `--insecure`, in the clear.
//!
//! ```text
//! Attach                                  Verdict
//! off 0   u16 kind = 1                    off 0   u16 kind = 2
//! off 2   u16 reserved = 0                off 2   u16 outcome: 1 accepted, 2 refused
//! off 4   u32 boot_len                    off 4   u32 reason_len (≤ 1024)
//! off 8   [u8; 64] stream header          off 8   [u8; 32] backup's heartbeat key
//! off 72  [u8; 32] primary's beat key     off 40  reason, UTF-8
//! off 104 boot configuration (the Boot entry's payload)
//! ```

use crate::header::{STREAM_HEADER_LEN, StreamHeader};
use crate::wire::{u16_at, u32_at};

use super::beat_key::BEAT_KEY_LEN;
use super::handshake::Rejection;

const KIND_ATTACH: u16 = 1;
const KIND_VERDICT: u16 = 2;
const ATTACH_FIXED: usize = 8 + STREAM_HEADER_LEN + BEAT_KEY_LEN;
const VERDICT_FIXED: usize = 8 + BEAT_KEY_LEN;
/// Longest reason a refusal carries.
pub const MAX_REASON: usize = 1024;

/// What a primary asks its backup to follow: the stream header it will
/// send and the guest configuration it booted (both repeated in the
/// stream, where the backup checks they are the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub header: StreamHeader,
    pub boot: Vec<u8>,
}

/// The backup's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Refused(String),
}

pub(crate) fn encode_attach(a: &AttachRequest, beat_key: &[u8; BEAT_KEY_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ATTACH_FIXED + a.boot.len());
    out.extend_from_slice(&KIND_ATTACH.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    // The caller bounds the boot configuration (`MAX_BOOT`).
    out.extend_from_slice(&(a.boot.len() as u32).to_le_bytes());
    out.extend_from_slice(&a.header.encode());
    out.extend_from_slice(beat_key);
    out.extend_from_slice(&a.boot);
    out
}

pub(crate) fn decode_attach(b: &[u8]) -> Result<(AttachRequest, [u8; BEAT_KEY_LEN]), Rejection> {
    let bad = |why: &str| Rejection::Malformed(format!("attach request: {why}"));
    if b.len() < ATTACH_FIXED {
        return Err(bad("too short"));
    }
    if u16_at(b, 0) != KIND_ATTACH || u16_at(b, 2) != 0 {
        return Err(bad("not an attach request"));
    }
    let boot_len = usize::try_from(u32_at(b, 4)).map_err(|_| bad("boot length"))?;
    if b.len() - ATTACH_FIXED != boot_len {
        return Err(bad("boot configuration length does not match"));
    }
    let header = StreamHeader::decode(&b[8..8 + STREAM_HEADER_LEN])
        .map_err(|e| bad(&format!("stream header: {e}")))?;
    let mut key = [0u8; BEAT_KEY_LEN];
    key.copy_from_slice(&b[8 + STREAM_HEADER_LEN..ATTACH_FIXED]);
    Ok((
        AttachRequest {
            header,
            boot: b[ATTACH_FIXED..].to_vec(),
        },
        key,
    ))
}

pub(crate) fn encode_verdict(v: &Verdict, beat_key: &[u8; BEAT_KEY_LEN]) -> Vec<u8> {
    let (outcome, reason) = match v {
        Verdict::Accepted => (1u16, ""),
        Verdict::Refused(r) => (2u16, truncate(r, MAX_REASON)),
    };
    let mut out = Vec::with_capacity(VERDICT_FIXED + reason.len());
    out.extend_from_slice(&KIND_VERDICT.to_le_bytes());
    out.extend_from_slice(&outcome.to_le_bytes());
    out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    out.extend_from_slice(beat_key);
    out.extend_from_slice(reason.as_bytes());
    out
}

pub(crate) fn decode_verdict(b: &[u8]) -> Result<(Verdict, [u8; BEAT_KEY_LEN]), String> {
    if b.len() < VERDICT_FIXED || u16_at(b, 0) != KIND_VERDICT {
        return Err("the backup's answer is not a verdict".into());
    }
    let reason_len = usize::try_from(u32_at(b, 4)).unwrap_or(usize::MAX);
    if reason_len > MAX_REASON || b.len() - VERDICT_FIXED != reason_len {
        return Err("the backup's verdict has a bad reason length".into());
    }
    let mut key = [0u8; BEAT_KEY_LEN];
    key.copy_from_slice(&b[8..VERDICT_FIXED]);
    let reason = String::from_utf8_lossy(&b[VERDICT_FIXED..]).into_owned();
    match u16_at(b, 2) {
        1 => Ok((Verdict::Accepted, key)),
        2 => Ok((Verdict::Refused(reason), key)),
        other => Err(format!("the backup's verdict has unknown outcome {other}")),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
