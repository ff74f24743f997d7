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
//! * **the lease** (fencing, `docs/failover.md`): an ack also renews the
//!   primary's lease, to the moment the acked entry was sent plus the lease
//!   length, less a margin. The engines let nothing out once it has run
//!   out ([`ioengine::Lease`], checked at the last step), and the backup
//!   goes live no sooner than its last ack plus the same length — so a
//!   primary that was paused, partitioned or left behind can no longer
//!   release anything by the time another side serves.
//! * **opening for good** ([`OutputRule::open_for_good`]): a primary whose
//!   backup is gone, and who won the arbiter, continues alone: nothing
//!   waits any more, and no lease is needed.
//!
//! It also measures what the rule costs: the time from an output reaching
//! its gate to its release (`lockstep status`, the stop log line).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ioengine::Lease;

/// Longest added latency the histogram records exactly (60 s, in µs).
const MAX_RECORDED_US: u64 = 60_000_000;

/// What the primary takes off its lease: clocks of two hosts that run at
/// rates up to 1 % apart (NTP keeps them within 0.05 %), and timer slack
/// (the kernel fence fires on an hrtimer; docs/failover.md, "Fencing").
pub fn lease_margin(lease: Duration) -> Duration {
    lease / 100 + Duration::from_micros(500)
}

/// What an ack changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckEffect {
    /// The new release watermark, if it moved.
    pub released: Option<u64>,
    /// The new lease, if it moved.
    pub lease: Option<Instant>,
}

/// The primary's output rule.
pub struct OutputRule {
    /// The primary continues alone: nothing waits.
    open: bool,
    /// Everything tagged up to here may leave.
    released: u64,
    /// The lease length, and until when the lease runs (an instant in the
    /// past at start: nothing leaves before the backup's first ack).
    lease_len: Duration,
    lease_until: Instant,
    /// Tags waiting, with when they reached the gate, oldest first.
    held: VecDeque<(u64, Instant)>,
    /// Added latency in µs, per output released.
    added: Histogram<u64>,
}

impl OutputRule {
    /// A rule whose lease lasts `lease_len` from the sending of each acked
    /// entry.
    pub fn new(lease_len: Duration) -> Self {
        OutputRule {
            open: false,
            released: 0,
            lease_len,
            lease_until: Instant::now(),
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

    /// The backup has acknowledged the log up to `acked`, whose entry was
    /// sent at `sent_at`: the watermark and the lease move (the caller
    /// passes both to the gates). The lease counts from the sending, never
    /// from the ack's arrival: an ack that waited in a socket while this
    /// process was stopped renews nothing.
    pub fn on_ack(&mut self, acked: u64, sent_at: Option<Instant>, now: Instant) -> AckEffect {
        let mut effect = AckEffect {
            released: None,
            lease: None,
        };
        if let Some(sent) = sent_at {
            let until = sent + self.lease_len.saturating_sub(lease_margin(self.lease_len));
            if until > self.lease_until {
                self.lease_until = until;
                effect.lease = Some(until);
            }
        }
        if acked <= self.released {
            return effect;
        }
        self.released = acked;
        effect.released = Some(acked);
        while self.held.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, since)) = self.held.pop_front() {
                let us = now.saturating_duration_since(since).as_micros();
                let _ = self
                    .added
                    .record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
        }
        effect
    }

    /// The lease's length.
    pub fn lease_len(&self) -> Duration {
        self.lease_len
    }

    /// The lease the gates must honour now.
    pub fn lease(&self) -> Lease {
        if self.open {
            Lease::Unbounded
        } else {
            Lease::Until(self.lease_until)
        }
    }

    /// Whether outputs may leave at `now` as far as the lease goes.
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.open || now < self.lease_until
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
    use super::*;

    const LEASE: Duration = Duration::from_millis(50);

    #[test]
    fn an_output_waits_for_its_own_entry_and_no_longer() {
        let t0 = Instant::now();
        let mut rule = OutputRule::new(LEASE);
        assert_eq!(rule.tag(0, t0), 0, "no log entry: leaves at once");
        assert_eq!(rule.tag(5, t0), 5);
        assert_eq!(rule.tag(9, t0), 9);
        assert_eq!(rule.held(), 2);
        assert_eq!(rule.on_ack(4, Some(t0), t0).released, Some(4));
        assert_eq!(rule.held(), 2, "nothing is released below its tag");
        let later = t0 + Duration::from_micros(250);
        assert_eq!(rule.on_ack(5, Some(t0), later).released, Some(5));
        assert_eq!(rule.held(), 1);
        assert_eq!(rule.on_ack(5, Some(t0), later).released, None, "repeated");
        assert_eq!(rule.on_ack(3, Some(t0), later).released, None, "never back");
        assert_eq!(rule.released(), 5);
        assert_eq!(rule.tag(2, later), 0, "already acked: leaves at once");
        assert!(
            rule.latency_summary()
                .is_some_and(|s| s.contains("1 outputs held") && s.contains("p50 250 µs"))
        );
    }

    #[test]
    fn the_lease_counts_from_the_sending_and_never_shrinks() {
        let mut rule = OutputRule::new(LEASE);
        let t0 = Instant::now();
        assert!(!rule.lease_valid(t0), "nothing leaves before the first ack");
        let effect = rule.on_ack(1, Some(t0), t0 + Duration::from_millis(1));
        let until = t0 + LEASE - lease_margin(LEASE);
        assert_eq!(effect.lease, Some(until));
        assert_eq!(rule.lease(), Lease::Until(until));
        assert!(rule.lease_valid(until - Duration::from_micros(1)));
        assert!(!rule.lease_valid(until), "expired at its end");
        // An ack that waited while this side was stopped: its entry was
        // sent long ago, so it renews nothing.
        let effect = rule.on_ack(2, Some(t0), t0 + 10 * LEASE);
        assert_eq!(effect.lease, None);
        assert_eq!(effect.released, Some(2), "the watermark still moves");
        assert!(!rule.lease_valid(t0 + 10 * LEASE));
        assert_eq!(rule.on_ack(3, None, t0).lease, None, "nothing sent");
        assert!(lease_margin(LEASE) >= Duration::from_micros(500));
    }

    #[test]
    fn alone_nothing_waits_any_more() {
        let t0 = Instant::now();
        let mut rule = OutputRule::new(LEASE);
        assert_eq!(rule.tag(7, t0), 7);
        assert!(rule.open_for_good());
        assert!(!rule.open_for_good(), "only the first time");
        assert!(rule.is_open());
        assert_eq!(rule.held(), 0);
        assert_eq!(rule.tag(8, t0), 0);
        assert_eq!(rule.lease(), Lease::Unbounded);
        assert!(rule.lease_valid(t0 + 1000 * LEASE));
    }
}
