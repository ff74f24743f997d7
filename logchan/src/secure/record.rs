//! The record layer of an authenticated channel: after the handshake,
//! every byte either side sends travels in **records**
//!
//! ```text
//! off 0  u16 len          of what follows: ciphertext + 16-byte tag (17 ..= 65535)
//! off 2  [u8; len]        AES-256-GCM of up to 65,519 plaintext bytes, nonce = the
//!                         record's number in its direction (Noise transport message)
//! ```
//!
//! A record is opened whole or not at all: a flipped bit, a record cut,
//! dropped, replayed or moved fails its tag (the nonce is the count of
//! records before it), and the channel ends. The plaintext inside is the
//! same byte stream an unauthenticated channel carries (the log stream one
//! way, acks the other), so nothing above this layer changes.

use thiserror::Error;

/// Bytes of a record's length prefix.
pub const RECORD_PREFIX: usize = 2;
/// Bytes of the AEAD tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// Largest Noise message (prefix not counted).
pub const MAX_RECORD: usize = 65535;
/// Most plaintext bytes one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;

/// Why a record could not be sealed or opened. Any of these ends the
/// channel: the stream cannot be trusted from there on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    #[error(
        "a record failed authentication (not sealed with this session's key: forged, replayed, reordered or damaged)"
    )]
    Forged,
    #[error("a record of {len} bytes is shorter than its tag")]
    Short { len: usize },
    #[error("cannot seal a record: {0}")]
    Seal(String),
    #[error("record output buffer too small: {need} bytes needed, {have} available")]
    NoRoom { need: usize, have: usize },
    #[error("a record of {len} plaintext bytes where a {want}-byte message belongs")]
    Unexpected { len: usize, want: usize },
}

/// One session's transport keys and record counters (both directions).
pub struct RecordLayer {
    transport: snow::TransportState,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("sent", &self.transport.sending_nonce())
            .field("received", &self.transport.receiving_nonce())
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    pub(crate) fn new(transport: snow::TransportState) -> RecordLayer {
        RecordLayer { transport }
    }

    /// Bytes on the wire for `plain` bytes of plaintext.
    pub fn sealed_len(plain: usize) -> usize {
        let records = plain.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
        plain + records * (RECORD_PREFIX + TAG_LEN)
    }

    /// Seals `plain` into as many records as it needs, back to back at the
    /// start of `out`; returns the bytes written. This is the copy an
    /// encrypted channel makes: the cipher reads the plaintext where the
    /// producer wrote it and writes the ciphertext here.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        let need = Self::sealed_len(plain.len());
        if out.len() < need {
            return Err(RecordError::NoRoom {
                need,
                have: out.len(),
            });
        }
        let mut at = 0;
        let mut chunks = plain.chunks(MAX_RECORD_PLAINTEXT);
        let first = chunks.next().unwrap_or_default();
        for chunk in std::iter::once(first).chain(chunks) {
            let body = &mut out[at + RECORD_PREFIX..];
            let n = self
                .transport
                .write_message(chunk, body)
                .map_err(|e| RecordError::Seal(e.to_string()))?;
            // n <= MAX_RECORD: the chunk is at most MAX_RECORD_PLAINTEXT.
            let len = u16::try_from(n).map_err(|_| RecordError::Seal("record too long".into()))?;
            out[at..at + RECORD_PREFIX].copy_from_slice(&len.to_le_bytes());
            at += RECORD_PREFIX + n;
        }
        Ok(at)
    }

    /// Opens one record's body (without its prefix) into `out`; returns
    /// the plaintext's length.
    pub fn open(&mut self, body: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if body.len() < TAG_LEN {
            return Err(RecordError::Short { len: body.len() });
        }
        let need = body.len() - TAG_LEN;
        if out.len() < need {
            return Err(RecordError::NoRoom {
                need,
                have: out.len(),
            });
        }
        self.transport
            .read_message(body, out)
            .map_err(|_| RecordError::Forged)
    }
}

/// Reassembles records from a byte stream that arrives in arbitrary
/// chunks and opens each whole one. A record split across two chunks is
/// copied once into a staging buffer; the rest are opened in place.
#[derive(Debug)]
pub struct RecordReader {
    /// The start of a record whose end has not arrived yet.
    partial: Vec<u8>,
}

impl Default for RecordReader {
    fn default() -> Self {
        RecordReader {
            partial: Vec::with_capacity(RECORD_PREFIX + MAX_RECORD),
        }
    }
}

impl RecordReader {
    /// Most plaintext one `feed` of `chunk` bytes can produce (for sizing
    /// `out`): the chunk, plus a record held back from before.
    pub fn max_plain(chunk: usize) -> usize {
        chunk + RECORD_PREFIX + MAX_RECORD
    }

    /// Whether a record has started and not ended.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Opens every record that `chunk` completes, writing their plaintext
    /// to `out` back to back; returns its length. On an error nothing
    /// further may be trusted.
    pub fn feed(
        &mut self,
        layer: &mut RecordLayer,
        mut chunk: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        let mut written = 0;
        if !self.partial.is_empty() {
            // Complete the held record first: its prefix, then its body.
            let need_prefix = RECORD_PREFIX.saturating_sub(self.partial.len());
            let take = need_prefix.min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.partial.len() < RECORD_PREFIX {
                return Ok(0);
            }
            let total = RECORD_PREFIX + record_len(&self.partial);
            let take = (total - self.partial.len()).min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.partial.len() < total {
                return Ok(0);
            }
            written += layer.open(&self.partial[RECORD_PREFIX..], &mut out[written..])?;
            self.partial.clear();
        }
        while chunk.len() >= RECORD_PREFIX {
            let total = RECORD_PREFIX + record_len(chunk);
            if chunk.len() < total {
                break;
            }
            written += layer.open(&chunk[RECORD_PREFIX..total], &mut out[written..])?;
            chunk = &chunk[total..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(written)
    }
}

/// The body length a record's prefix announces.
fn record_len(b: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([b[0], b[1]]))
}
