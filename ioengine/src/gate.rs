//! The output gate: where an engine holds each output (a frame for the tap,
//! a write for the disk) until the output rule lets it leave.
//!
//! Every output carries `gate_seq`, the sequence number of the log entry
//! that recorded it (0 for a VM without a backup, which is always open). It
//! may leave once the log is released up to that entry: `released >=
//! gate_seq`. Which sequence numbers are released, and when, is the output
//! rule's decision (`lockstep_ft::output_rule`); the gate only enforces it,
//! as late as possible. A backup drops its outputs instead: they complete
//! without leaving the host.
//!
//! Outputs queued in a gate leave in the order they were pushed, each once
//! its own tag is released, so an output is never overtaken by a later one
//! even if tags are not monotonic. An engine that orders its work itself
//! (the disk engine's IO serialization) uses only the watermark.
//!
//! **The lease** (an FT primary's fencing, `docs/failover.md`): besides the
//! watermark, nothing leaves once the side's lease has run out, however far
//! the watermark is. The engine asks [`OutputGate::lease_valid`] with the
//! time of the very step that hands an output to the kernel, so a process
//! that was paused, or that lost its backup, finds out there, at the last
//! step, before anything queued while it slept can leave. A VM alone (no
//! pair) has no lease to honour: [`Lease::Unbounded`].
//!
//! **Revocation** (a side that lost the arbiter): everything held is
//! dropped and every later output completes without leaving the host.

use std::collections::VecDeque;
use std::time::Instant;

/// Until when outputs may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// No lease to honour (no pair, a primary alone, a backup gone live).
    Unbounded,
    /// Only before this instant (an FT primary: renewed by its backup's
    /// acks); an instant in the past holds everything.
    Until(Instant),
}

/// Outputs waiting to be released, oldest first, the release watermark,
/// and the lease.
#[derive(Debug)]
pub struct OutputGate<T = ()> {
    held: VecDeque<(u64, T)>,
    released: u64,
    lease: Lease,
    drop_outputs: bool,
    revoked: bool,
    /// The kernel's fence fired: outputs would fail there, so none is
    /// handed over until it is restored.
    fenced: bool,
}

impl<T> Default for OutputGate<T> {
    fn default() -> Self {
        OutputGate {
            held: VecDeque::new(),
            released: 0,
            lease: Lease::Unbounded,
            drop_outputs: false,
            revoked: false,
            fenced: false,
        }
    }
}

impl<T> OutputGate<T> {
    /// An empty gate, open for `gate_seq` 0 only, outputs not dropped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the release watermark (it never goes back). Returns true if
    /// it moved.
    pub fn release(&mut self, seq: u64) -> bool {
        let moved = seq > self.released;
        self.released = self.released.max(seq);
        moved
    }

    /// The highest released sequence number.
    pub fn acked(&self) -> u64 {
        self.released
    }

    /// True if an output tagged `gate_seq` is released (the lease is
    /// checked separately, at the last step: [`Self::lease_valid`]).
    pub fn is_open(&self, gate_seq: u64) -> bool {
        gate_seq <= self.released
    }

    /// Sets the lease: [`Lease::Until`] only ever moves later, except that
    /// [`Lease::Unbounded`] may be replaced by a bounded one (a primary
    /// that starts holding a lease). A revoked gate keeps no lease.
    pub fn set_lease(&mut self, lease: Lease) {
        if self.revoked {
            return;
        }
        self.lease = match (self.lease, lease) {
            (Lease::Until(old), Lease::Until(new)) => Lease::Until(old.max(new)),
            (_, new) => new,
        };
    }

    /// The lease.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Whether an output may be handed to the kernel at `now`.
    pub fn lease_valid(&self, now: Instant) -> bool {
        if self.revoked || self.fenced {
            return false;
        }
        match self.lease {
            Lease::Unbounded => true,
            Lease::Until(t) => now < t,
        }
    }

    /// The kernel's fence fired (`true`) or was restored.
    pub fn set_fenced(&mut self, fenced: bool) {
        self.fenced = fenced;
    }

    /// A side that lost: held outputs are dropped (returned count), later
    /// ones complete without leaving, for good.
    pub fn revoke(&mut self) -> usize {
        self.revoked = true;
        self.drop_outputs = true;
        self.clear()
    }

    /// A primary that ran alone takes a backup again (a live clone's join
    /// point, docs/join.md): outputs tagged from here on wait for releases
    /// again. Everything tagged before was released when the primary went
    /// alone. False, and nothing changes, on a revoked gate: a side that
    /// lost never serves again.
    pub fn rearm(&mut self) -> bool {
        if self.revoked {
            return false;
        }
        self.released = 0;
        true
    }

    /// Whether [`Self::revoke`] was called.
    pub fn revoked(&self) -> bool {
        self.revoked
    }

    /// Queues `item` behind everything already held.
    pub fn push(&mut self, gate_seq: u64, item: T) {
        self.held.push_back((gate_seq, item));
    }

    /// The oldest held output, if its gate is open and the lease valid at
    /// `now`. Outputs behind a held one wait for it.
    pub fn pop_ready(&mut self, now: Instant) -> Option<T> {
        if !self.lease_valid(now) {
            return None;
        }
        match self.held.front() {
            Some((seq, _)) if self.is_open(*seq) => self.held.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }

    /// Outputs held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Drops every held output; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        n
    }

    /// Backup mode: outputs complete without leaving the host (for good
    /// once revoked).
    pub fn set_drop_outputs(&mut self, drop: bool) {
        self.drop_outputs = drop || self.revoked;
    }

    /// True in backup mode.
    pub fn drop_outputs(&self) -> bool {
        self.drop_outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_opens_monotonically() {
        let mut g = OutputGate::<()>::new();
        assert!(g.is_open(0));
        assert!(!g.is_open(1));
        assert!(g.release(5));
        assert!(g.is_open(5) && !g.is_open(6));
        assert!(!g.release(3));
        assert_eq!(g.acked(), 5);
    }

    #[test]
    fn frames_leave_in_order_once_acked() {
        let now = Instant::now();
        let mut g = OutputGate::new();
        g.push(0, vec![0]);
        g.push(3, vec![3]);
        g.push(2, vec![2]);
        assert_eq!(g.pop_ready(now), Some(vec![0]));
        assert_eq!(g.pop_ready(now), None);
        g.release(2);
        assert_eq!(g.pop_ready(now), None, "frame 2 waits behind frame 3");
        g.release(3);
        assert_eq!(g.pop_ready(now), Some(vec![3]));
        assert_eq!(g.pop_ready(now), Some(vec![2]));
        g.release(1);
        assert_eq!(g.acked(), 3);
        assert!(g.is_empty());
    }

    #[test]
    fn nothing_leaves_after_the_lease_however_far_the_watermark() {
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_millis(10);
        let mut g = OutputGate::new();
        assert!(g.lease_valid(later), "no pair: no lease to honour");
        g.set_lease(Lease::Until(later));
        g.push(1, "a");
        g.release(u64::MAX);
        assert!(g.lease_valid(t0) && !g.lease_valid(later));
        assert_eq!(g.pop_ready(later), None, "expired: held");
        g.set_lease(Lease::Until(t0));
        assert_eq!(g.lease(), Lease::Until(later), "a lease never shrinks");
        assert_eq!(g.pop_ready(t0), Some("a"));
        g.push(2, "b");
        let mut alone = OutputGate::<()>::new();
        alone.set_lease(Lease::Until(t0));
        alone.set_lease(Lease::Unbounded);
        assert!(alone.lease_valid(later), "alone: unbounded again");
        assert_eq!(g.revoke(), 1, "a loser drops what it holds");
        g.set_lease(Lease::Unbounded);
        g.set_drop_outputs(false);
        assert!(
            g.revoked() && g.drop_outputs() && !g.lease_valid(t0),
            "for good"
        );
    }

    #[test]
    fn drop_mode_is_a_flag_and_clear_counts() {
        let mut g = OutputGate::new();
        g.push(7, "a");
        g.push(8, "b");
        g.set_drop_outputs(true);
        assert!(g.drop_outputs());
        assert_eq!(g.clear(), 2);
        assert_eq!(g.len(), 0);
    }
}
