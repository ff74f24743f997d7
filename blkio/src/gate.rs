//! The output gate for disk writes (the paper's output rule).
//!
//! Every write carries `gate_seq`, the log sequence number current when the
//! guest produced it. It may reach the disk only once the backup has acked
//! the log up to that entry: `acked >= gate_seq`. A single VM passes
//! `gate_seq = 0`, which is always open. A backup drops its outputs
//! instead: its writes complete without reaching the disk.

/// The gate's state: how far the log is acked, and whether outputs are
/// dropped (backup).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputGate {
    acked: u64,
    drop_outputs: bool,
}

impl OutputGate {
    /// Open for `gate_seq` 0 only, outputs not dropped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the acked sequence number (it never goes back). Returns true
    /// if it moved.
    pub fn release(&mut self, acked_seq: u64) -> bool {
        let moved = acked_seq > self.acked;
        self.acked = self.acked.max(acked_seq);
        moved
    }

    /// The highest acked sequence number seen.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// True if an output tagged `gate_seq` may leave now.
    pub fn is_open(&self, gate_seq: u64) -> bool {
        gate_seq <= self.acked
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
        let mut g = OutputGate::new();
        assert!(g.is_open(0));
        assert!(!g.is_open(1));
        assert!(g.release(5));
        assert!(g.is_open(5) && !g.is_open(6));
        assert!(!g.release(3));
        assert_eq!(g.acked(), 5);
    }
}
