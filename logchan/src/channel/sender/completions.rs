//! The sender's completions: sends (and their zero-copy notifications),
//! acks from the backup, and closing the channel. The rest of the engine is
//! `sender.rs`.

use std::time::Instant;

use io_uring::{cqueue, squeue};

use super::super::ack::Ack;
use super::super::error::ChannelError;
use super::super::{is_transient, user_data_id, user_data_kind, user_data_tag};
use super::{
    KIND_ACK, KIND_SEND, SendMode, SenderEngine, SenderEvent, ZC_COPIED, ZC_COPIED_SWITCH,
};

impl SenderEngine {
    /// Handles a CQE whose `user_data` carries this engine's tag (the whole
    /// CQE: `SEND_ZC` needs its flags), reports through `out`, then pumps.
    pub fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        out: &mut impl FnMut(SenderEvent),
    ) {
        let ud = cqe.user_data();
        if user_data_tag(ud) != self.tag {
            tracing::error!(ud, "logging channel sender: CQE with a foreign tag");
            return;
        }
        match user_data_kind(ud) {
            KIND_SEND => self.on_send(user_data_id(ud), cqe.result(), cqe.flags(), out),
            KIND_ACK => self.on_ack(cqe.result(), out),
            _ => tracing::error!(ud, "logging channel sender: CQE of an unknown kind"),
        }
        self.pump(sq);
    }

    fn on_send(&mut self, id: u64, res: i32, flags: u32, out: &mut impl FnMut(SenderEvent)) {
        let Some(op) = self.ops.iter_mut().find(|o| o.id == id) else {
            tracing::error!(id, "logging channel sender: CQE for a send not in flight");
            return;
        };
        if cqueue::notif(flags) {
            // The kernel no longer reads this send's bytes.
            op.notif_pending = false;
            op.notified = true;
            self.stats.zc_notifications += 1;
            if res as u32 & ZC_COPIED != 0 {
                self.stats.zc_copied += 1;
                self.zc_copied_run += 1;
            } else {
                self.zc_copied_run = 0;
                self.zc_proven = true;
            }
            if self.zc_copied_run >= ZC_COPIED_SWITCH
                && self.opts.mode.is_none()
                && self.mode.is_some_and(|m| m.is_zero_copy())
            {
                tracing::info!(
                    copied = self.zc_copied_run,
                    "SEND_ZC copies on this path anyway: the logging channel switches to plain sends"
                );
                self.mode = Some(SendMode::Copy);
                self.stats.mode = self.mode;
            }
            self.retire();
            return;
        }
        op.completed = true;
        op.notif_pending = op.zc && cqueue::more(flags) && !op.notified;
        let (len, zc) = (op.len, op.zc);
        self.sending = false;
        if res < 0 {
            let errno = -res;
            if self.closed || is_transient(errno) {
                // Nothing was sent; `pump` sends the same bytes again.
            } else if zc
                && errno == libc::EINVAL
                && self.zc_flags != 0
                && self.stats.zc_notifications == 0
            {
                // An older kernel without usage reports: SEND_ZC without
                // them (and without the automatic switch to plain sends).
                tracing::info!("SEND_ZC usage reports refused: zero-copy sends without them");
                self.zc_flags = 0;
            } else if zc
                && self.opts.mode.is_none()
                && self.stats.zc_notifications == 0
                && matches!(errno, libc::EOPNOTSUPP | libc::EINVAL)
            {
                // The probe said SEND_ZC exists but this socket refuses it.
                tracing::warn!(
                    errno,
                    "SEND_ZC refused on the logging channel: falling back to plain sends"
                );
                self.mode = Some(SendMode::Copy);
                self.stats.mode = self.mode;
            } else {
                self.close(ChannelError::socket("send", errno), out);
            }
        } else if res == 0 {
            // A stream send of a non-empty buffer never legitimately sends
            // nothing; retrying could spin forever.
            self.close(ChannelError::socket("send (no progress)", libc::EIO), out);
        } else {
            let n = (res as u32).min(len);
            self.stats.send_ops += 1;
            if n < len {
                self.stats.partial_sends += 1;
            }
            self.stats.bytes_sent += u64::from(n);
            match self.sealed.as_mut() {
                // The plaintext counts as sent once its whole batch is.
                Some(sealed) => match sealed.sent(n) {
                    Some(plain_end) => self.sent_pos = plain_end,
                    None => {
                        self.retire();
                        return;
                    }
                },
                None => self.sent_pos += u64::from(n),
            }
            let (segs, entries) = self.outbox.mark_sent(self.sent_pos);
            self.stats.segments_sent += segs;
            self.stats.entries_sent += entries;
        }
        self.retire();
    }

    /// Retires finished operations from the front and releases every
    /// segment the kernel is done with.
    fn retire(&mut self) {
        while self
            .ops
            .front()
            .is_some_and(|o| o.completed && !o.notif_pending)
        {
            if let Some(op) = self.ops.pop_front()
                && let (Some(buf), Some(sealed)) = (op.sealed_buf, self.sealed.as_mut())
            {
                sealed.retired(buf);
            }
        }
        // No operation still in flight touches a byte before `frontier`.
        // Sealed, no operation reads the log buffers at all.
        let frontier = match self.sealed {
            Some(_) => self.sent_pos,
            None => self.ops.front().map_or(self.sent_pos, |o| o.start),
        };
        self.outbox.release_before(frontier.min(self.sent_pos));
    }

    fn on_ack(&mut self, res: i32, out: &mut impl FnMut(SenderEvent)) {
        self.ack_armed = false;
        if self.closed {
            return;
        }
        if res < 0 {
            let errno = -res;
            if !is_transient(errno) {
                self.close(ChannelError::socket("receive", errno), out);
            }
            return;
        }
        if res == 0 {
            self.close(ChannelError::PeerClosed, out);
            return;
        }
        self.ack_have = (self.ack_have + res as usize).min(self.ack_buf.len());
        let mut off = 0;
        let mut newest = None;
        let mut bad = None;
        loop {
            let raw = match self.next_ack(&mut off) {
                None => break,
                Some(Ok(raw)) => raw,
                Some(Err(e)) => {
                    bad = Some(ChannelError::Record(e));
                    break;
                }
            };
            let checked = Ack::decode(&raw).and_then(|a| {
                a.check(self.acked.acked_seq, self.submitted_seq)
                    .map(|()| a)
            });
            match checked {
                Ok(a) => {
                    self.acked = a;
                    self.stats.acks_received += 1;
                    newest = Some(a);
                }
                Err(e) => {
                    bad = Some(ChannelError::BadAck(e));
                    break;
                }
            }
        }
        // Keep a partial ack for the next receive.
        self.ack_buf.copy_within(off..self.ack_have, 0);
        self.ack_have -= off;
        // Good acks before a bad one in the same receive still count: they
        // were verified, and the output rule may release outputs for them.
        if let Some(a) = newest {
            self.stats.last_ack = Some(Instant::now());
            self.stats.acked_seq = a.acked_seq;
            self.stats.replayed_seq = a.replayed_seq;
            self.stats.replayed_exit = a.replayed_exit;
            let sent_at = self.sent_at(a.acked_seq);
            out(SenderEvent::Acked {
                acked_seq: a.acked_seq,
                replayed_seq: a.replayed_seq,
                replayed_exit: a.replayed_exit,
                sent_at,
            });
            if a.diverged {
                self.close(
                    ChannelError::PeerDiverged {
                        exit: a.replayed_exit,
                    },
                    out,
                );
                return;
            }
        }
        if let Some(e) = bad {
            self.close(e, out);
        }
    }

    pub(super) fn close(&mut self, reason: ChannelError, out: &mut impl FnMut(SenderEvent)) {
        if self.closed {
            return;
        }
        tracing::warn!(error = %reason, sent = self.sent_pos, acked = self.acked.acked_seq, "logging channel closed");
        // Ends the operations still in the ring quickly, and tells the peer.
        self.shutdown();
        out(SenderEvent::Closed { reason });
    }
}
