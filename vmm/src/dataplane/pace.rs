//! The hook through which an FT primary paces its guest (the paper's
//! §3.2 throttling; `lockstep_ft::throttle`): after each sync exit the
//! vCPU thread tells the pacer where the guest is, and holds the guest as
//! long as the pacer says before it continues.
//!
//! Holding the guest at the return of its sync call cannot change what a
//! replay does: the guest sees time only through the sync call's logged
//! result, and the log is already published when the hold begins. The
//! backup replays the same entries, without the hold.

use std::time::Duration;

/// Where the guest is, after a sync exit's entries were published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncPoint {
    pub exit_index: u64,
    /// Nanoseconds the guest has run since the VM started, by the wall
    /// clock: host time less idle waits, full-buffer stalls and the
    /// pacer's own holds (cheap to read at every exit; it includes time
    /// the host took the CPU away, which a pacer wanting the replay's work
    /// measures otherwise, e.g. with the thread's CPU clock).
    pub exec_ns: u64,
    /// The log's last seq and bytes published so far.
    pub log_seq: u64,
    pub log_bytes: u64,
}

/// Decides how long the guest is held after a sync exit.
pub trait Pacer: Send {
    /// Called on the vCPU thread after every sync exit of a live run with
    /// a log; returns how long to hold the guest (zero: not at all).
    fn after_sync(&mut self, at: SyncPoint) -> Duration;
}
