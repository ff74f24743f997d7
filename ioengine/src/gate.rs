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

use std::collections::VecDeque;

/// Outputs waiting to be released, oldest first, and the release watermark.
#[derive(Debug)]
pub struct OutputGate<T = ()> {
    held: VecDeque<(u64, T)>,
    released: u64,
    drop_outputs: bool,
}

impl<T> Default for OutputGate<T> {
    fn default() -> Self {
        OutputGate {
            held: VecDeque::new(),
            released: 0,
            drop_outputs: false,
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

    /// True if an output tagged `gate_seq` may leave now.
    pub fn is_open(&self, gate_seq: u64) -> bool {
        gate_seq <= self.released
    }

    /// Queues `item` behind everything already held.
    pub fn push(&mut self, gate_seq: u64, item: T) {
        self.held.push_back((gate_seq, item));
    }

    /// The oldest held output, if its gate is open. Outputs behind a held
    /// one wait for it.
    pub fn pop_ready(&mut self) -> Option<T> {
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

    /// Backup mode: outputs complete without leaving the host.
    pub fn set_drop_outputs(&mut self, drop: bool) {
        self.drop_outputs = drop;
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
        let mut g = OutputGate::new();
        g.push(0, vec![0]);
        g.push(3, vec![3]);
        g.push(2, vec![2]);
        assert_eq!(g.pop_ready(), Some(vec![0]));
        assert_eq!(g.pop_ready(), None);
        g.release(2);
        assert_eq!(g.pop_ready(), None, "frame 2 waits behind frame 3");
        g.release(3);
        assert_eq!(g.pop_ready(), Some(vec![3]));
        assert_eq!(g.pop_ready(), Some(vec![2]));
        g.release(1);
        assert_eq!(g.acked(), 3);
        assert!(g.is_empty());
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
