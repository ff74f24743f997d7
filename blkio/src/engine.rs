//! The disk engine: runs on the I/O thread and executes `Request`s on the
//! image through an io_uring that the I/O thread owns (and shares with the
//! tap engine). It never sees guest memory: writes arrive with their data
//! already copied out, reads return their data in a `Completion`.
//!
//! Order of work: requests start in take order, subject to IO serialization
//! (`serial.rs`) and, for writes, the output gate (`ioengine::OutputGate`).
//! Requests that cannot start yet, or do not fit into the submission queue,
//! wait; `pump` retries them and is also called from `submit`, `on_cqe` and
//! `release`.
//!
//! Every completion, including an immediate failure, reaches the caller
//! through `on_cqe` (failures and dropped writes travel as `IORING_OP_NOP`),
//! so the I/O thread has exactly one completion path.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{IoUring, opcode, squeue, types};

use ioengine::{Lease, OutputGate, user_data, user_data_id, user_data_tag};

use crate::BlkError;
use crate::buf::AlignedBuf;
use crate::image::DiskImage;
use crate::request::{
    Completion, MAX_REQUEST_BYTES, Request, RequestOp, SECTOR_SIZE, STATUS_IOERR, STATUS_OK,
};
use crate::serial::Footprint;

/// `EAGAIN`/`EINTR` retries before a request fails.
const MAX_RETRIES: u8 = 8;

/// Counters of the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests accepted by `submit`.
    pub submitted: u64,
    /// Completions delivered.
    pub completed: u64,
    /// Completions with an error status.
    pub errors: u64,
    /// Bytes read from the image.
    pub read_bytes: u64,
    /// Bytes written to the image.
    pub write_bytes: u64,
    /// Writes completed without reaching the disk (`drop_outputs`).
    pub dropped_writes: u64,
    /// Short transfers resubmitted for the rest.
    pub short_retries: u64,
    /// Writes the ring's fence refused in the kernel (the lease had run
    /// out); each waited and was handed over again later, or dropped.
    pub fenced_writes: u64,
}

#[derive(Debug)]
enum Work {
    Read {
        offset: u64,
        buf: AlignedBuf,
        done: usize,
    },
    Write {
        offset: u64,
        buf: AlignedBuf,
        done: usize,
    },
    Flush,
    /// Fails with this status without IO.
    Fail(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not started: waiting for serialization, the gate, or SQ space.
    Waiting,
    /// An SQE is in the ring; `nop` if it stands in for the real operation.
    InRing { nop: bool },
    /// Started, needs another SQE (short transfer, EAGAIN).
    Retry,
}

#[derive(Debug)]
struct Op {
    id: u16,
    footprint: Footprint,
    gate_seq: u64,
    work: Work,
    state: State,
    retries: u8,
}

/// Executes disk requests on an io_uring owned by the caller.
#[derive(Debug)]
pub struct DiskEngine {
    image: DiskImage,
    tag: u8,
    slots: Vec<Option<Op>>,
    free: Vec<u32>,
    /// Unfinished ops, in take order.
    order: VecDeque<u32>,
    gate: OutputGate,
    /// The fixed-file slot writes go through (a fenced ring); `None`: the
    /// image's own descriptor.
    output_slot: Option<u32>,
    stats: EngineStats,
}

impl DiskEngine {
    /// An engine for `image` whose CQEs carry `tag` in the top byte of
    /// `user_data`.
    pub fn new(image: DiskImage, tag: u8) -> Self {
        Self {
            image,
            tag,
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            gate: OutputGate::new(),
            output_slot: None,
            stats: EngineStats::default(),
        }
    }

    /// The tag given to `new`.
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The image.
    pub fn image(&self) -> &DiskImage {
        &self.image
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Requests submitted and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is in flight or waiting.
    pub fn is_idle(&self) -> bool {
        self.order.is_empty()
    }

    /// Writes waiting for the output gate.
    pub fn held_writes(&self) -> usize {
        let now = Instant::now();
        self.order
            .iter()
            .filter_map(|s| self.op(*s))
            .filter(|op| op.state == State::Waiting && self.gate_holds(op, now))
            .count()
    }

    /// The output gate (acked sequence number, drop mode).
    pub fn gate(&self) -> &OutputGate {
        &self.gate
    }

    /// Backup mode: writes (and flushes) complete successfully without
    /// touching the disk; reads still execute. Takes effect at the next
    /// `pump` for requests not yet started.
    pub fn set_drop_outputs(&mut self, drop: bool) {
        self.gate.set_drop_outputs(drop);
    }

    /// The side's output lease: no write starts once it has run out
    /// (checked when its SQE is pushed), whatever has been released.
    pub fn set_lease(&mut self, lease: Lease, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.set_lease(lease);
        self.pump(sq);
    }

    /// Writes go through fixed-file slot `slot` of the ring, which the
    /// ring's fence (`ioengine::Fence`) empties when the lease runs out: a
    /// write the kernel refuses there (`EBADF`) has not happened and waits.
    pub fn set_output_slot(&mut self, slot: u32) {
        self.output_slot = Some(slot);
    }

    /// The ring's fence fired (`true`: no write is handed over) or was
    /// restored.
    pub fn set_fenced(&mut self, fenced: bool, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.set_fenced(fenced);
        if !fenced {
            self.pump(sq);
        }
    }

    /// A side that lost: writes not started complete without reaching the
    /// disk, for good (writes already in the ring finish).
    pub fn revoke(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        self.gate.revoke();
        self.pump(sq);
    }

    /// Writes wait for releases again (`OutputGate::rearm`).
    pub fn rearm_gate(&mut self) -> bool {
        self.gate.rearm()
    }

    /// The log is acked up to `acked_seq`: writes tagged with a `gate_seq`
    /// at or below it may go to the disk.
    pub fn release(&mut self, acked_seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.gate.release(acked_seq) {
            self.pump(sq);
        }
    }

    fn op(&self, slot: u32) -> Option<&Op> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn gate_holds(&self, op: &Op, now: Instant) -> bool {
        matches!(op.work, Work::Write { .. })
            && !self.gate.drop_outputs()
            && (!self.gate.is_open(op.gate_seq) || !self.gate.lease_valid(now))
    }

    /// Accepts a request. `gate_seq` is the log sequence number current
    /// when the guest produced it (0 without FT). Validates it against the
    /// image (a request that cannot run completes with `IOERR`), then starts
    /// whatever may start.
    pub fn submit(&mut self, req: Request, gate_seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        let footprint = match req.sector_range() {
            Some((s, e)) if matches!(req.op, RequestOp::Write { .. }) => Footprint::Write(s, e),
            Some((s, e)) => Footprint::Read(s, e),
            None => Footprint::Flush,
        };
        let work = self.validate(req.op);
        let footprint = if matches!(work, Work::Fail(_)) {
            Footprint::None
        } else {
            footprint
        };
        let op = Op {
            id: req.id,
            footprint,
            gate_seq,
            work,
            state: State::Waiting,
            retries: 0,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(op);
                s
            }
            None => {
                self.slots.push(Some(op));
                (self.slots.len() - 1) as u32
            }
        };
        self.order.push_back(slot);
        self.stats.submitted += 1;
        self.pump(sq);
    }

    fn validate(&self, op: RequestOp) -> Work {
        let cap = self.image.capacity_sectors();
        let fits = |sector: u64, len: u64| {
            len > 0
                && len.is_multiple_of(SECTOR_SIZE)
                && len <= u64::from(MAX_REQUEST_BYTES)
                && sector
                    .checked_add(len / SECTOR_SIZE)
                    .is_some_and(|e| e <= cap)
        };
        match op {
            RequestOp::Read { sector, len } if fits(sector, u64::from(len)) => Work::Read {
                offset: sector * SECTOR_SIZE,
                buf: AlignedBuf::zeroed(len as usize),
                done: 0,
            },
            RequestOp::Write { sector, data }
                if fits(sector, data.len() as u64) && !self.image.read_only() =>
            {
                Work::Write {
                    offset: sector * SECTOR_SIZE,
                    buf: data,
                    done: 0,
                }
            }
            RequestOp::Flush => Work::Flush,
            other => {
                tracing::warn!(
                    ?other,
                    capacity = cap,
                    "disk request cannot run on this image"
                );
                Work::Fail(STATUS_IOERR)
            }
        }
    }

    /// Starts every waiting request that may start, in take order, until
    /// the submission queue is full.
    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        // The lease is judged here, as the SQEs are pushed: the last step
        // before the kernel has the write.
        let now = Instant::now();
        for i in 0..self.order.len() {
            let slot = self.order[i];
            let Some(op) = self.op(slot) else { continue };
            let start = match op.state {
                State::InRing { .. } => false,
                // The rest of a short write is an output too.
                State::Retry => !self.gate_holds(op, now),
                State::Waiting => self.may_start(i, op, now),
            };
            if start && !self.push_sqe(slot, sq) {
                break;
            }
        }
    }

    fn may_start(&self, pos: usize, op: &Op, now: Instant) -> bool {
        if self.gate_holds(op, now) {
            return false;
        }
        !self
            .order
            .iter()
            .take(pos)
            .filter_map(|s| self.op(*s))
            .any(|earlier| earlier.footprint.blocks(op.footprint))
    }

    /// Pushes the SQE for `slot`; false if the SQ is full.
    fn push_sqe(&mut self, slot: u32, sq: &mut squeue::SubmissionQueue<'_>) -> bool {
        let fd = types::Fd(self.image.file().as_raw_fd());
        let drop = self.gate.drop_outputs();
        let user_data = user_data(self.tag, 0, u64::from(slot));
        let Some(op) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return true;
        };
        let (entry, nop) = match &mut op.work {
            Work::Read { offset, buf, done } => {
                let rest = (buf.len() - *done) as u32;
                let ptr = buf.as_mut_ptr().wrapping_add(*done);
                let e = opcode::Read::new(fd, ptr, rest).offset(*offset + *done as u64);
                (e.build(), false)
            }
            // The rest of a short write goes out even when outputs are being
            // dropped (a backup going live mid-write) — but never for a side
            // that lost.
            Work::Write { offset, buf, done }
                if (op.state == State::Retry && !self.gate.revoked()) || !drop =>
            {
                let rest = (buf.len() - *done) as u32;
                let ptr = buf.as_mut_ptr().wrapping_add(*done);
                let at = *offset + *done as u64;
                let e = match self.output_slot {
                    Some(slot) => opcode::Write::new(types::Fixed(slot), ptr, rest)
                        .offset(at)
                        .build(),
                    None => opcode::Write::new(fd, ptr, rest).offset(at).build(),
                };
                (e, false)
            }
            Work::Flush if !drop => {
                let e = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC);
                (e.build(), false)
            }
            Work::Write { .. } | Work::Flush | Work::Fail(_) => (opcode::Nop::new().build(), true),
        };
        let entry = entry.user_data(user_data);
        // SAFETY: the buffer a Read/Write SQE points into belongs to this op,
        // which stays in `self.slots` until the CQE for `user_data` has been
        // handled in `on_cqe`; `Drop` leaks the buffers of ops still in the
        // ring instead of freeing them. The fd stays open as long as `self`.
        if unsafe { sq.push(&entry) }.is_err() {
            return false;
        }
        op.state = State::InRing { nop };
        true
    }

    /// Handles a CQE whose `user_data` carries this engine's tag. Finished
    /// requests go to `done`; then waiting work is started.
    pub fn on_cqe(
        &mut self,
        user_data: u64,
        result: i32,
        sq: &mut squeue::SubmissionQueue<'_>,
        done: &mut impl FnMut(Completion),
    ) {
        if user_data_tag(user_data) != self.tag {
            tracing::error!(user_data, "disk engine: CQE with a foreign tag");
            return;
        }
        let slot = user_data_id(user_data) as u32;
        let Some(op) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            tracing::error!(user_data, "disk engine: CQE for an unknown slot");
            return;
        };
        let State::InRing { nop } = op.state else {
            tracing::error!(user_data, "disk engine: CQE for a request not in the ring");
            return;
        };
        let status = if nop {
            match op.work {
                Work::Fail(s) => Some(s),
                _ => Some(STATUS_OK),
            }
        } else {
            match &mut op.work {
                Work::Write { .. } if result == -libc::EBADF && self.output_slot.is_some() => {
                    // The fence fired before the kernel took the write:
                    // nothing was written; it waits for the lease.
                    self.stats.fenced_writes += 1;
                    op.state = State::Retry;
                    self.gate.set_fenced(true);
                    None
                }
                Work::Read { buf, done, .. } | Work::Write { buf, done, .. } => {
                    if result < 0 {
                        let errno = -result;
                        if matches!(errno, libc::EAGAIN | libc::EINTR) && op.retries < MAX_RETRIES {
                            op.retries += 1;
                            op.state = State::Retry;
                            None
                        } else {
                            let e = std::io::Error::from_raw_os_error(errno);
                            tracing::warn!(id = op.id, "disk IO failed: {e}");
                            Some(STATUS_IOERR)
                        }
                    } else if result == 0 {
                        tracing::warn!(id = op.id, "disk IO made no progress (end of image?)");
                        Some(STATUS_IOERR)
                    } else {
                        *done = (*done + result as usize).min(buf.len());
                        if *done == buf.len() {
                            Some(STATUS_OK)
                        } else {
                            self.stats.short_retries += 1;
                            op.state = State::Retry;
                            None
                        }
                    }
                }
                Work::Flush if result < 0 => {
                    let e = std::io::Error::from_raw_os_error(-result);
                    tracing::warn!(id = op.id, "fdatasync failed: {e}");
                    Some(STATUS_IOERR)
                }
                Work::Flush => Some(STATUS_OK),
                Work::Fail(s) => Some(*s),
            }
        };
        if let Some(status) = status {
            let c = self.finish(slot, status, nop);
            done(c);
        }
        self.pump(sq);
    }

    fn finish(&mut self, slot: u32, status: u8, nop: bool) -> Completion {
        if let Some(pos) = self.order.iter().position(|s| *s == slot) {
            self.order.remove(pos);
        }
        let op = self.slots.get_mut(slot as usize).and_then(Option::take);
        self.free.push(slot);
        let Some(op) = op else {
            return Completion::error(0, STATUS_IOERR);
        };
        self.stats.completed += 1;
        if status != STATUS_OK {
            self.stats.errors += 1;
            return Completion::error(op.id, status);
        }
        match op.work {
            Work::Read { buf, .. } => {
                self.stats.read_bytes += buf.len() as u64;
                Completion::read(op.id, buf)
            }
            Work::Write { buf, .. } => {
                if nop {
                    self.stats.dropped_writes += 1;
                } else {
                    self.stats.write_bytes += buf.len() as u64;
                }
                Completion::ok(op.id)
            }
            Work::Flush | Work::Fail(_) => Completion::ok(op.id),
        }
    }

    /// Blocking shutdown helper for the I/O thread: runs the ring until
    /// every submitted request has completed (writes reach the image, so it
    /// is consistent). CQEs of other tags go to `other`. Fails at once if
    /// the remaining writes are held by the output gate and nothing else is
    /// in the ring (release them, or switch to drop mode, first).
    pub fn drain(
        &mut self,
        ring: &mut IoUring,
        done: &mut impl FnMut(Completion),
        other: &mut impl FnMut(u64, i32),
    ) -> Result<(), BlkError> {
        let (submitter, mut sq, mut cq) = ring.split();
        loop {
            self.pump(&mut sq);
            sq.sync();
            if self.is_idle() {
                return Ok(());
            }
            let in_ring = self
                .order
                .iter()
                .filter_map(|s| self.op(*s))
                .any(|op| matches!(op.state, State::InRing { .. }));
            if !in_ring {
                return Err(BlkError::DrainBlocked {
                    held: self.held_writes(),
                });
            }
            match submitter.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(BlkError::Ring(e)),
            }
            cq.sync();
            for cqe in &mut cq {
                if user_data_tag(cqe.user_data()) == self.tag {
                    self.on_cqe(cqe.user_data(), cqe.result(), &mut sq, done);
                } else {
                    other(cqe.user_data(), cqe.result());
                }
            }
        }
    }
}

impl Drop for DiskEngine {
    fn drop(&mut self) {
        // The kernel may still write into buffers of ops in the ring; leak
        // them rather than free memory the kernel could touch later.
        let mut leaked = 0;
        for op in self.slots.iter_mut().flatten() {
            if matches!(op.state, State::InRing { .. }) {
                let work = std::mem::replace(&mut op.work, Work::Flush);
                if let Work::Read { buf, .. } | Work::Write { buf, .. } = work {
                    std::mem::forget(buf);
                    leaked += 1;
                }
            }
        }
        if leaked > 0 {
            tracing::warn!(
                leaked,
                "disk engine dropped with IO in flight; buffers leaked"
            );
        }
    }
}
