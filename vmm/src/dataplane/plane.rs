//! What an FT role adds to the I/O thread, as seen from the VMM: engines of
//! its own on the shared ring (the logging channel, the heartbeats), the
//! output rule's decisions about the disk and tap engines' gates, and a
//! go-live. The VMM knows nothing of FT beyond this trait; `lockstep-ft`
//! implements it for the primary and the backup.

use std::time::Instant;

use io_uring::{Submitter, cqueue, squeue};

use blkio::DiskEngine;
use ioengine::Lease;
use netio::TapEngine;

/// The I/O thread's engines, lent to a plane for one call.
pub struct Dataplane<'a> {
    pub disk: Option<&'a mut DiskEngine>,
    pub tap: Option<&'a mut TapEngine>,
    /// Whether received frames go to the guest (false on a backup until it
    /// goes live).
    pub deliver_rx: &'a mut bool,
}

impl<'a> Dataplane<'a> {
    pub fn new(
        disk: &'a mut Option<DiskEngine>,
        tap: &'a mut Option<TapEngine>,
        deliver_rx: &'a mut bool,
    ) -> Self {
        Dataplane {
            disk: disk.as_mut(),
            tap: tap.as_mut(),
            deliver_rx,
        }
    }

    /// Lets the outputs tagged up to `seq` out of the engines' gates.
    pub fn release(&mut self, seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(d) = self.disk.as_deref_mut() {
            d.release(seq, sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.release(seq, sq);
        }
    }

    /// The side's output lease, which the engines honour at the last step.
    pub fn set_lease(&mut self, lease: Lease, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(d) = self.disk.as_deref_mut() {
            d.set_lease(lease, sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.set_lease(lease, sq);
        }
    }

    /// A side that lost the arbiter: nothing held or later leaves, for good.
    pub fn revoke(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(d) = self.disk.as_deref_mut() {
            d.revoke(sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.revoke();
        }
    }

    /// Outputs become real (a backup going live) or are dropped.
    pub fn set_drop_outputs(&mut self, drop: bool) {
        if let Some(t) = self.tap.as_deref_mut() {
            t.set_drop_outputs(drop);
        }
        if let Some(d) = self.disk.as_deref_mut() {
            d.set_drop_outputs(drop);
        }
    }
}

/// Why a plane could not start on the I/O thread's ring.
pub type AttachError = logchan::channel::SetupError;

/// An FT role's part of the I/O thread. Every method runs on the I/O
/// thread; none blocks.
pub trait IoPlane: Send {
    /// Registers buffers and picks send/receive modes, before the first
    /// `pump`; returns a line for the operator.
    fn attach(&mut self, submitter: &Submitter<'_>) -> Result<String, AttachError>;
    /// Whether completions with this `user_data` tag are the plane's.
    fn owns(&self, tag: u8) -> bool;
    /// Pushes the plane's SQEs.
    fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant);
    /// Whether the plane has work that should keep the I/O thread awake.
    fn busy(&self) -> bool;
    /// Whether everything the plane must send has left (for a clean stop).
    fn flushed(&self) -> bool;
    /// One of the plane's completions.
    fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        dp: &mut Dataplane<'_>,
    );
    /// After each round of completions: timeouts and the main thread's
    /// decisions.
    fn tick(&mut self, now: Instant, sq: &mut squeue::SubmissionQueue<'_>, dp: &mut Dataplane<'_>);
    /// An output (a frame, a disk write) whose log entry has sequence
    /// number `seq` is handed to its engine now: the tag its gate holds it
    /// under (0: it may leave at once).
    fn gate_tag(&mut self, seq: u64, now: Instant) -> u64;
    /// A backup goes live: its outputs become real.
    fn go_live(&mut self, dp: &mut Dataplane<'_>);
    /// The run is over: close the plane's connections.
    fn shutdown(&mut self);
}
