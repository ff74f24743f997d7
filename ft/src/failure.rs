//! Failure detection (the paper's §2.3): each side watches the other's UDP
//! heartbeats and the logging channel's traffic (acks on the primary,
//! entries and keep-alives on the backup), and declares its peer dead after
//! a timeout without either. A closed channel while heartbeats still arrive
//! is not a dead peer: the backup can no longer follow a primary that lives
//! on, and must not take over from it.
//!
//! The monitor only judges; the plane feeds it evidence, and the supervisor
//! acts on its verdict through the arbiter.

use std::time::{Duration, Instant};

use logchan::FailureDetector;

/// A peer never heard from yet (still starting) gets this long before it
/// counts as dead; once heard from, the failure timeout applies.
pub const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// Heartbeat timing and failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub period: Duration,
    pub timeout: Duration,
}

/// What the evidence says about the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heard from within the timeout (or still within the start-up grace).
    Alive,
    /// Nothing at all heard for this long: heartbeats and channel both
    /// silent.
    Dead { silent_for: Duration },
    /// The channel closed more than a timeout ago, but the peer's
    /// heartbeats still arrive: it lives on without this side.
    ChannelBroken,
}

/// The evidence about one peer.
#[derive(Clone, Copy, Debug)]
pub struct FailureMonitor {
    detector: FailureDetector,
    timeout: Duration,
    /// When the logging channel closed without the peer ending the run.
    closed_at: Option<Instant>,
}

impl FailureMonitor {
    /// Starts watching at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        FailureMonitor {
            detector: FailureDetector::new(timeout, now),
            timeout,
            closed_at: None,
        }
    }

    /// A sign of life: a heartbeat, an ack, log entries.
    pub fn heard(&mut self, at: Instant) {
        self.detector.heard(at);
    }

    /// The logging channel closed (an error or a corrupt entry) at `at`.
    pub fn channel_closed(&mut self, at: Instant) {
        self.closed_at.get_or_insert(at);
    }

    /// Time since the last sign of life.
    pub fn silent_for(&self, now: Instant) -> Duration {
        self.detector.silent_for(now)
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let dead = if self.detector.ever_heard() {
            self.detector.is_dead(now)
        } else {
            self.detector.silent_for(now) > STARTUP_GRACE
        };
        if dead {
            return Verdict::Dead {
                silent_for: self.detector.silent_for(now),
            };
        }
        match self.closed_at {
            Some(at) if now.saturating_duration_since(at) > self.timeout => Verdict::ChannelBroken,
            _ => Verdict::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(50);

    #[test]
    fn silence_past_the_timeout_is_death_once_heard_from() {
        let t0 = Instant::now();
        let mut m = FailureMonitor::new(T, t0);
        m.heard(t0);
        assert_eq!(m.verdict(t0 + T), Verdict::Alive, "exactly the timeout");
        let late = t0 + T + Duration::from_millis(1);
        assert!(matches!(m.verdict(late), Verdict::Dead { silent_for } if silent_for > T));
        m.heard(late);
        assert_eq!(m.verdict(late), Verdict::Alive, "heard again");
        m.heard(t0);
        assert_eq!(
            m.silent_for(late),
            Duration::ZERO,
            "older evidence changes nothing"
        );
    }

    #[test]
    fn a_peer_never_heard_from_gets_the_startup_grace() {
        let t0 = Instant::now();
        let m = FailureMonitor::new(T, t0);
        assert_eq!(m.verdict(t0 + 10 * T), Verdict::Alive);
        assert!(matches!(
            m.verdict(t0 + STARTUP_GRACE + T),
            Verdict::Dead { .. }
        ));
    }

    #[test]
    fn a_closed_channel_with_heartbeats_is_broken_not_dead() {
        let t0 = Instant::now();
        let mut m = FailureMonitor::new(T, t0);
        m.heard(t0);
        m.channel_closed(t0);
        assert_eq!(m.verdict(t0 + T / 2), Verdict::Alive, "within the timeout");
        let later = t0 + 2 * T;
        m.heard(later);
        assert_eq!(m.verdict(later), Verdict::ChannelBroken);
        m.channel_closed(later);
        assert_eq!(
            m.verdict(later),
            Verdict::ChannelBroken,
            "the first close counts"
        );
        let silent = later + 2 * T;
        assert!(
            matches!(m.verdict(silent), Verdict::Dead { .. }),
            "and silence still means death"
        );
    }
}
