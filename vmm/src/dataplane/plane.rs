//! What an FT role adds to the I/O thread, as seen from the VMM: engines of
//! its own on the shared ring (the logging channel, the heartbeats), the
//! output rule's decisions about the disk and tap engines' gates, and a
//! go-live. The VMM knows nothing of FT beyond this trait; `lockstep-ft`
//! implements it for the primary and the backup.

use std::time::{Duration, Instant};

use io_uring::{Submitter, cqueue, squeue};

use blkio::DiskEngine;
use ioengine::{Fence, FenceState, Lease};
use netio::TapEngine;

/// The ring's output fence and what changes it.
pub struct FenceCtl<'a> {
    pub fence: &'a mut Fence,
    pub submitter: &'a Submitter<'a>,
}

/// The I/O thread's engines, lent to a plane for one call.
pub struct Dataplane<'a> {
    pub disk: Option<&'a mut DiskEngine>,
    pub tap: Option<&'a mut TapEngine>,
    /// Whether received frames go to the guest (false on a backup until it
    /// goes live).
    pub deliver_rx: &'a mut bool,
    /// The kernel's half of the lease, on a side that holds one.
    pub fence: Option<FenceCtl<'a>>,
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
            fence: None,
        }
    }

    /// The same with the ring's fence.
    pub fn with_fence(mut self, fence: Option<FenceCtl<'a>>) -> Self {
        self.fence = fence;
        self
    }

    /// Tells the engines whether the kernel's fence holds their outputs.
    pub fn set_fenced(&mut self, fenced: bool, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(d) = self.disk.as_deref_mut() {
            d.set_fenced(fenced, sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.set_fenced(fenced, sq);
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

    /// The side's output lease, which the engines honour at the last step
    /// and the kernel's fence enforces there too.
    pub fn set_lease(&mut self, lease: Lease, sq: &mut squeue::SubmissionQueue<'_>) {
        let mut lifted = false;
        if let Some(f) = self.fence.as_mut() {
            let changed = match lease {
                // A fired fence is restored asynchronously: outputs resume
                // on its `Restored` event.
                Lease::Until(t) => f.fence.renew(t, f.submitter, sq),
                Lease::Unbounded => f.fence.lift(f.submitter, sq),
            };
            if let Err(e) = changed {
                tracing::error!("{e}: outputs stay held");
            }
            lifted = f.fence.state() == FenceState::Lifted;
        }
        if let Some(d) = self.disk.as_deref_mut() {
            d.set_lease(lease, sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.set_lease(lease, sq);
        }
        if lifted {
            self.set_fenced(false, sq);
        }
    }

    /// A side that lost the arbiter: nothing held or later leaves, for good.
    pub fn revoke(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(f) = self.fence.as_mut()
            && let Err(e) = f.fence.close(f.submitter, sq)
        {
            tracing::error!("{e}");
        }
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
    /// Whether this side's outputs leave under a lease the kernel enforces
    /// (`ioengine::Fence`), and how far the kernel's deadline may lag behind
    /// the lease (`None`: no fence).
    fn fence_lag(&self) -> Option<Duration> {
        None
    }
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
