//! The output gate for transmitted frames (the paper's output rule).
//!
//! Each frame carries `gate_seq`, the log sequence number current when the
//! guest produced it. Frames leave in the order the guest sent them, each
//! only once the backup has acked the log up to its `gate_seq`. A single VM
//! passes 0, which is always open.

use std::collections::VecDeque;

/// Frames waiting for the log to be acked, oldest first.
#[derive(Debug, Default)]
pub struct FrameGate {
    held: VecDeque<(u64, Vec<u8>)>,
    acked: u64,
}

impl FrameGate {
    /// An empty gate, acked up to 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `frame` behind every frame already held.
    pub fn push(&mut self, gate_seq: u64, frame: Vec<u8>) {
        self.held.push_back((gate_seq, frame));
    }

    /// Raises the acked sequence number (never lowers it).
    pub fn release(&mut self, acked_seq: u64) {
        self.acked = self.acked.max(acked_seq);
    }

    /// The highest acked sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The oldest frame, if its gate is open. Frames behind a held one wait
    /// for it: order is kept even if sequence numbers were not monotonic.
    pub fn pop_ready(&mut self) -> Option<Vec<u8>> {
        match self.held.front() {
            Some((seq, _)) if *seq <= self.acked => self.held.pop_front().map(|(_, f)| f),
            _ => None,
        }
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Drops every held frame; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_in_order_once_acked() {
        let mut g = FrameGate::new();
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
}
