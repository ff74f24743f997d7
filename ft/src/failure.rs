//! Failure detection (the paper's §2.3): each side watches the other's UDP
//! heartbeats and the logging channel's traffic (acks on the primary,
//! entries and keep-alives on the backup), and declares its peer dead after
//! a timeout without either. A closed channel while heartbeats still arrive
//! is `ChannelBroken`: the backup can no longer follow, and the arbiter
//! decides whether the primary lives on (it saw the close at once and
//! claimed first) or is gone and its heartbeats were stale evidence.
//!
//! A peer that is alive but makes no progress is failed too: the primary
//! watches its backup's acks, and a backup that acknowledges nothing for
//! the ack timeout while log entries wait is as good as gone (its
//! heartbeats alone would otherwise hold every output forever).
//!
//! Time this side itself did not run (a pause, a starved thread) is not
//! held against the peer: a gap between two looks longer than half the
//! timeout is forgiven, so a side that wakes from a stop first takes in
//! what arrived meanwhile instead of declaring its peer dead on stale
//! evidence. Safety never depends on this (the lease and the arbiter do
//! that); it only spares a needless failover.
//!
//! The monitor only judges; the plane feeds it evidence, and the supervisor
//! acts on its verdict through the arbiter.

use std::time::{Duration, Instant};

use logchan::FailureDetector;

/// A peer never heard from yet (still starting) gets this long before it
/// counts as dead; once heard from, the failure timeout applies.
pub const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// The start-up grace of a backup that joined by live clone (at least the
/// failure timeout): it built its VM before the copy and answered every
/// round, so all it has left at the switch is to restore the state and
/// start its heartbeats (milliseconds). With the boot's 10 s, a joiner
/// that stopped or died at the join point held every output of its
/// primary for 10 s (`tests/ft_join_pause.rs`).
pub const JOIN_GRACE: Duration = Duration::from_secs(1);

/// Heartbeat timing and failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub period: Duration,
    /// Silence (no heartbeat, no channel traffic) after which the peer is
    /// dead.
    pub timeout: Duration,
    /// Primary: how long a backup that is heard from may acknowledge
    /// nothing while log entries wait before it is failed.
    pub ack_timeout: Duration,
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
    /// Alive, but it has acknowledged nothing for this long while log
    /// entries were outstanding.
    NoProgress { for_: Duration },
}

/// The evidence about one peer.
#[derive(Clone, Copy, Debug)]
pub struct FailureMonitor {
    detector: FailureDetector,
    timeout: Duration,
    /// When the logging channel closed without the peer ending the run.
    closed_at: Option<Instant>,
    /// The ack timeout, and since when the acks have made no progress
    /// (reset by every ack that moves, and while nothing is outstanding).
    ack_timeout: Duration,
    progress_at: Instant,
    /// The last time this side looked.
    looked_at: Instant,
    /// How long a peer never heard from may stay silent, counted from
    /// `grace_from` (moved on by this side's own stalls, as the silence).
    startup_grace: Duration,
    grace_from: Instant,
}

impl FailureMonitor {
    /// Starts watching at `now`; an ack timeout as long as `timeout`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        FailureMonitor {
            detector: FailureDetector::new(timeout, now),
            timeout,
            closed_at: None,
            ack_timeout: timeout,
            progress_at: now,
            looked_at: now,
            startup_grace: STARTUP_GRACE,
            grace_from: now,
        }
    }

    /// The same with a start-up grace of its own (a joined backup's).
    pub fn with_startup_grace(mut self, grace: Duration) -> Self {
        self.startup_grace = grace;
        self
    }

    /// The same with an ack timeout of its own.
    pub fn with_ack_timeout(mut self, ack_timeout: Duration) -> Self {
        self.ack_timeout = ack_timeout;
        self
    }

    /// This side looks at `now`: a gap since the last look longer than half
    /// the timeout was this side's own stall, and is not counted as the
    /// peer's silence or lack of progress. Returns that stall, if any.
    pub fn look(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.looked_at);
        self.looked_at = now;
        if gap <= self.timeout / 2 {
            return None;
        }
        if self.detector.ever_heard() {
            let last = self.detector.deadline() - self.timeout;
            self.detector.heard(last + gap);
        }
        self.grace_from += gap;
        self.progress_at += gap;
        Some(gap)
    }

    /// The acks moved forward at `now` (or nothing is outstanding).
    pub fn progress(&mut self, now: Instant) {
        self.progress_at = self.progress_at.max(now);
    }

    /// A sign of life: a heartbeat, an ack, log entries.
    pub fn heard(&mut self, at: Instant) {
        self.detector.heard(at);
    }

    /// The logging channel closed (an error or a corrupt entry) at `at`.
    pub fn channel_closed(&mut self, at: Instant) {
        self.closed_at.get_or_insert(at);
    }

    /// Whether the logging channel closed (an error or a corrupt entry).
    pub fn channel_has_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// Time since the last sign of life.
    pub fn silent_for(&self, now: Instant) -> Duration {
        self.detector.silent_for(now)
    }

    /// The verdict at `now`, with log entries outstanding or not.
    pub fn verdict_with(&self, now: Instant, outstanding: bool) -> Verdict {
        match self.verdict(now) {
            Verdict::Alive if outstanding => {
                let for_ = now.saturating_duration_since(self.progress_at);
                if for_ > self.ack_timeout && self.detector.ever_heard() {
                    Verdict::NoProgress { for_ }
                } else {
                    Verdict::Alive
                }
            }
            v => v,
        }
    }

    /// The verdict at `now`.
    pub fn verdict(&self, now: Instant) -> Verdict {
        let dead = if self.detector.ever_heard() {
            self.detector.is_dead(now)
        } else {
            now.saturating_duration_since(self.grace_from) > self.startup_grace
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
    fn a_joined_peer_gets_a_short_grace_and_this_sides_stall_is_not_counted() {
        let t0 = Instant::now();
        let mut m = FailureMonitor::new(T, t0).with_startup_grace(JOIN_GRACE);
        assert_eq!(m.verdict(t0 + JOIN_GRACE), Verdict::Alive);
        assert!(matches!(
            m.verdict(t0 + JOIN_GRACE + T),
            Verdict::Dead { .. }
        ));
        // This side stopped for 2 s right after the join: on waking, the
        // peer it never heard from still has its grace.
        let woke = t0 + 2 * JOIN_GRACE;
        m.look(t0);
        assert!(m.look(woke).is_some());
        assert_eq!(m.verdict(woke + T), Verdict::Alive);
        assert!(matches!(
            m.verdict(woke + JOIN_GRACE + T),
            Verdict::Dead { .. }
        ));
    }

    #[test]
    fn a_live_peer_that_acks_nothing_is_failed_after_the_ack_timeout() {
        let t0 = Instant::now();
        let mut m = FailureMonitor::new(T, t0).with_ack_timeout(2 * T);
        m.heard(t0);
        m.progress(t0);
        let t1 = t0 + 3 * T;
        m.look(t0 + T / 4);
        m.heard(t1); // heartbeats go on
        assert_eq!(m.verdict_with(t1, false), Verdict::Alive, "nothing owed");
        assert!(matches!(
            m.verdict_with(t1, true),
            Verdict::NoProgress { for_ } if for_ == 3 * T
        ));
        m.progress(t1);
        assert_eq!(m.verdict_with(t1, true), Verdict::Alive);
    }

    #[test]
    fn this_sides_own_stall_is_not_the_peers_silence() {
        let t0 = Instant::now();
        let mut m = FailureMonitor::new(T, t0);
        m.heard(t0);
        m.look(t0);
        let woke = t0 + 10 * T;
        m.look(woke);
        assert_eq!(
            m.verdict(woke),
            Verdict::Alive,
            "a stopped side forgives itself"
        );
        assert_eq!(m.verdict_with(woke, true), Verdict::Alive);
        let later = woke + T + Duration::from_millis(1);
        m.look(woke + T / 2);
        assert!(
            matches!(m.verdict(later), Verdict::Dead { .. }),
            "but silence after it counts"
        );
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
