//! The output rule (the paper's §2.2): an external output — a frame for the
//! client LAN, a write to the shared disk — leaves the primary only after
//! the backup has acknowledged every log entry up to the one that recorded
//! it. The guest is not stopped meanwhile: outputs wait, the vCPU runs on.
//!
//! The rule lives here, whole:
//! * **tagging** ([`OutputRule::tag`]): an output recorded at log entry
//!   `seq` waits at its engine's gate (`ioengine::OutputGate`) under tag
//!   `seq`; an output without a log entry (a VM alone, a backup gone live)
//!   and every output once the primary continues alone gets tag 0: it
//!   leaves at once.
//! * **release** ([`OutputRule::on_ack`]): an ack for `acked` moves the
//!   release watermark to `acked`; the plane passes it to the engines'
//!   gates, which let out everything tagged up to it, in order.
//! * **opening for good** ([`OutputRule::open_for_good`]): a primary whose
//!   backup is gone, and who won the arbiter, continues alone: nothing
//!   waits any more.
//!
//! It also measures what the rule costs: the time from an output reaching
//! its gate to its release (`lockstep status`, the stop log line).

use std::collections::VecDeque;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Longest added latency the histogram records exactly (60 s, in µs).
const MAX_RECORDED_US: u64 = 60_000_000;

/// The primary's output rule.
pub struct OutputRule {
    /// The primary continues alone: nothing waits.
    open: bool,
    /// Everything tagged up to here may leave.
    released: u64,
    /// Tags waiting, with when they reached the gate, oldest first.
    held: VecDeque<(u64, Instant)>,
    /// Added latency in µs, per output released.
    added: Histogram<u64>,
}

impl Default for OutputRule {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputRule {
    pub fn new() -> Self {
        OutputRule {
            open: false,
            released: 0,
            held: VecDeque::new(),
            added: Histogram::new_with_bounds(1, MAX_RECORDED_US, 3).unwrap_or_else(|_| {
                Histogram::new(3).expect("a histogram with 3 significant digits")
            }),
        }
    }

    /// The tag under which an output recorded at log entry `seq` waits
    /// (0: it leaves at once).
    pub fn tag(&mut self, seq: u64, now: Instant) -> u64 {
        if self.open || seq == 0 || seq <= self.released {
            return 0;
        }
        self.held.push_back((seq, now));
        seq
    }

    /// The backup has acknowledged the log up to `acked`: returns the new
    /// release watermark if it moved (the caller releases the gates).
    pub fn on_ack(&mut self, acked: u64, now: Instant) -> Option<u64> {
        if acked <= self.released {
            return None;
        }
        self.released = acked;
        while self.held.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, since)) = self.held.pop_front() {
                let us = now.saturating_duration_since(since).as_micros();
                let _ = self
                    .added
                    .record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
        }
        Some(acked)
    }

    /// The primary continues alone: every held output may leave, and every
    /// later one leaves at once. True the first time.
    pub fn open_for_good(&mut self) -> bool {
        if self.open {
            return false;
        }
        self.open = true;
        self.held.clear();
        true
    }

    /// Whether the rule no longer holds anything (the primary is alone).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The release watermark.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Outputs waiting for an ack.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// One line on the latency the rule added, if anything was held.
    pub fn latency_summary(&self) -> Option<String> {
        let h = &self.added;
        (!h.is_empty()).then(|| {
            format!(
                "output rule: {} outputs held; added latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_output_waits_for_its_own_entry_and_no_longer() {
        let t0 = Instant::now();
        let mut rule = OutputRule::new();
        assert_eq!(rule.tag(0, t0), 0, "no log entry: leaves at once");
        assert_eq!(rule.tag(5, t0), 5);
        assert_eq!(rule.tag(9, t0), 9);
        assert_eq!(rule.held(), 2);
        assert_eq!(rule.on_ack(4, t0), Some(4), "the watermark moves");
        assert_eq!(rule.held(), 2, "nothing is released below its tag");
        let later = t0 + Duration::from_micros(250);
        assert_eq!(rule.on_ack(5, later), Some(5));
        assert_eq!(rule.held(), 1);
        assert_eq!(
            rule.on_ack(5, later),
            None,
            "a repeated ack changes nothing"
        );
        assert_eq!(rule.on_ack(3, later), None, "acks never go back");
        assert_eq!(rule.released(), 5);
        assert_eq!(rule.tag(2, later), 0, "already acked: leaves at once");
        assert!(
            rule.latency_summary()
                .is_some_and(|s| s.contains("1 outputs held") && s.contains("p50 250 µs"))
        );
    }

    #[test]
    fn alone_nothing_waits_any_more() {
        let t0 = Instant::now();
        let mut rule = OutputRule::new();
        assert_eq!(rule.tag(7, t0), 7);
        assert!(rule.open_for_good());
        assert!(!rule.open_for_good(), "only the first time");
        assert!(rule.is_open());
        assert_eq!(rule.held(), 0);
        assert_eq!(rule.tag(8, t0), 0);
    }
}
