//! [`ReceiverEngine`]: the backup's end of the logging channel, on the I/O
//! thread's io_uring.
//!
//! One read is in flight at a time (TCP is a byte stream: two reads in
//! flight could complete in either order), into registered buffers used in
//! turn. Each chunk goes through a [`StreamDecoder`], which verifies every
//! entry (crc, shape, seq continuity, exit order); the whole verified
//! entries of a chunk are handed on as one owned, contiguous copy of the
//! bytes as they were sent, so the vCPU thread can re-decode them. The
//! copy costs the backup a memcpy per byte and keeps the receive buffers
//! free for the next read at once.
//!
//! A corrupt header or entry is reported once, with the entry's seq and
//! stream offset; the entries before it were handed on, nothing from it
//! on ever is, and the connection is shut down.
//!
//! **Sealed** ([`ReceiverEngine::secured`], an authenticated channel):
//! each chunk is first opened record by record (a record that fails its
//! tag ends the channel: nothing from it on is trusted) into a plaintext
//! buffer, which then goes through the decoder as above; acks go back as
//! records.
//!
//! Acks carry the last *received and verified* seq. The VMM calls
//! [`ReceiverEngine::ack`] after handing entries on; acks are coalesced: at
//! most one is in the ring, and when it completes another goes only if
//! something advanced.

use std::fmt;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{Submitter, cqueue, opcode, squeue, types};

use super::ack::{ACK_LEN, Ack};
use super::error::{ChannelError, SetupError};
use super::fixed::{self, Registration};
use super::{
    SEND_FLAGS, configure_stream, is_transient, probe, user_data, user_data_kind, user_data_tag,
};
use crate::secure::{RecordLayer, RecordReader};
use crate::stream::{StreamDecoder, StreamItem};

const KIND_READ: u8 = 1;
const KIND_ACK: u8 = 2;

pub use super::receiver_types::{ReceiverEvent, ReceiverOptions, ReceiverStats, RecvMode};

/// The backup's logging-channel engine (see the module docs).
pub struct ReceiverEngine {
    stream: TcpStream,
    tag: u8,
    opts: ReceiverOptions,
    /// Receive buffers; the kernel writes `bufs[cur]` while a read is armed.
    bufs: Vec<Box<[u8]>>,
    cur: usize,
    read_armed: bool,
    /// The caller's buffer is full: no read is armed until it has room
    /// (backpressure: the bytes wait in the socket, TCP's window closes).
    reads_paused: bool,
    mode: Option<RecvMode>,
    registered: Option<Registration>,
    buf_base: u16,
    decoder: StreamDecoder,
    header_seen: bool,
    /// The ack being sent; the kernel reads it while `ack_in_flight`.
    ack_buf: Box<[u8]>,
    /// Bytes of it already sent, and whether it is not wholly sent yet.
    ack_off: usize,
    ack_active: bool,
    ack_in_flight: bool,
    /// What the VMM last reported as replayed (seq, exit).
    replayed: Option<(u64, u64)>,
    /// `ack()` was called since the last ack was encoded. Acks go only on
    /// request: sending one on every read as well would double the acks
    /// (one with the old replay position, then the one `ack()` asks for).
    ack_due: bool,
    /// The highest seq the caller allows an ack to cover (`ack_up_to`);
    /// `None`: everything received (`ack`).
    ack_limit: Option<u64>,
    /// No ack is ever encoded again (`stop_acking`).
    acks_stopped: bool,
    /// The highest seq an ack has covered, and when that ack was put into
    /// the ring: what the primary may have seen acknowledged, and since
    /// when.
    ack_high_water: Option<(u64, Instant)>,
    last_ack: Option<Ack>,
    /// The replay diverged: acks carry the flag (`say_diverged`).
    diverged: bool,
    /// Bytes of the ack in `ack_buf` (an ack, or its record).
    ack_len: usize,
    closed: bool,
    /// An authenticated channel's record layer.
    sealed: Option<SealedRecv>,
    stats: ReceiverStats,
}

/// The receiver's side of an authenticated channel.
struct SealedRecv {
    layer: RecordLayer,
    reader: RecordReader,
    /// The opened plaintext of one read.
    plain: Box<[u8]>,
}

/// Where the bytes of one read are, for `deliver`.
#[derive(Clone, Copy)]
enum Chunk {
    /// `bufs[idx][..n]`, as received.
    Received(usize, usize),
    /// `sealed.plain[..n]`, opened from records.
    Opened(usize),
}

impl fmt::Debug for ReceiverEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverEngine")
            .field("tag", &self.tag)
            .field("mode", &self.mode)
            .field("received_seq", &self.decoder.last_seq())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl ReceiverEngine {
    /// An engine on an accepted stream; CQEs carry `tag` in the top byte of
    /// `user_data`. Nothing happens until [`Self::attach`]. The socket is
    /// put in blocking mode with `TCP_NODELAY` (acks leave at once; io_uring
    /// polls the socket itself).
    pub fn new(
        stream: TcpStream,
        tag: u8,
        opts: ReceiverOptions,
    ) -> Result<ReceiverEngine, SetupError> {
        configure_stream(&stream)?;
        if opts.buffers == 0 || opts.buffers > usize::from(u16::MAX) {
            return Err(SetupError::Config {
                what: "receive buffers",
                why: "need between 1 and 65535",
            });
        }
        if opts.buffer_size < 4096 || opts.buffer_size > 1 << 30 {
            return Err(SetupError::Config {
                what: "receive buffer size",
                why: "must be between 4 KiB and 1 GiB",
            });
        }
        Ok(ReceiverEngine {
            stream,
            tag,
            opts,
            bufs: (0..opts.buffers)
                .map(|_| vec![0u8; opts.buffer_size].into_boxed_slice())
                .collect(),
            cur: 0,
            read_armed: false,
            reads_paused: false,
            mode: None,
            registered: None,
            buf_base: 0,
            decoder: StreamDecoder::new(),
            header_seen: false,
            ack_buf: vec![0u8; RecordLayer::sealed_len(ACK_LEN)].into_boxed_slice(),
            ack_off: 0,
            ack_active: false,
            ack_in_flight: false,
            replayed: None,
            ack_due: false,
            ack_limit: None,
            acks_stopped: false,
            ack_high_water: None,
            last_ack: None,
            diverged: false,
            ack_len: ACK_LEN,
            closed: false,
            sealed: None,
            stats: ReceiverStats::default(),
        })
    }

    /// Opens everything with `records` (an authenticated session's record
    /// layer) and seals the acks. Call before `attach`.
    pub fn secured(mut self, records: Option<RecordLayer>) -> Self {
        self.sealed = records.map(|layer| SealedRecv {
            layer,
            reader: RecordReader::default(),
            plain: vec![0u8; RecordReader::max_plain(self.opts.buffer_size)].into_boxed_slice(),
        });
        self
    }

    /// Picks the receive mode and, for [`RecvMode::Fixed`], registers the
    /// receive buffers as `how` says. Call once, on the ring's thread,
    /// before the first `pump`.
    pub fn attach(
        &mut self,
        submitter: &Submitter<'_>,
        how: Registration,
    ) -> Result<RecvMode, SetupError> {
        if self.mode.is_some() {
            return Err(SetupError::AlreadyAttached);
        }
        let fixed_ok = probe(submitter)?.is_supported(opcode::ReadFixed::CODE);
        let mode = match self.opts.mode {
            Some(RecvMode::Plain) => RecvMode::Plain,
            Some(RecvMode::Fixed) if !fixed_ok => {
                return Err(SetupError::Unsupported {
                    mode: "reading into registered buffers",
                    opcode: "IORING_OP_READ_FIXED",
                });
            }
            Some(RecvMode::Fixed) if how == Registration::None => {
                return Err(SetupError::Config {
                    what: "registration",
                    why: "READ_FIXED needs a buffer table",
                });
            }
            Some(RecvMode::Fixed) => {
                self.register(submitter, how)?;
                RecvMode::Fixed
            }
            None if fixed_ok && how != Registration::None => match self.register(submitter, how) {
                Ok(()) => RecvMode::Fixed,
                Err(e) => {
                    tracing::warn!(error = %e, "receive buffers not registered: plain receives");
                    RecvMode::Plain
                }
            },
            None => RecvMode::Plain,
        };
        self.mode = Some(mode);
        self.stats.mode = Some(mode);
        tracing::info!(mode = %mode, "logging channel receiver attached");
        Ok(mode)
    }

    fn register(&mut self, submitter: &Submitter<'_>, how: Registration) -> Result<(), SetupError> {
        let iovecs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the buffers are heap allocations owned by the engine and
        // never reallocated; they stay alive until `detach` unregisters
        // them (a drop without `detach` leaks them), and only this engine's
        // reads write them.
        let base = unsafe { fixed::register(submitter, &iovecs, how) }?;
        self.buf_base = base.unwrap_or(0);
        self.registered = Some(how);
        Ok(())
    }

    /// Unregisters the receive buffers (nothing may be in flight); the
    /// engine does nothing more and can then be dropped without leaking.
    pub fn detach(&mut self, submitter: &Submitter<'_>) -> Result<(), SetupError> {
        let in_flight = self.ops_in_flight();
        if in_flight > 0 {
            return Err(SetupError::Busy { in_flight });
        }
        if let Some(how) = self.registered {
            fixed::unregister(submitter, self.bufs.len(), how)?;
            self.registered = None;
        }
        self.closed = true;
        Ok(())
    }

    pub fn tag(&self) -> u8 {
        self.tag
    }

    pub fn mode(&self) -> Option<RecvMode> {
        self.mode
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Seq of the last entry received and verified (what the next ack
    /// says).
    pub fn received_seq(&self) -> u64 {
        self.decoder.last_seq()
    }

    /// When bytes last arrived from the primary.
    pub fn last_heard(&self) -> Option<Instant> {
        self.stats.last_heard
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads and ack sends whose CQEs are still to come.
    pub fn ops_in_flight(&self) -> usize {
        usize::from(self.read_armed) + usize::from(self.ack_in_flight)
    }

    /// Ends the connection locally (no event is reported).
    pub fn shutdown(&mut self) {
        if !self.closed {
            self.closed = true;
            // An error here only means the socket is already dead.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Acks everything received so far and reports the replay position.
    /// Sends at once unless an ack is in the ring; then the newest state
    /// goes when it completes, if anything advanced.
    pub fn ack(
        &mut self,
        replayed_seq: u64,
        replayed_exit: u64,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) {
        self.replayed = Some((replayed_seq, replayed_exit));
        self.ack_limit = None;
        self.ack_due = true;
        self.pump_ack(sq);
    }

    /// Like [`Self::ack`], but the ack covers at most `acked_seq`: the
    /// caller acks only what it has taken on (what the backup will replay),
    /// never merely what the socket delivered.
    pub fn ack_up_to(
        &mut self,
        acked_seq: u64,
        replayed_seq: u64,
        replayed_exit: u64,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) {
        self.replayed = Some((replayed_seq.min(acked_seq), replayed_exit));
        self.ack_limit = Some(acked_seq);
        self.ack_due = true;
        self.pump_ack(sq);
    }

    /// No ack is encoded from now on (an ack already in the ring still
    /// completes): the backup suspects its primary and cuts its log at what
    /// it has acknowledged ([`Self::ack_high_water`]).
    pub fn stop_acking(&mut self) {
        self.acks_stopped = true;
        self.ack_due = false;
    }

    /// The backup's last word: its replay diverged at `exit`. The next ack
    /// (covering no more than the last one could) carries the flag; the
    /// primary then ends the connection.
    pub fn say_diverged(&mut self, exit: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        self.diverged = true;
        if let Some((seq, _)) = self.replayed {
            self.replayed = Some((seq, exit));
        }
        self.ack_due = true;
        self.pump_ack(sq);
    }

    /// Whether the diverged ack has left, or never can (a closed channel,
    /// acks stopped, nothing ever acked).
    pub fn goodbye_done(&self) -> bool {
        self.closed
            || self.acks_stopped
            || self.replayed.is_none()
            || (self.last_ack.is_some_and(|a| a.diverged) && !self.ack_active)
    }

    /// The highest seq any ack put into the ring has covered, and when it
    /// was put there; `None` before the first ack.
    pub fn ack_high_water(&self) -> Option<(u64, Instant)> {
        self.ack_high_water
    }

    /// Stops arming reads (`true`) until called with `false`: the caller's
    /// buffer for received entries is full. A read already in flight still
    /// completes and is delivered; acks go on.
    pub fn set_reads_paused(&mut self, paused: bool) {
        self.reads_paused = paused;
    }

    pub fn reads_paused(&self) -> bool {
        self.reads_paused
    }

    /// Keeps a read armed and finishes or sends a due ack.
    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.mode.is_none() || self.closed {
            return;
        }
        self.arm_read(sq);
        self.pump_ack(sq);
    }

    fn arm_read(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        let Some(mode) = self.mode else { return };
        if self.read_armed || self.reads_paused {
            return;
        }
        let fd = types::Fd(self.stream.as_raw_fd());
        let cur = self.cur;
        let buf = &mut self.bufs[cur];
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        let e = match mode {
            RecvMode::Fixed => {
                opcode::ReadFixed::new(fd, ptr, len, self.buf_base + cur as u16).build()
            }
            RecvMode::Plain => opcode::Recv::new(fd, ptr, len).build(),
        };
        let e = e.user_data(user_data(self.tag, KIND_READ, cur as u64));
        // SAFETY: `bufs[cur]` is owned by the engine and not read or
        // written by it until this read's CQE has been handled
        // (`read_armed`); for READ_FIXED it is registered buffer
        // `buf_base + cur`. `Drop` leaks the buffers while a read is armed.
        if unsafe { sq.push(&e) }.is_ok() {
            self.read_armed = true;
        }
    }

    fn pump_ack(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.closed || self.ack_in_flight || !self.header_seen || self.mode.is_none() {
            return;
        }
        if self.acks_stopped && !self.ack_active {
            return;
        }
        if !self.ack_active {
            let Some((replayed_seq, replayed_exit)) = self.replayed.filter(|_| self.ack_due) else {
                return;
            };
            self.ack_due = false;
            let received = self.decoder.last_seq();
            let a = Ack {
                acked_seq: self.ack_limit.map_or(received, |l| l.min(received)),
                replayed_seq,
                replayed_exit,
                diverged: self.diverged,
            };
            if self.last_ack == Some(a) {
                return;
            }
            match self.sealed.as_mut() {
                Some(sealed) => match sealed.layer.seal(&a.encode(), &mut self.ack_buf) {
                    Ok(n) => self.ack_len = n,
                    Err(e) => {
                        // Cannot happen: the buffer is sized for one ack.
                        tracing::error!("logging channel: cannot seal an ack: {e}");
                        return;
                    }
                },
                None => {
                    self.ack_buf[..ACK_LEN].copy_from_slice(&a.encode());
                    self.ack_len = ACK_LEN;
                }
            }
            self.ack_off = 0;
            self.ack_active = true;
            self.last_ack = Some(a);
            self.stats.last_ack = a;
        }
        let fd = types::Fd(self.stream.as_raw_fd());
        let rest = &self.ack_buf[self.ack_off..self.ack_len];
        let e = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
            .flags(SEND_FLAGS)
            .build()
            .user_data(user_data(self.tag, KIND_ACK, 0));
        // SAFETY: `ack_buf` is owned by the engine and not written until
        // this send's CQE has been handled (`ack_in_flight`); `Drop` leaks it
        // while the send is in flight.
        if unsafe { sq.push(&e) }.is_ok() {
            self.ack_in_flight = true;
            let seq = self.stats.last_ack.acked_seq;
            if self.ack_high_water.is_none_or(|(s, _)| seq > s) {
                self.ack_high_water = Some((seq, Instant::now()));
            }
        }
    }

    /// Handles a CQE whose `user_data` carries this engine's tag, reports
    /// through `out`, then pumps.
    pub fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        out: &mut impl FnMut(ReceiverEvent),
    ) {
        let ud = cqe.user_data();
        if user_data_tag(ud) != self.tag {
            tracing::error!(ud, "logging channel receiver: CQE with a foreign tag");
            return;
        }
        match user_data_kind(ud) {
            KIND_READ => self.on_read(cqe.result(), out),
            KIND_ACK => self.on_ack_sent(cqe.result(), out),
            _ => tracing::error!(ud, "logging channel receiver: CQE of an unknown kind"),
        }
        self.pump(sq);
    }

    fn on_read(&mut self, res: i32, out: &mut impl FnMut(ReceiverEvent)) {
        if !self.read_armed {
            tracing::error!("logging channel receiver: read CQE without a read in flight");
            return;
        }
        self.read_armed = false;
        if self.closed {
            return;
        }
        if res < 0 {
            let errno = -res;
            if !is_transient(errno) {
                self.close(ChannelError::socket("receive", errno), false, out);
            }
            return;
        }
        if res == 0 {
            let cut_record = self.sealed.as_ref().is_some_and(|s| s.reader.has_partial());
            match self.decoder.finish() {
                Ok(()) if !cut_record => self.close(ChannelError::PeerClosed, true, out),
                Ok(()) => self.close(
                    ChannelError::Record(crate::secure::RecordError::Short { len: 0 }),
                    false,
                    out,
                ),
                Err(e) => self.close(ChannelError::Truncated(e), false, out),
            }
            return;
        }
        let n = (res as usize).min(self.opts.buffer_size);
        let idx = self.cur;
        self.cur = (self.cur + 1) % self.bufs.len();
        self.stats.reads += 1;
        self.stats.bytes_received += n as u64;
        self.stats.last_heard = Some(Instant::now());
        let chunk = match self.sealed.as_mut() {
            None => Chunk::Received(idx, n),
            Some(sealed) => {
                match sealed
                    .reader
                    .feed(&mut sealed.layer, &self.bufs[idx][..n], &mut sealed.plain)
                {
                    Ok(m) => Chunk::Opened(m),
                    Err(e) => {
                        tracing::error!(error = %e, "logging channel: a record failed: closing it");
                        self.close(ChannelError::Record(e), false, out);
                        return;
                    }
                }
            }
        };
        self.deliver(chunk, out);
    }

    /// Decodes one read's bytes, hands on their whole verified entries, and
    /// stops everything at a corrupt one.
    fn deliver(&mut self, chunk: Chunk, out: &mut impl FnMut(ReceiverEvent)) {
        let data: &[u8] = match (chunk, self.sealed.as_ref()) {
            (Chunk::Received(idx, n), _) => &self.bufs[idx][..n],
            (Chunk::Opened(n), Some(sealed)) => &sealed.plain[..n],
            (Chunk::Opened(_), None) => &[],
        };
        let n = data.len();
        let mut bytes = Vec::new();
        let (mut first_seq, mut last_seq, mut last_exit, mut count) = (0, 0, 0, 0u64);
        let mut corrupt = None;
        {
            let mut feed = self.decoder.feed(data);
            while let Some(item) = feed.next() {
                match item {
                    Ok(StreamItem::Header(h)) => {
                        self.header_seen = true;
                        out(ReceiverEvent::Header(h));
                    }
                    Ok(StreamItem::Entry(rec)) => {
                        if count == 0 {
                            first_seq = rec.header.seq;
                            bytes.reserve(n);
                        }
                        bytes.extend_from_slice(rec.bytes);
                        last_seq = rec.header.seq;
                        last_exit = rec.header.exit_index;
                        count += 1;
                    }
                    Err(e) => {
                        corrupt = Some(e);
                        break;
                    }
                }
            }
        }
        if count > 0 {
            self.stats.entries_received += count;
            out(ReceiverEvent::Entries {
                bytes,
                first_seq,
                last_seq,
                last_exit,
            });
        }
        if let Some(error) = corrupt {
            tracing::error!(%error, "corrupt log stream on the logging channel: closing it");
            // Tells the primary at once.
            self.shutdown();
            out(ReceiverEvent::Corrupt { error });
        }
    }

    fn on_ack_sent(&mut self, res: i32, out: &mut impl FnMut(ReceiverEvent)) {
        self.ack_in_flight = false;
        if self.closed {
            return;
        }
        if res < 0 {
            let errno = -res;
            if !is_transient(errno) {
                self.close(ChannelError::socket("send ack", errno), false, out);
            }
            return;
        }
        if res == 0 {
            self.close(
                ChannelError::socket("send ack (no progress)", libc::EIO),
                false,
                out,
            );
            return;
        }
        self.ack_off += res as usize;
        if self.ack_off >= self.ack_len {
            self.ack_active = false;
            self.stats.acks_sent += 1;
        }
    }

    fn close(&mut self, reason: ChannelError, clean: bool, out: &mut impl FnMut(ReceiverEvent)) {
        if self.closed {
            return;
        }
        if clean {
            tracing::info!("logging channel closed by the primary");
        } else {
            tracing::warn!(error = %reason, received = self.decoder.last_seq(), "logging channel closed");
        }
        self.shutdown();
        out(ReceiverEvent::Closed { reason, clean });
    }
}

impl Drop for ReceiverEngine {
    fn drop(&mut self) {
        let in_flight = self.ops_in_flight();
        if in_flight == 0 && self.registered.is_none() {
            return;
        }
        // The kernel may still write a receive buffer or read the ack (or
        // the buffers are still registered): keep them alive for good.
        std::mem::forget(std::mem::take(&mut self.bufs));
        std::mem::forget(std::mem::take(&mut self.ack_buf));
        if in_flight > 0 {
            tracing::warn!(
                in_flight,
                "logging channel receiver dropped with operations in flight; its buffers are leaked"
            );
        }
    }
}
