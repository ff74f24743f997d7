//! The kernel's half of the output lease: the descriptors outputs leave
//! through (the tap, the disk image) are the ring's *fixed files*, and a
//! timer on the ring, linked to an update that empties those slots, fires
//! when the lease runs out. From then on an output SQE fails with `EBADF`
//! in the kernel, whatever the process does.
//!
//! Why the kernel must do it: a user-space check ("is the lease still
//! valid?") and the system call that hands the output over are two steps,
//! and a process can be stopped or descheduled between them for any
//! length of time. The timer fires in the kernel, and io_uring runs the
//! linked update as task work, which the kernel runs before the stopped or
//! starved thread executes another instruction of its own — so a check
//! that passed before a pause is void after it, at the last step.
//!
//! The timer must be in the kernel *before* the slots can hold the
//! descriptors, never after: a restore is one submission of the timer (and
//! its linked clear) followed by the update that fills the slots, issued
//! in that order, and outputs resume only once the fill has completed
//! (its CQE seen). If that submission itself was late (the deadline has
//! passed), the timer fires at once and empties the slots again before
//! any output can be handed over, and the gate's own check (`now < until`)
//! holds them meanwhile.
//!
//! States: `Fired` (slots empty: nothing leaves; the start), `Restoring`
//! (timer armed, fill in flight), `Armed` (slots filled, timer armed),
//! `Lifted` (no lease: a primary alone; `rearm` returns it to `Fired` when
//! a backup joins), `Closed` (a side that lost).
//! Renewals only ever move the timer later, lazily: the kernel's deadline
//! is never later than the lease, only sometimes a little earlier.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{Submitter, opcode, squeue, types};

use crate::user_data::{ID_MASK, user_data, user_data_id, user_data_kind};

const KIND_TIMER: u8 = 1;
const KIND_CLEAR: u8 = 2;
const KIND_FILL: u8 = 3;
const KIND_UPDATE: u8 = 4;
const KIND_REMOVE: u8 = 5;

/// Where the fence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// The slots are empty: nothing leaves.
    Fired,
    /// The timer (at this instant) is armed and the fill is in flight.
    Restoring(Instant),
    /// The slots hold the descriptors until this instant unless renewed.
    Armed(Instant),
    /// No lease: the slots stay (a primary alone).
    Lifted,
    /// The slots are empty for good (a side that lost).
    Closed,
}

/// What a fence CQE changed, for the engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceEvent {
    /// The slots were emptied: outputs are held.
    Fired,
    /// The slots hold the descriptors again: outputs may leave (while the
    /// lease is valid).
    Restored,
}

/// Why the fence could not change the ring.
#[derive(Debug, thiserror::Error)]
#[error("the output fence could not {what}")]
pub struct FenceError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// The fixed-file fence of one ring.
pub struct Fence {
    tag: u8,
    /// The real descriptors, slot by slot; boxed so a fill SQE can point
    /// at them.
    fds: Box<[RawFd]>,
    /// `-1` for every slot: what the linked clear writes.
    empty: Box<[RawFd]>,
    /// The timer's deadline (CLOCK_MONOTONIC), read by the kernel when a
    /// timer or update SQE is issued.
    deadline: Box<types::Timespec>,
    state: FenceState,
    /// Identifies the current timer (CQEs of an earlier one are stale).
    generation: u64,
    /// How far the kernel's deadline may trail the lease before a renewal
    /// moves it.
    lag: Duration,
}

/// Instant → CLOCK_MONOTONIC timespec (Rust's `Instant` is CLOCK_MONOTONIC
/// on Linux).
fn to_timespec(at: Instant) -> types::Timespec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let base = Instant::now();
    let now_ns = u128::from(now.tv_sec as u64) * 1_000_000_000 + u128::from(now.tv_nsec as u64);
    let at_ns = match at.checked_duration_since(base) {
        Some(ahead) => now_ns + ahead.as_nanos(),
        None => now_ns.saturating_sub(base.duration_since(at).as_nanos()),
    };
    types::Timespec::new()
        .sec(u64::try_from(at_ns / 1_000_000_000).unwrap_or(u64::MAX))
        .nsec((at_ns % 1_000_000_000) as u32)
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> FenceError {
    move |source| FenceError { what, source }
}

impl Fence {
    /// Registers as many empty fixed-file slots as `fds` has (slot `i` will
    /// hold `fds[i]`): nothing leaves before the first renewal. CQEs carry
    /// `tag`.
    pub fn new(
        submitter: &Submitter<'_>,
        fds: Vec<RawFd>,
        tag: u8,
        lag: Duration,
    ) -> Result<Fence, FenceError> {
        let empty = vec![-1; fds.len()].into_boxed_slice();
        submitter
            .register_files(&empty)
            .map_err(io_err("register the output slots"))?;
        Ok(Fence {
            tag,
            fds: fds.into_boxed_slice(),
            empty,
            deadline: Box::new(types::Timespec::new()),
            state: FenceState::Fired,
            generation: 0,
            lag,
        })
    }

    pub fn state(&self) -> FenceState {
        self.state
    }

    fn ud(&self, kind: u8) -> u64 {
        user_data(self.tag, kind, self.generation)
    }

    fn empty_slots(&self, submitter: &Submitter<'_>) -> Result<(), FenceError> {
        submitter
            .register_files_update(0, &self.empty)
            .map(drop)
            .map_err(io_err("empty the output slots"))
    }

    /// The lease now runs until `until`. Armed: the kernel's deadline
    /// follows, lazily. Fired: the timer and then the fill are submitted at
    /// once (if `until` is still ahead); outputs resume when the fill's
    /// CQE arrives ([`FenceEvent::Restored`]).
    pub fn renew(
        &mut self,
        until: Instant,
        submitter: &Submitter<'_>,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Result<(), FenceError> {
        match self.state {
            FenceState::Closed | FenceState::Lifted => Ok(()),
            FenceState::Armed(t) | FenceState::Restoring(t) => {
                if until > t + self.lag {
                    *self.deadline = to_timespec(until);
                    let update = opcode::TimeoutUpdate::new(self.ud(KIND_TIMER), &*self.deadline)
                        .flags(types::TimeoutFlags::ABS)
                        .build()
                        .user_data(self.ud(KIND_UPDATE));
                    // SAFETY: the timespec is boxed in `self`, which outlives
                    // the ring's use of it (the kernel copies it at issue).
                    if unsafe { sq.push(&update) }.is_ok() {
                        // Until the update is in, the old deadline holds:
                        // earlier, which only fences sooner.
                        self.state = match self.state {
                            FenceState::Armed(_) => FenceState::Armed(until),
                            _ => FenceState::Restoring(until),
                        };
                    }
                }
                Ok(())
            }
            FenceState::Fired => {
                if until <= Instant::now() {
                    return Ok(());
                }
                self.restore(until, submitter, sq)
            }
        }
    }

    /// Submits the timer (linked to the clear) and then the fill, and
    /// enters the kernel with them at once.
    fn restore(
        &mut self,
        until: Instant,
        submitter: &Submitter<'_>,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Result<(), FenceError> {
        self.generation = self.generation.wrapping_add(1);
        *self.deadline = to_timespec(until);
        let timer = opcode::Timeout::new(&*self.deadline)
            .flags(types::TimeoutFlags::ABS | types::TimeoutFlags::ETIME_SUCCESS)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(self.ud(KIND_TIMER));
        let clear = opcode::FilesUpdate::new(self.empty.as_ptr(), self.empty.len() as u32)
            .offset(0)
            .build()
            .user_data(self.ud(KIND_CLEAR));
        let fill = opcode::FilesUpdate::new(self.fds.as_ptr(), self.fds.len() as u32)
            .offset(0)
            .build()
            .user_data(self.ud(KIND_FILL));
        // SAFETY: the timespec and both descriptor arrays are boxed in
        // `self` and stay put while the SQEs are in the ring (the fence
        // lives as long as the ring's user). All three go in together or
        // not at all.
        if unsafe { sq.push_multiple(&[timer, clear, fill]) }.is_err() {
            // No room: still fenced; the next renewal tries again.
            return Ok(());
        }
        self.state = FenceState::Restoring(until);
        sq.sync();
        submitter
            .submit()
            .map(drop)
            .map_err(io_err("submit the restored fence"))
    }

    /// Removes the timer, in the kernel before this returns (a timer left
    /// behind would empty slots filled after it).
    fn cancel_timer(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Result<(), FenceError> {
        if matches!(self.state, FenceState::Armed(_) | FenceState::Restoring(_)) {
            let remove = opcode::TimeoutRemove::new(self.ud(KIND_TIMER))
                .build()
                .user_data(self.ud(KIND_REMOVE));
            // SAFETY: a remove points at nothing of ours.
            if unsafe { sq.push(&remove) }.is_ok() {
                sq.sync();
                submitter
                    .submit()
                    .map_err(io_err("submit the removal of the fence's timer"))?;
            }
        }
        // CQEs of the old timer are now stale.
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// No lease to honour any more (a primary alone): the timer is removed
    /// (its linked clear is cancelled with it) and the slots filled.
    pub fn lift(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Result<(), FenceError> {
        if matches!(self.state, FenceState::Closed | FenceState::Lifted) {
            return Ok(());
        }
        self.cancel_timer(submitter, sq)?;
        self.state = FenceState::Lifted;
        submitter
            .register_files_update(0, &self.fds)
            .map(drop)
            .map_err(io_err("fill the output slots"))
    }

    /// A primary that ran alone takes a backup again (a live clone's join
    /// point): the lease is back, so a lifted fence starts over as at its
    /// creation — slots empty, nothing leaves before the first renewal
    /// restores them under a timer. False on a closed fence (a side that
    /// lost never serves again); a fence that still holds a lease is left
    /// as it is.
    pub fn rearm(&mut self, submitter: &Submitter<'_>) -> Result<bool, FenceError> {
        match self.state {
            FenceState::Closed => Ok(false),
            FenceState::Lifted => {
                self.empty_slots(submitter)?;
                self.state = FenceState::Fired;
                Ok(true)
            }
            FenceState::Fired | FenceState::Restoring(_) | FenceState::Armed(_) => Ok(true),
        }
    }

    /// A side that lost: the slots are emptied for good.
    pub fn close(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Result<(), FenceError> {
        self.cancel_timer(submitter, sq)?;
        self.state = FenceState::Closed;
        self.empty_slots(submitter)
    }

    /// One of the fence's CQEs.
    pub fn on_cqe(
        &mut self,
        user_data: u64,
        result: i32,
        submitter: &Submitter<'_>,
    ) -> Result<Option<FenceEvent>, FenceError> {
        if user_data_id(user_data) != self.generation & ID_MASK {
            return Ok(None);
        }
        match (user_data_kind(user_data), self.state) {
            (KIND_CLEAR, FenceState::Armed(_) | FenceState::Restoring(_)) if result >= 0 => {
                self.state = FenceState::Fired;
                Ok(Some(FenceEvent::Fired))
            }
            (KIND_FILL, FenceState::Restoring(until)) if result >= 0 => {
                self.state = FenceState::Armed(until);
                Ok(Some(FenceEvent::Restored))
            }
            // A timer the kernel refused (not fired, not removed) guards
            // nothing: empty the slots ourselves.
            (KIND_TIMER, FenceState::Armed(_) | FenceState::Restoring(_))
                if result < 0 && result != -libc::ETIME && result != -libc::ECANCELED =>
            {
                self.state = FenceState::Fired;
                self.empty_slots(submitter)?;
                Ok(Some(FenceEvent::Fired))
            }
            _ => Ok(None),
        }
    }
}
