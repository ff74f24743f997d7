//! The keys that sign heartbeats. Each side draws a fresh random key for
//! its own beats when a session begins and gives it to its peer inside the
//! authenticated, encrypted handshake: a beat is accepted only if it
//! carries an HMAC-SHA256 under the peer's key of this session, so a beat
//! forged without the key or replayed from another session is refused,
//! and one replayed within the session is refused by its counter.

use ring::hmac;

use super::key::{KeyError, fill_random, wipe};

/// Bytes of a heartbeat key.
pub const BEAT_KEY_LEN: usize = 32;
/// Bytes of the MAC a signed heartbeat carries (the whole HMAC-SHA256).
pub const BEAT_MAC_LEN: usize = 32;

/// One direction's heartbeat key.
#[derive(Clone)]
pub struct BeatKey {
    raw: [u8; BEAT_KEY_LEN],
    key: hmac::Key,
}

impl std::fmt::Debug for BeatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeatKey(..)")
    }
}

impl BeatKey {
    pub fn from_bytes(raw: [u8; BEAT_KEY_LEN]) -> BeatKey {
        BeatKey {
            raw,
            key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
        }
    }

    pub fn generate() -> Result<BeatKey, KeyError> {
        let mut raw = [0u8; BEAT_KEY_LEN];
        fill_random(&mut raw)?;
        Ok(BeatKey::from_bytes(raw))
    }

    pub(crate) fn raw(&self) -> &[u8; BEAT_KEY_LEN] {
        &self.raw
    }

    /// The MAC of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; BEAT_MAC_LEN] {
        let tag = hmac::sign(&self.key, msg);
        let mut out = [0u8; BEAT_MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `mac` is `msg`'s MAC (ring compares in constant time).
    pub fn verify(&self, msg: &[u8], mac: &[u8]) -> bool {
        hmac::verify(&self.key, msg, mac).is_ok()
    }
}

impl Drop for BeatKey {
    fn drop(&mut self) {
        wipe(&mut self.raw);
    }
}

/// The heartbeat keys of one session: ours signs what we send, the peer's
/// checks what we receive.
#[derive(Clone, Debug)]
pub struct BeatKeys {
    pub ours: BeatKey,
    pub peers: BeatKey,
}
