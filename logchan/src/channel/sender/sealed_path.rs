//! The sender's sealed path (an authenticated channel): sealing the next
//! plaintext into a ciphertext buffer and sending it, and opening acks
//! from their records. The rest of the engine is `sender.rs`.

use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types};

use super::super::ack::ACK_LEN;
use super::super::error::ChannelError;
use super::super::{SEND_FLAGS, user_data};
use super::{KIND_SEND, SendMode, SendOp, SenderEngine, ZC_PROBE_SEND};
use crate::header::STREAM_HEADER_LEN;
use crate::secure::RecordError;

impl SenderEngine {
    /// The sealed path of `send_next`: seals the next plaintext (the
    /// header, then published log bytes) into a free ciphertext buffer if
    /// no batch is being sent, then sends the batch's unsent rest.
    pub(super) fn send_sealed(&mut self, mode: SendMode, sq: &mut squeue::SubmissionQueue<'_>) {
        let Some(sealed) = self.sealed.as_mut() else {
            return;
        };
        if !sealed.has_batch() {
            let max = if mode.is_zero_copy() && self.opts.mode.is_none() && !self.zc_proven {
                self.opts.max_send.min(ZC_PROBE_SEND)
            } else {
                self.opts.max_send
            };
            let from = sealed.sealed_pos();
            let result = if from < STREAM_HEADER_LEN as u64 {
                sealed.seal_batch(&self.header[from as usize..], None)
            } else {
                match self.outbox.next_range(from, max) {
                    // SAFETY: the range lies in published, held log bytes
                    // the producer does not write until they are released,
                    // which happens only after they are sealed and sent.
                    Some(r) => sealed.seal_batch(
                        unsafe { std::slice::from_raw_parts(r.ptr, r.len as usize) },
                        Some(r.last_seq),
                    ),
                    None => return,
                }
            };
            match result {
                Ok(true) => {}
                // Every ciphertext buffer is still read by the kernel.
                Ok(false) => return,
                Err(e) => {
                    // Cannot happen with buffers sized for `max_send`.
                    tracing::error!("logging channel: sealing failed: {e}");
                    let mut ignore = |_| {};
                    self.close(ChannelError::Record(e), &mut ignore);
                    return;
                }
            }
        }
        let Some(sealed) = self.sealed.as_mut() else {
            return;
        };
        let Some(rest) = sealed.unsent() else { return };
        let fd = types::Fd(self.stream.as_raw_fd());
        let id = self.next_id;
        let e = match mode {
            SendMode::Copy => opcode::Send::new(fd, rest.ptr, rest.len)
                .flags(SEND_FLAGS)
                .build(),
            SendMode::ZeroCopy => opcode::SendZc::new(fd, rest.ptr, rest.len)
                .flags(SEND_FLAGS)
                .zc_flags(self.zc_flags)
                .build(),
            SendMode::ZeroCopyFixed => opcode::SendZc::new(fd, rest.ptr, rest.len)
                .buf_index(Some(self.buf_base + rest.buffer_index))
                .flags(SEND_FLAGS)
                .zc_flags(self.zc_flags)
                .build(),
        }
        .user_data(user_data(self.tag, KIND_SEND, id));
        // SAFETY: the bytes are the unsent rest of a ciphertext buffer the
        // engine owns; it is not written again until every send reading it
        // has completed and, for SEND_ZC, been notified (`SealedSend`
        // counts them; `retire` frees it). For the fixed variant it is
        // registered buffer `buf_base + buffer_index`. `Drop` leaks the
        // buffers while operations are in flight.
        if unsafe { sq.push(&e) }.is_err() {
            return;
        }
        let first_push = sealed.pushed(rest.buffer_index);
        self.next_id += 1;
        self.sending = true;
        self.ops.push_back(SendOp {
            id,
            start: self.sent_pos,
            len: rest.len,
            zc: mode.is_zero_copy(),
            completed: false,
            notif_pending: false,
            notified: false,
            sealed_buf: Some(usize::from(rest.buffer_index)),
        });
        if let Some(seq) = first_push {
            self.note_submitted(seq);
        }
    }

    /// The next whole ack in `ack_buf[*off..ack_have]` (opened from its
    /// record when sealed), advancing `off`; `None` if it has not all come.
    pub(super) fn next_ack(
        &mut self,
        off: &mut usize,
    ) -> Option<Result<[u8; ACK_LEN], RecordError>> {
        let have = &self.ack_buf[*off..self.ack_have];
        let mut raw = [0u8; ACK_LEN];
        match self.sealed.as_mut() {
            None => {
                raw.copy_from_slice(have.get(..ACK_LEN)?);
                *off += ACK_LEN;
                Some(Ok(raw))
            }
            Some(sealed) => {
                let (used, opened) = sealed.open_ack(have, &mut raw)?;
                *off += used;
                Some(opened.map(|()| raw))
            }
        }
    }
}
