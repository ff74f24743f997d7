//! [`SenderEngine`]: the primary's end of the logging channel, on the I/O
//! thread's io_uring.
//!
//! It sends the stream header once, then every published segment in order,
//! as it is, from the log buffers: no copy in user space, and with
//! `IORING_OP_SEND_ZC` from registered buffers none in the kernel either
//! (where the NIC can do it; loopback always copies). A segment goes back
//! to the producer only when the kernel is done with its bytes: after its
//! send completed and, for `SEND_ZC`, after the notification CQE.
//!
//! **One send in flight.** io_uring does not order independent SQEs on one
//! socket (a send that meets a full socket buffer is retried from poll,
//! and a later one may overtake it), and a short send followed by an
//! already queued one would interleave bytes. So exactly one send is in the
//! ring at a time; under load it covers every contiguous published byte of
//! a buffer (segments of one buffer are adjacent), up to `max_send`, so
//! throughput does not depend on how finely the producer publishes.
//! `SEND_ZC` notifications may lag: the next send does not wait for them.
//!
//! **Zero copy only where it is one.** Each notification reports whether
//! the kernel had to copy after all (`IORING_SEND_ZC_REPORT_USAGE`). On
//! loopback or veth into another namespace it always does, and then
//! SEND_ZC is slower than a plain send; an automatically chosen zero-copy
//! mode therefore switches to plain sends after a run of copied
//! notifications (logged). A forced mode is kept. Until a notification has
//! shown a send that was really not copied, an automatically chosen
//! zero-copy mode sends at most `ZC_PROBE_SEND` bytes at a time: the run
//! of copied notifications that decides the switch then costs a few MiB of
//! slow sends on a path that copies, not `ZC_COPIED_SWITCH` full-size ones.
//!
//! One receive stays armed for acks (they may arrive split or batched).
//!
//! **Sealed** ([`SenderEngine::secured`], an authenticated channel): the
//! stream is sealed into records before it is sent. Sealing is the one
//! copy: the cipher reads the bytes where the producer encoded them and
//! writes the ciphertext into one of the engine's own send buffers, which
//! are what gets registered and sent (`SEND_ZC` from them where it pays),
//! and the log segments go back to the producer as soon as their bytes are
//! sealed and sent. A short send continues from the same ciphertext (a
//! record is never sealed twice: its nonce is its number). Acks come back
//! as records too.

use std::collections::VecDeque;
use std::fmt;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{Submitter, opcode, squeue, types};

use super::ack::Ack;
use super::error::SetupError;
use super::fixed::{self, Registration};
use super::outbox::Outbox;
use super::sealed::SealedSend;

mod completions;
mod sealed_path;
pub use super::sender_types::{SendMode, SenderEvent, SenderOptions, SenderStats};
use super::{SEND_FLAGS, configure_stream, probe, user_data};
use crate::buffers::LogStats;
use crate::consumer::LogConsumer;
use crate::header::{STREAM_HEADER_LEN, StreamHeader};
use crate::secure::RecordLayer;

const KIND_SEND: u8 = 1;
const KIND_ACK: u8 = 2;
/// Receive buffer for acks: room for a hundred batched acks.
const ACK_BUF_LEN: usize = 4096;
/// `IORING_SEND_ZC_REPORT_USAGE`: the notification says whether the kernel
/// had to copy after all.
const ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`, in the notification's result.
const ZC_COPIED: u32 = 1 << 31;
/// Consecutive notifications saying "copied" after which an automatically
/// chosen zero-copy mode gives way to plain sends: the path copies anyway
/// (loopback, veth into another namespace, a NIC without scatter-gather or
/// checksum offload), and then SEND_ZC only adds page pinning and a second
/// CQE per send (measured on loopback: about half the throughput of plain
/// sends). A forced mode never changes.
const ZC_COPIED_SWITCH: u64 = 64;
/// Largest SEND_ZC of an automatically chosen zero-copy mode until a
/// notification has reported a send the kernel did not copy. On a path
/// that copies, the `ZC_COPIED_SWITCH` probes then carry 1 MiB instead of up
/// to `max_send` each (64 MiB with the default). Measured on a veth between
/// two namespaces (every SEND_ZC copied, at about half the speed of a plain
/// send), 256 MiB through a fresh connection, alternating with raw TCP:
/// 0.73 of raw with full-size probes against 0.88 with plain sends forced;
/// with 16 KiB probes the automatic mode matches forced plain sends. Where
/// zero copy works, only the sends before the first notification are small.
const ZC_PROBE_SEND: usize = 16 << 10;

#[derive(Debug)]
struct SendOp {
    id: u64,
    /// Stream offset of its first byte, and how many it asked to send.
    start: u64,
    len: u32,
    zc: bool,
    completed: bool,
    notif_pending: bool,
    /// The notification came (the kernel posts it after the completion;
    /// not relying on that order costs one flag).
    notified: bool,
    /// Sealed: the ciphertext buffer it reads.
    sealed_buf: Option<usize>,
}

/// The primary's logging-channel engine (see the module docs).
pub struct SenderEngine {
    stream: TcpStream,
    tag: u8,
    opts: SenderOptions,
    /// Encoded stream header; read by the kernel while its send is in
    /// flight.
    header: Box<[u8]>,
    outbox: ManuallyDrop<Outbox>,
    mode: Option<SendMode>,
    /// How the log buffers are registered (`None`: not registered).
    registered: Option<Registration>,
    /// Table slot of log buffer 0.
    buf_base: u16,
    /// Send operations not yet retired, in submission order.
    ops: VecDeque<SendOp>,
    next_id: u64,
    /// A send SQE is in the ring and its first CQE has not arrived.
    sending: bool,
    /// Stream bytes the socket has accepted.
    sent_pos: u64,
    /// Highest seq whose bytes were put into a send SQE: no ack may exceed it.
    submitted_seq: u64,
    /// For each send SQE that carried entries: the last seq it carried and
    /// when it was pushed, oldest first, until acked (for `sent_at`).
    send_times: VecDeque<(u64, Instant)>,
    /// The backup is gone: published log is released unsent.
    discarding: bool,
    ack_buf: Box<[u8]>,
    /// Bytes of a partial ack at the front of `ack_buf`.
    ack_have: usize,
    ack_armed: bool,
    acked: Ack,
    closed: bool,
    /// Notifications in a row that said the kernel copied.
    zc_copied_run: u64,
    /// A notification has said the kernel did not copy: zero-copy works on
    /// this path, sends go full size.
    zc_proven: bool,
    /// `zc_flags` of SEND_ZC: usage reports, until a kernel refuses them
    /// (6.0 and 6.1 have SEND_ZC but not `IORING_SEND_ZC_REPORT_USAGE`).
    zc_flags: u16,
    /// An authenticated channel's record layer and ciphertext buffers.
    sealed: Option<SealedSend>,
    stats: SenderStats,
}

impl fmt::Debug for SenderEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderEngine")
            .field("tag", &self.tag)
            .field("mode", &self.mode)
            .field("sent_pos", &self.sent_pos)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SenderEngine {
    /// An engine on a connected stream. `header` is sent first, exactly
    /// once; its `first_seq` must be the consumer's first seq. CQEs carry
    /// `tag` in the top byte of `user_data`. Nothing happens until
    /// [`Self::attach`].
    ///
    /// The socket is switched to blocking mode with `TCP_NODELAY`: io_uring
    /// then waits for socket space itself (internal poll) instead of
    /// completing with `EAGAIN`; no thread ever blocks on it.
    pub fn new(
        stream: TcpStream,
        consumer: LogConsumer,
        header: StreamHeader,
        tag: u8,
        opts: SenderOptions,
    ) -> Result<SenderEngine, SetupError> {
        configure_stream(&stream)?;
        if opts.max_send == 0 {
            return Err(SetupError::Config {
                what: "max_send",
                why: "must be at least 1 byte",
            });
        }
        let before_first = header.first_seq.saturating_sub(1);
        Ok(SenderEngine {
            stream,
            tag,
            opts: SenderOptions {
                max_send: opts.max_send.min(u32::MAX as usize),
                ..opts
            },
            header: header.encode().to_vec().into_boxed_slice(),
            outbox: ManuallyDrop::new(Outbox::new(consumer)),
            mode: None,
            registered: None,
            buf_base: 0,
            ops: VecDeque::new(),
            next_id: 0,
            sending: false,
            sent_pos: 0,
            submitted_seq: before_first,
            send_times: VecDeque::new(),
            discarding: false,
            ack_buf: vec![0u8; ACK_BUF_LEN].into_boxed_slice(),
            ack_have: 0,
            ack_armed: false,
            acked: Ack {
                acked_seq: before_first,
                replayed_seq: before_first,
                replayed_exit: 0,
                diverged: false,
            },
            closed: false,
            zc_copied_run: 0,
            zc_proven: false,
            zc_flags: ZC_REPORT_USAGE,
            sealed: None,
            stats: SenderStats::default(),
        })
    }

    /// Seals everything this engine sends with `records` (an authenticated
    /// session's record layer) and opens the acks with it. Call before
    /// `attach`.
    pub fn secured(mut self, records: Option<RecordLayer>) -> Self {
        self.sealed = records.map(|r| SealedSend::new(r, self.opts.max_send));
        self
    }

    /// Whether the stream is sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Picks the send mode (probing the ring's opcodes) and, for
    /// [`SendMode::ZeroCopyFixed`], registers the log buffers as `how`
    /// says. Call once, on the thread that owns the ring, before the first
    /// `pump`. Without a forced mode, a failed registration falls back to
    /// [`SendMode::ZeroCopy`] (logged); a missing `SEND_ZC` to
    /// [`SendMode::Copy`].
    pub fn attach(
        &mut self,
        submitter: &Submitter<'_>,
        how: Registration,
    ) -> Result<SendMode, SetupError> {
        if self.mode.is_some() {
            return Err(SetupError::AlreadyAttached);
        }
        let zc = probe(submitter)?.is_supported(opcode::SendZc::CODE);
        let no_zc = SetupError::Unsupported {
            mode: "zero-copy send",
            opcode: "IORING_OP_SEND_ZC",
        };
        let mode = match self.opts.mode {
            Some(SendMode::Copy) => SendMode::Copy,
            Some(SendMode::ZeroCopy) if zc => SendMode::ZeroCopy,
            Some(SendMode::ZeroCopyFixed) if zc => {
                if how == Registration::None {
                    return Err(SetupError::Config {
                        what: "registration",
                        why: "SEND_ZC from registered buffers needs a buffer table",
                    });
                }
                self.register(submitter, how)?;
                SendMode::ZeroCopyFixed
            }
            Some(_) => return Err(no_zc),
            None if zc && how != Registration::None => match self.register(submitter, how) {
                Ok(()) => SendMode::ZeroCopyFixed,
                Err(e) => {
                    tracing::warn!(error = %e, "log buffers not registered: SEND_ZC without them");
                    SendMode::ZeroCopy
                }
            },
            None if zc => SendMode::ZeroCopy,
            None => SendMode::Copy,
        };
        self.mode = Some(mode);
        self.stats.mode = Some(mode);
        tracing::info!(mode = %mode, "logging channel sender attached");
        Ok(mode)
    }

    fn register(&mut self, submitter: &Submitter<'_>, how: Registration) -> Result<(), SetupError> {
        // SAFETY: the iovecs describe the log buffers, one mapping owned by
        // the consumer's shared state. The outbox owns the consumer, and the
        // engine keeps it alive until `detach` unregisters the buffers: a
        // drop without `detach` leaks it (see `Drop`). The kernel reads the
        // buffers only for this engine's sends, of published bytes the
        // producer does not write until they are released.
        let iovecs = match &mut self.sealed {
            Some(sealed) => sealed.iovecs(),
            None => self.outbox.iovecs().to_vec(),
        };
        // SAFETY: as above; sealed, the iovecs describe the engine's own
        // ciphertext buffers instead, heap allocations never reallocated,
        // kept (leaked by `Drop`) until `detach` unregisters them, and
        // written by the engine only while no send reads them.
        let base = unsafe { fixed::register(submitter, &iovecs, how) }?;
        self.buf_base = base.unwrap_or(0);
        self.registered = Some(how);
        Ok(())
    }

    /// Unregisters the log buffers (nothing may be in flight: see
    /// [`Self::ops_in_flight`]). After this the engine can be dropped
    /// without leaking them. The engine sends nothing more.
    pub fn detach(&mut self, submitter: &Submitter<'_>) -> Result<(), SetupError> {
        let in_flight = self.ops_in_flight();
        if in_flight > 0 {
            return Err(SetupError::Busy { in_flight });
        }
        if let Some(how) = self.registered {
            let count = match &self.sealed {
                Some(sealed) => sealed.buffers(),
                None => self.outbox.iovecs().len(),
            };
            fixed::unregister(submitter, count, how)?;
            self.registered = None;
        }
        self.closed = true;
        Ok(())
    }

    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The send mode now (`None` before `attach`). An automatically chosen
    /// zero-copy mode becomes [`SendMode::Copy`] once the kernel reports
    /// that it copies every send anyway, or if the socket refuses SEND_ZC.
    pub fn mode(&self) -> Option<SendMode> {
        self.mode
    }

    pub fn stats(&self) -> SenderStats {
        SenderStats {
            segments_in_flight: self.outbox.held() as u64,
            ..self.stats
        }
    }

    /// The producer/consumer counters of the log buffers (stalls, …).
    pub fn log_stats(&self) -> LogStats {
        self.outbox.consumer().stats()
    }

    /// The newest valid ack (initially `first_seq - 1` everywhere).
    pub fn acked(&self) -> Ack {
        self.acked
    }

    /// Whether stream bytes taken from the log are not yet accepted by the
    /// socket (call after `pump`, which takes what was published). While
    /// true the I/O thread should not go to sleep for long: a send is in
    /// the ring and its CQE will come, but the link is busy.
    pub fn has_unsent(&self) -> bool {
        !self.closed && self.mode.is_some() && self.sent_pos < self.outbox.take_pos()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The producer has finished, and every entry was sent and released.
    pub fn is_drained(&self) -> bool {
        self.outbox.consumer().is_finished()
            && self.outbox.held() == 0
            && self.ops.is_empty()
            && self.sent_pos >= STREAM_HEADER_LEN as u64
    }

    /// Operations whose CQEs are still to come (sends, notifications, the
    /// ack receive). Drop or `detach` the engine only when this is 0, or
    /// its buffers are leaked.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len() + usize::from(self.ack_armed)
    }

    /// Ends the connection locally: the socket is shut down (so the
    /// operations in flight complete soon), nothing more is sent, and no
    /// `Closed` event is reported.
    pub fn shutdown(&mut self) {
        if !self.closed {
            self.closed = true;
            // An error here only means the socket is already dead.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Takes newly published segments and keeps one send and one ack
    /// receive in the ring, as far as the submission queue has room.
    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.discarding {
            self.discard_published();
            return;
        }
        let Some(mode) = self.mode else { return };
        if self.closed {
            return;
        }
        self.outbox.take_published();
        self.arm_ack(sq);
        self.send_next(mode, sq);
    }

    fn arm_ack(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.ack_armed {
            return;
        }
        let fd = types::Fd(self.stream.as_raw_fd());
        let room = self.ack_buf.len() - self.ack_have;
        let ptr = self.ack_buf[self.ack_have..].as_mut_ptr();
        let e = opcode::Recv::new(fd, ptr, room as u32)
            .build()
            .user_data(user_data(self.tag, KIND_ACK, 0));
        // SAFETY: `ack_buf` is owned by the engine and not touched until
        // this receive's CQE has been handled (`ack_armed` stays true until
        // then; `Drop` leaks it if armed). The fd lives as long as `self`.
        if unsafe { sq.push(&e) }.is_ok() {
            self.ack_armed = true;
        }
    }

    fn send_next(&mut self, mode: SendMode, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.sending {
            return;
        }
        if self.sealed.is_some() {
            self.send_sealed(mode, sq);
            return;
        }
        let fd = types::Fd(self.stream.as_raw_fd());
        let header_len = STREAM_HEADER_LEN as u64;
        let id = self.next_id;
        let ud = user_data(self.tag, KIND_SEND, id);
        let (entry, len, zc, last_seq) = if self.sent_pos < header_len {
            // The header goes first, as a plain send from `self.header`.
            let rest = &self.header[self.sent_pos as usize..];
            let e = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).flags(SEND_FLAGS);
            (e.build(), rest.len() as u32, false, None)
        } else {
            // An automatic zero-copy mode probes with small sends until the
            // kernel shows it does not copy (see `ZC_PROBE_SEND`).
            let max = if mode.is_zero_copy() && self.opts.mode.is_none() && !self.zc_proven {
                self.opts.max_send.min(ZC_PROBE_SEND)
            } else {
                self.opts.max_send
            };
            let Some(r) = self.outbox.next_range(self.sent_pos, max) else {
                return;
            };
            let e = match mode {
                SendMode::Copy => opcode::Send::new(fd, r.ptr, r.len)
                    .flags(SEND_FLAGS)
                    .build(),
                SendMode::ZeroCopy => opcode::SendZc::new(fd, r.ptr, r.len)
                    .flags(SEND_FLAGS)
                    .zc_flags(self.zc_flags)
                    .build(),
                SendMode::ZeroCopyFixed => opcode::SendZc::new(fd, r.ptr, r.len)
                    .buf_index(Some(self.buf_base + r.buffer_index))
                    .flags(SEND_FLAGS)
                    .zc_flags(self.zc_flags)
                    .build(),
            };
            (e, r.len, mode.is_zero_copy(), Some(r.last_seq))
        };
        let e = entry.user_data(ud);
        // SAFETY: the bytes are either `self.header` (owned, never written
        // after `new`) or published log bytes held in the outbox, which
        // releases them to the producer only after this send's CQE and, for
        // SEND_ZC, its notification (`retire`). For the fixed variant they
        // lie inside registered buffer `buf_base + buffer_index`. `Drop`
        // leaks all of it while operations are in flight.
        if unsafe { sq.push(&e) }.is_err() {
            return;
        }
        self.next_id += 1;
        self.sending = true;
        self.ops.push_back(SendOp {
            id,
            start: self.sent_pos,
            len,
            zc,
            completed: false,
            notif_pending: false,
            notified: false,
            sealed_buf: None,
        });
        if let Some(s) = last_seq {
            self.note_submitted(s);
        }
    }

    /// Entries up to `seq` are in a send SQE from now on.
    pub(super) fn note_submitted(&mut self, seq: u64) {
        self.submitted_seq = self.submitted_seq.max(seq);
        self.send_times.push_back((seq, Instant::now()));
    }

    /// When the send that carried entry `seq` was pushed (the earliest send
    /// whose entries reach `seq`); forgets the sends wholly acked before it.
    fn sent_at(&mut self, seq: u64) -> Option<Instant> {
        while self.send_times.front().is_some_and(|(last, _)| *last < seq) {
            self.send_times.pop_front();
        }
        self.send_times
            .front()
            .filter(|(last, _)| *last >= seq)
            .map(|(_, at)| *at)
    }

    /// The backup is gone for good (its peer's verdict): nothing more is
    /// sent, and what the producer publishes is released at once, unsent, so
    /// the vCPU never stalls on a log nobody will read. Operations in
    /// flight finish first (the kernel may still read their bytes).
    pub fn discard(&mut self) {
        self.discarding = true;
        self.shutdown();
    }

    /// Releases everything taken or published once nothing is in flight.
    fn discard_published(&mut self) {
        if !self.ops.is_empty() {
            return;
        }
        self.outbox.take_published();
        let end = self.outbox.take_pos();
        self.outbox.mark_sent(end);
        self.outbox.release_before(end);
    }
}

impl Drop for SenderEngine {
    fn drop(&mut self) {
        let in_flight = self.ops_in_flight();
        if in_flight == 0 && self.registered.is_none() {
            // SAFETY: dropped exactly once, here; nothing uses the outbox
            // after this (we are in `drop`), and no operation reads it.
            unsafe { ManuallyDrop::drop(&mut self.outbox) };
            return;
        }
        // The kernel may still read the header, the log buffers or write
        // the ack buffer (or the buffers are still registered): keep all of
        // it alive for the rest of the process.
        std::mem::forget(std::mem::take(&mut self.header));
        std::mem::forget(std::mem::take(&mut self.ack_buf));
        if let Some(sealed) = self.sealed.take() {
            sealed.into_leaked();
        }
        // SAFETY: taken exactly once, here, and never used again.
        let outbox = unsafe { ManuallyDrop::take(&mut self.outbox) };
        outbox.into_leaked();
        if in_flight > 0 {
            tracing::warn!(
                in_flight,
                "logging channel sender dropped with operations in flight; its buffers are leaked"
            );
        } else {
            tracing::debug!(
                "logging channel sender dropped without detach; log buffers stay registered and are leaked"
            );
        }
    }
}
