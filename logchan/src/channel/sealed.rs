//! The sender's side of an authenticated channel: the record layer, the
//! ciphertext buffers sends read, and the one batch being sent.
//!
//! A batch is one plaintext range (the stream header, or contiguous log
//! bytes up to `max_send`) sealed into records in one buffer. It is sent
//! from there, continued after a short send, and its plaintext counts as
//! sent once all of it went. A buffer is written again only once no send
//! (nor a `SEND_ZC` notification) still reads it.

use super::ack::ACK_LEN;
use crate::secure::record::{RECORD_PREFIX, TAG_LEN};
use crate::secure::{RecordError, RecordLayer};

/// Ciphertext buffers: one being sent, two whose `SEND_ZC` notifications
/// may still be on the way.
const BUFFERS: usize = 3;

/// The unsent rest of the current batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unsent {
    pub(crate) ptr: *const u8,
    pub(crate) len: u32,
    pub(crate) buffer_index: u16,
}

#[derive(Debug)]
struct Batch {
    buf: usize,
    len: usize,
    sent: usize,
    /// Stream offset after the plaintext it carries.
    plain_end: u64,
    /// The last entry it carries, until its first send is pushed.
    last_seq: Option<u64>,
}

pub(crate) struct SealedSend {
    layer: RecordLayer,
    bufs: Vec<Box<[u8]>>,
    /// Send operations still reading each buffer.
    readers: Vec<u32>,
    batch: Option<Batch>,
    /// Stream offset of the plaintext sealed so far.
    sealed_pos: u64,
    /// Opened ack (scratch).
    ack_plain: Box<[u8]>,
}

impl SealedSend {
    pub(crate) fn new(layer: RecordLayer, max_send: usize) -> SealedSend {
        let size = RecordLayer::sealed_len(max_send);
        SealedSend {
            layer,
            bufs: (0..BUFFERS)
                .map(|_| vec![0u8; size].into_boxed_slice())
                .collect(),
            readers: vec![0; BUFFERS],
            batch: None,
            sealed_pos: 0,
            ack_plain: vec![0u8; crate::secure::record::MAX_RECORD].into_boxed_slice(),
        }
    }

    pub(crate) fn buffers(&self) -> usize {
        self.bufs.len()
    }

    pub(crate) fn iovecs(&mut self) -> Vec<libc::iovec> {
        self.bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect()
    }

    pub(crate) fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    pub(crate) fn sealed_pos(&self) -> u64 {
        self.sealed_pos
    }

    /// Seals `plain` (the stream's bytes from `sealed_pos`) into a free
    /// buffer as the next batch; `Ok(false)` if every buffer is still
    /// read by a send.
    pub(crate) fn seal_batch(
        &mut self,
        plain: &[u8],
        last_seq: Option<u64>,
    ) -> Result<bool, RecordError> {
        let Some(buf) = self.readers.iter().position(|r| *r == 0) else {
            return Ok(false);
        };
        let len = self.layer.seal(plain, &mut self.bufs[buf])?;
        self.sealed_pos += plain.len() as u64;
        self.batch = Some(Batch {
            buf,
            len,
            sent: 0,
            plain_end: self.sealed_pos,
            last_seq,
        });
        Ok(true)
    }

    /// The batch's bytes not yet accepted by the socket.
    pub(crate) fn unsent(&self) -> Option<Unsent> {
        let b = self.batch.as_ref()?;
        let rest = &self.bufs[b.buf][b.sent..b.len];
        Some(Unsent {
            ptr: rest.as_ptr(),
            len: u32::try_from(rest.len()).ok()?,
            buffer_index: u16::try_from(b.buf).ok()?,
        })
    }

    /// A send of the batch's rest from buffer `buf` was pushed; returns
    /// the last seq the batch carries the first time.
    pub(crate) fn pushed(&mut self, buf: u16) -> Option<u64> {
        let buf = usize::from(buf);
        self.readers[buf] += 1;
        self.batch.as_mut()?.last_seq.take()
    }

    /// The socket accepted `n` more bytes of the batch; the stream offset
    /// its plaintext ends at once the whole batch went.
    pub(crate) fn sent(&mut self, n: u32) -> Option<u64> {
        let b = self.batch.as_mut()?;
        b.sent = (b.sent + n as usize).min(b.len);
        if b.sent < b.len {
            return None;
        }
        let end = b.plain_end;
        self.batch = None;
        Some(end)
    }

    /// A send that read buffer `buf` is done with it (completed and, for
    /// `SEND_ZC`, notified).
    pub(crate) fn retired(&mut self, buf: usize) {
        if let Some(r) = self.readers.get_mut(buf) {
            *r = r.saturating_sub(1);
        }
    }

    /// Opens the first record of `have` as an ack into `raw`: the bytes it
    /// took and the outcome; `None` until the whole record is there.
    pub(crate) fn open_ack(
        &mut self,
        have: &[u8],
        raw: &mut [u8; ACK_LEN],
    ) -> Option<(usize, Result<(), RecordError>)> {
        let prefix = have.get(..RECORD_PREFIX)?;
        let body_len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
        let total = RECORD_PREFIX + body_len;
        if body_len != ACK_LEN + TAG_LEN {
            // Not an ack, whatever it is: refuse it before waiting for it.
            return Some((
                have.len(),
                Err(RecordError::Unexpected {
                    len: body_len.saturating_sub(TAG_LEN),
                    want: ACK_LEN,
                }),
            ));
        }
        let body = have.get(RECORD_PREFIX..total)?;
        let opened = self.layer.open(body, &mut self.ack_plain).and_then(|n| {
            if n == ACK_LEN {
                raw.copy_from_slice(&self.ack_plain[..ACK_LEN]);
                Ok(())
            } else {
                Err(RecordError::Unexpected {
                    len: n,
                    want: ACK_LEN,
                })
            }
        });
        Some((total, opened))
    }

    /// Keeps the buffers allocated for good (the kernel may still read
    /// them, or they are still registered).
    pub(crate) fn into_leaked(self) {
        std::mem::forget(self);
    }
}
