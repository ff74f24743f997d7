//! The tap engine: runs on the I/O thread and moves frames between the tap
//! and host buffers through an io_uring that the I/O thread owns (shared
//! with the disk engine). It never sees guest memory.
//!
//! RX: `rx_depth` reads stay in flight, each into its own buffer, re-armed
//! as they complete; each frame is handed out as an owned `Vec<u8>`.
//! TX: frames wait in the output gate until the log is acked up to their
//! `gate_seq`, then are written in order, at most `TX_DEPTH` at a time.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, squeue, types};

use ioengine::{Lease, OutputGate, user_data, user_data_id, user_data_kind, user_data_tag};

use crate::frame::{MAX_FRAME_LEN, MIN_FRAME_LEN};
use crate::tap::{Tap, TapError};

/// Size of each RX buffer: room for any frame a tap with a 64 KiB MTU can
/// produce, so an oversized frame is seen (and counted) whole instead of
/// failing the read.
pub const RX_BUF_LEN: usize = 65536 + 64;
/// Most TX writes in the ring at once.
pub const TX_DEPTH: usize = 64;
/// Most RX reads in flight.
const MAX_RX_DEPTH: usize = 1024;
/// Most frames held at the output gate (about 6 MiB of 1500-byte frames):
/// beyond it a frame is dropped, as a full NIC queue drops, rather than
/// held in memory without bound (a primary whose backup is gone and whose
/// arbiter does not answer holds every frame until it does).
pub const MAX_HELD_FRAMES: usize = 4096;

const KIND_RX: u8 = 0;
const KIND_TX: u8 = 1;

/// Counters of the tap engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames read and handed out.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames read but dropped: larger than `MAX_FRAME_LEN` or shorter than
    /// an Ethernet header.
    pub rx_dropped: u64,
    /// Failed reads.
    pub rx_errors: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Failed or short writes.
    pub tx_errors: u64,
    /// Frames discarded in `drop_outputs` mode.
    pub tx_dropped: u64,
    /// Frames dropped because `MAX_HELD_FRAMES` were already held.
    pub tx_overflow: u64,
    /// Frames the ring's fence refused in the kernel (the lease had run
    /// out); each waited and left later, or was dropped.
    pub tx_fenced: u64,
}

#[derive(Debug)]
struct RxSlot {
    buf: Box<[u8]>,
    armed: bool,
}

/// Moves frames between a tap and host buffers on a caller-owned io_uring.
#[derive(Debug)]
pub struct TapEngine {
    tap: Tap,
    tag: u8,
    rx: Vec<RxSlot>,
    gate: OutputGate<Vec<u8>>,
    /// Released by the gate, waiting for room in the ring.
    ready: VecDeque<Vec<u8>>,
    /// Frames in the ring, by TX slot, with the order they were sent in.
    tx: Vec<Option<(u64, Vec<u8>)>>,
    /// Frames the fence refused in the kernel, by send order: they go out
    /// first once the fence is restored.
    refused: std::collections::BTreeMap<u64, Vec<u8>>,
    next_tx: u64,
    /// The fixed-file slot frames leave through (a fenced ring); `None`:
    /// the tap's own descriptor.
    output_slot: Option<u32>,
    tx_free: Vec<u32>,
    stats: TapStats,
}

impl TapEngine {
    /// An engine on `tap` whose CQEs carry `tag` in the top byte of
    /// `user_data`, keeping `rx_depth` reads in flight (clamped to
    /// 1..=1024). Call `pump` once to arm the reads.
    ///
    /// The tap descriptor is switched to blocking mode: io_uring then waits
    /// for readiness itself (internal poll). Kernels before 6.x complete a
    /// read on an `O_NONBLOCK` file at once with `EAGAIN`, which would turn
    /// every idle read into a busy loop (6.18 polls either way; checked).
    /// No thread ever blocks on the descriptor.
    pub fn new(tap: Tap, tag: u8, rx_depth: usize) -> Result<TapEngine, TapError> {
        tap.set_nonblocking(false)?;
        let depth = rx_depth.clamp(1, MAX_RX_DEPTH);
        let rx = (0..depth)
            .map(|_| RxSlot {
                buf: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
                armed: false,
            })
            .collect();
        Ok(TapEngine {
            tap,
            tag,
            rx,
            gate: OutputGate::new(),
            ready: VecDeque::new(),
            tx: (0..TX_DEPTH).map(|_| None).collect(),
            refused: std::collections::BTreeMap::new(),
            next_tx: 0,
            output_slot: None,
            tx_free: (0..TX_DEPTH as u32).rev().collect(),
            stats: TapStats::default(),
        })
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The tag given to `new`.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// Counters.
    pub fn stats(&self) -> &TapStats {
        &self.stats
    }

    /// Frames held by the output gate (for `lockstep status`).
    pub fn gated_len(&self) -> usize {
        self.gate.len()
    }

    /// The highest acked log sequence number seen.
    pub fn acked(&self) -> u64 {
        self.gate.acked()
    }

    /// Backup mode: frames passed to `send` are discarded (counted), and
    /// frames already held are discarded now. Reads continue.
    pub fn set_drop_outputs(&mut self, drop: bool) {
        self.gate.set_drop_outputs(drop);
        if drop {
            self.stats.tx_dropped += self.gate.clear() as u64;
        }
    }

    /// The side's output lease: no frame is written once it has run out
    /// (checked as each write's SQE is pushed), whatever has been released.
    pub fn set_lease(&mut self, lease: Lease, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.set_lease(lease);
        self.pump(sq);
    }

    /// Frames wait for releases again (`OutputGate::rearm`).
    pub fn rearm_gate(&mut self) -> bool {
        self.gate.rearm()
    }

    /// A side that lost: every frame held or waiting is dropped, and every
    /// later one too, for good.
    pub fn revoke(&mut self) {
        let held = self.gate.revoke() + self.ready.len() + self.refused.len();
        self.ready.clear();
        self.refused.clear();
        self.stats.tx_dropped += held as u64;
    }

    /// Frames leave through fixed-file slot `slot` of the ring, which the
    /// ring's fence (`ioengine::Fence`) empties when the lease runs out: a
    /// frame the kernel refuses there (`EBADF`) has not left and waits.
    pub fn set_output_slot(&mut self, slot: u32) {
        self.output_slot = Some(slot);
    }

    /// The ring's fence fired (`true`: no frame is handed over) or was
    /// restored.
    pub fn set_fenced(&mut self, fenced: bool, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.set_fenced(fenced);
        if !fenced {
            self.pump(sq);
        }
    }

    /// True in backup mode.
    pub fn drop_outputs(&self) -> bool {
        self.gate.drop_outputs()
    }

    /// Queues `frame`, tagged with the log sequence number current when the
    /// guest sent it (0 without FT). It is written once the log is acked up
    /// to `gate_seq`, after every frame sent before it.
    pub fn send(&mut self, frame: Vec<u8>, gate_seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.gate.drop_outputs() {
            self.stats.tx_dropped += 1;
            return;
        }
        if self.gate.len() >= MAX_HELD_FRAMES {
            self.stats.tx_overflow += 1;
            return;
        }
        self.gate.push(gate_seq, frame);
        self.pump(sq);
    }

    /// The log is acked up to `acked_seq`: frames gated at or below it go.
    pub fn release(&mut self, acked_seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.release(acked_seq);
        self.pump(sq);
    }

    fn user_data(&self, kind: u8, index: usize) -> u64 {
        user_data(self.tag, kind, index as u64)
    }

    /// Arms idle reads and writes released frames, as far as the
    /// submission queue has room.
    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        let fd = types::Fd(self.tap.as_raw_fd());
        for i in 0..self.rx.len() {
            if self.rx[i].armed {
                continue;
            }
            let ud = self.user_data(KIND_RX, i);
            let slot = &mut self.rx[i];
            let e = opcode::Read::new(fd, slot.buf.as_mut_ptr(), RX_BUF_LEN as u32)
                .build()
                .user_data(ud);
            // SAFETY: the buffer is owned by this slot and is neither freed
            // nor reused until the read's CQE has been handled (`armed`
            // stays true until then; `Drop` leaks armed buffers).
            if unsafe { sq.push(&e) }.is_err() {
                return;
            }
            slot.armed = true;
        }
        // The lease is judged here, as the SQEs are pushed: the last step
        // before the kernel has the frame.
        let now = Instant::now();
        if !self.refused.is_empty() && self.gate.lease_valid(now) {
            // Refused frames were sent before everything still queued.
            let mut first: VecDeque<Vec<u8>> =
                std::mem::take(&mut self.refused).into_values().collect();
            first.append(&mut self.ready);
            self.ready = first;
        }
        while let Some(frame) = self.gate.pop_ready(now) {
            self.ready.push_back(frame);
        }
        while !self.ready.is_empty() && self.gate.lease_valid(now) {
            let Some(idx) = self.tx_free.last().copied() else {
                return;
            };
            let Some(frame) = self.ready.front() else {
                return;
            };
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            let e = match self.output_slot {
                Some(slot) => opcode::Write::new(types::Fixed(slot), frame.as_ptr(), len).build(),
                None => opcode::Write::new(fd, frame.as_ptr(), len).build(),
            }
            .user_data(self.user_data(KIND_TX, idx as usize));
            // SAFETY: on success the frame moves into `self.tx[idx]` below (a
            // move of the Vec, not of its heap buffer) and stays there until
            // the write's CQE has been handled; `Drop` leaks frames in flight.
            if unsafe { sq.push(&e) }.is_err() {
                return;
            }
            self.tx_free.pop();
            let order = self.next_tx;
            self.next_tx += 1;
            self.tx[idx as usize] = self.ready.pop_front().map(|f| (order, f));
        }
    }

    /// Handles a CQE whose `user_data` carries this engine's tag: received
    /// frames go to `rx`; then reads are re-armed and waiting frames sent.
    pub fn on_cqe(
        &mut self,
        user_data: u64,
        result: i32,
        sq: &mut squeue::SubmissionQueue<'_>,
        rx: &mut impl FnMut(Vec<u8>),
    ) {
        if user_data_tag(user_data) != self.tag {
            tracing::error!(user_data, "tap engine: CQE with a foreign tag");
            return;
        }
        let index = user_data_id(user_data) as usize;
        match user_data_kind(user_data) {
            KIND_RX => self.on_rx(index, result, rx),
            KIND_TX => self.on_tx(index, result),
            _ => tracing::error!(user_data, "tap engine: CQE of an unknown kind"),
        }
        self.pump(sq);
    }

    fn on_rx(&mut self, index: usize, result: i32, rx: &mut impl FnMut(Vec<u8>)) {
        let Some(slot) = self.rx.get_mut(index).filter(|s| s.armed) else {
            tracing::error!(index, "tap engine: RX CQE for a read not in flight");
            return;
        };
        slot.armed = false;
        if result < 0 {
            let errno = -result;
            if !matches!(errno, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                self.stats.rx_errors += 1;
                let e = std::io::Error::from_raw_os_error(errno);
                tracing::warn!(tap = self.tap.name(), "tap read failed: {e}");
            }
            return;
        }
        let n = (result as usize).min(RX_BUF_LEN);
        if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&n) {
            self.stats.rx_dropped += 1;
            return;
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += n as u64;
        rx(slot.buf[..n].to_vec());
    }

    fn on_tx(&mut self, index: usize, result: i32) {
        let Some((order, frame)) = self.tx.get_mut(index).and_then(Option::take) else {
            tracing::error!(index, "tap engine: TX CQE for a write not in flight");
            return;
        };
        self.tx_free.push(index as u32);
        if result == -libc::EBADF && self.output_slot.is_some() {
            // The fence fired before the kernel took the frame: it has not
            // left, and waits for the lease.
            self.stats.tx_fenced += 1;
            self.gate.set_fenced(true);
            if !self.gate.revoked() {
                self.refused.insert(order, frame);
            }
            return;
        }
        if result < 0 || result as usize != frame.len() {
            self.stats.tx_errors += 1;
            if result < 0 {
                let e = std::io::Error::from_raw_os_error(-result);
                tracing::warn!(tap = self.tap.name(), "tap write failed: {e}");
            }
            return;
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
    }
}

impl Drop for TapEngine {
    fn drop(&mut self) {
        // The kernel may still write into armed RX buffers (and read TX
        // frames): leak them rather than free memory it could touch.
        for slot in self.rx.iter_mut().filter(|s| s.armed) {
            std::mem::forget(std::mem::take(&mut slot.buf));
        }
        for (_, frame) in self.tx.iter_mut().filter_map(Option::take) {
            std::mem::forget(frame);
        }
    }
}
