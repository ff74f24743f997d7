//! [`StreamDecoder`]: decodes a log stream that arrives in arbitrary chunks
//! (as a TCP receiver gets it). Entries that lie wholly inside a chunk are
//! yielded in place; only an entry (or the stream header) that straddles a
//! chunk boundary is copied, into a carry buffer of at most one entry.
//!
//! ```
//! # use logchan::{StreamDecoder, StreamItem};
//! # fn handle(_: &StreamItem<'_>) {}
//! let mut dec = StreamDecoder::new();
//! for chunk in [&b""[..]] {
//!     let mut feed = dec.feed(chunk);
//!     while let Some(item) = feed.next() {
//!         match item {
//!             Ok(item) => handle(&item),
//!             Err(e) => panic!("{e}"),
//!         }
//!     }
//! }
//! ```

use thiserror::Error;

use crate::decode::{DecodeError, StreamState};
use crate::entry::Record;
use crate::header::{HeaderError, STREAM_HEADER_LEN, StreamHeader};

/// One thing decoded from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamItem<'a> {
    /// The stream header: always first, exactly once. Check it
    /// ([`StreamHeader::check_identity`]) before applying entries.
    Header(StreamHeader),
    Entry(Record<'a>),
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    #[error("bad log stream header")]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Entry(#[from] DecodeError),
}

/// Incremental decoder of one stream (header, then entries).
#[derive(Debug)]
pub struct StreamDecoder {
    /// Bytes held back from earlier chunks: the start of an element (header
    /// or entry) whose end has not arrived, or elements the caller left
    /// unread when it dropped a [`Feed`].
    carry: Vec<u8>,
    /// Bytes at the front of `carry` already yielded; dropped before
    /// decoding goes on (the yielded item borrowed them until then).
    carry_used: usize,
    header: Option<StreamHeader>,
    state: StreamState,
    /// The first error; once set, nothing more is decoded.
    failed: Option<StreamError>,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self {
            carry: Vec::new(),
            carry_used: 0,
            header: None,
            // Replaced once the header tells the first seq.
            state: StreamState::new(1, STREAM_HEADER_LEN as u64),
            failed: None,
        }
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers the next chunk of the stream. Drain the returned [`Feed`] with
    /// `while let Some(item) = feed.next()`; whatever of the chunk is not
    /// consumed when it is dropped (a partial entry, or entries left unread)
    /// is kept for the next chunk.
    pub fn feed<'d>(&'d mut self, chunk: &'d [u8]) -> Feed<'d> {
        Feed {
            dec: self,
            chunk,
            pos: 0,
        }
    }

    /// Call at the end of the stream (connection closed, file ended): an
    /// error if it stopped inside the header or an entry, or failed earlier.
    pub fn finish(&self) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = self.buffered();
        if self.header.is_none() {
            return Err(HeaderError::Incomplete {
                have: pending,
                need: STREAM_HEADER_LEN,
            }
            .into());
        }
        if pending > 0 {
            let rest = &self.carry[self.carry_used..];
            let need = self.state.need(rest).unwrap_or(pending);
            return Err(self.state.incomplete(pending, need).into());
        }
        Ok(())
    }

    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Seq of the last entry yielded.
    pub fn last_seq(&self) -> u64 {
        self.state.last_seq()
    }

    /// Stream offset of the next entry.
    pub fn offset(&self) -> u64 {
        self.state.offset()
    }

    /// The error that stopped decoding, if any.
    pub fn error(&self) -> Option<&StreamError> {
        self.failed.as_ref()
    }

    /// Bytes held back waiting for the rest of an element.
    pub fn buffered(&self) -> usize {
        self.carry.len() - self.carry_used
    }

    /// Bytes the element at the front of `prefix` needs in all, as far as
    /// `prefix` tells.
    fn need(&self, prefix: &[u8]) -> Result<usize, StreamError> {
        if self.header.is_none() {
            Ok(STREAM_HEADER_LEN)
        } else {
            Ok(self.state.need(prefix)?)
        }
    }

    fn fail<T>(&mut self, e: StreamError) -> Option<Result<T, StreamError>> {
        self.failed = Some(e.clone());
        self.carry.clear();
        self.carry_used = 0;
        Some(Err(e))
    }

    /// Forgets the carried bytes that were already yielded.
    fn drop_used(&mut self) {
        if self.carry_used > 0 {
            self.carry.drain(..self.carry_used);
            self.carry_used = 0;
        }
    }
}

/// One chunk being decoded (see [`StreamDecoder::feed`]).
#[derive(Debug)]
pub struct Feed<'d> {
    dec: &'d mut StreamDecoder,
    chunk: &'d [u8],
    pos: usize,
}

impl Feed<'_> {
    /// The next header or entry; `None` when the chunk is used up (or the
    /// stream failed: the error is yielded once).
    #[allow(clippy::should_implement_trait)] // lending: items borrow the Feed
    pub fn next(&mut self) -> Option<Result<StreamItem<'_>, StreamError>> {
        let dec = &mut *self.dec;
        if dec.failed.is_some() {
            return None;
        }
        dec.drop_used();
        if !dec.carry.is_empty() {
            // Complete the carried element from the front of the chunk,
            // copying no byte beyond its end.
            loop {
                let need = match dec.need(&dec.carry) {
                    Ok(n) => n,
                    Err(e) => return dec.fail(e),
                };
                let have = dec.carry.len();
                if have >= need {
                    break;
                }
                let rest = self.chunk.get(self.pos..).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                let take = (need - have).min(rest.len());
                dec.carry.extend_from_slice(&rest[..take]);
                self.pos += take;
            }
            let dec = &mut *self.dec;
            let r = decode_one(&mut dec.header, &mut dec.state, &mut dec.failed, &dec.carry)?;
            return Some(match r {
                Ok((item, used)) => {
                    dec.carry_used = used;
                    Ok(item)
                }
                Err(e) => Err(e),
            });
        }
        let rest = self.chunk.get(self.pos..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        match decode_one(&mut dec.header, &mut dec.state, &mut dec.failed, rest)? {
            Ok((item, used)) => {
                self.pos += used;
                Some(Ok(item))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Decodes one element from `buf`: `None` if `buf` is incomplete (the caller
/// keeps the bytes), the error (recorded in `failed`) if it is corrupt.
fn decode_one<'b>(
    header: &mut Option<StreamHeader>,
    state: &mut StreamState,
    failed: &mut Option<StreamError>,
    buf: &'b [u8],
) -> Option<Result<(StreamItem<'b>, usize), StreamError>> {
    let r = if header.is_none() {
        match StreamHeader::decode(buf) {
            Ok(h) => {
                *header = Some(h);
                *state = StreamState::new(h.first_seq, STREAM_HEADER_LEN as u64);
                Ok((StreamItem::Header(h), STREAM_HEADER_LEN))
            }
            Err(HeaderError::Incomplete { .. }) => return None,
            Err(e) => Err(StreamError::Header(e)),
        }
    } else {
        match state.decode(buf) {
            Ok((rec, used)) => Ok((StreamItem::Entry(rec), used)),
            Err(DecodeError::Incomplete { .. }) => return None,
            Err(e) => Err(StreamError::Entry(e)),
        }
    };
    if let Err(e) = &r {
        *failed = Some(e.clone());
    }
    Some(r)
}

impl Drop for Feed<'_> {
    fn drop(&mut self) {
        let dec = &mut *self.dec;
        if dec.failed.is_some() {
            dec.carry.clear();
            dec.carry_used = 0;
            return;
        }
        dec.drop_used();
        // Unconsumed bytes: usually a partial entry (the only copy this
        // decoder makes); whole entries too if the caller stopped early.
        if let Some(rest) = self.chunk.get(self.pos..) {
            dec.carry.extend_from_slice(rest);
        }
    }
}
