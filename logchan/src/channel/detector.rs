//! Failure detection: the peer is dead once nothing at all has been heard
//! from it — no heartbeat, no channel traffic — for `timeout`.
//!
//! Both kinds of evidence count, as in the paper: the primary hears the
//! backup's acks, the backup hears the primary's entries (an idle guest
//! still produces keep-alive entries), and both hear UDP heartbeats, which
//! keep flowing when the log does not (a stalled primary, a backup that is
//! far behind). A partition silences all of them; a busy peer none.

use std::time::{Duration, Instant};

/// How often to beat and how long a silence means death.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatConfig {
    pub period: Duration,
    pub timeout: Duration,
}

impl HeartbeatConfig {
    /// What a LAN deployment would pick: a beat every 100 ms, dead after
    /// 1 s of silence (ten missed beats: a scheduling hiccup or a lost
    /// datagram never looks like a failure, a real failure is caught
    /// within about a second).
    pub const LAN: HeartbeatConfig = HeartbeatConfig {
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
    };

    /// Short values for tests on one machine: 10 ms / 50 ms.
    pub const TEST: HeartbeatConfig = HeartbeatConfig {
        period: Duration::from_millis(10),
        timeout: Duration::from_millis(50),
    };

    pub fn new(period: Duration, timeout: Duration) -> Self {
        HeartbeatConfig { period, timeout }
    }

    pub fn detector(&self, now: Instant) -> FailureDetector {
        FailureDetector::new(self.timeout, now)
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig::LAN
    }
}

/// Declares the peer dead after `timeout` without any sign of life.
#[derive(Clone, Copy, Debug)]
pub struct FailureDetector {
    timeout: Duration,
    /// Last sign of life, or when monitoring started.
    last: Instant,
    heard: bool,
}

impl FailureDetector {
    /// Starts monitoring at `now`: a peer never heard from is dead at
    /// `now + timeout` (a backup that never connects is a failure too).
    pub fn new(timeout: Duration, now: Instant) -> Self {
        FailureDetector {
            timeout,
            last: now,
            heard: false,
        }
    }

    /// A sign of life at `at` (a heartbeat, an ack, entries). Older
    /// evidence than what is known changes nothing.
    pub fn heard(&mut self, at: Instant) {
        self.heard = true;
        if at > self.last {
            self.last = at;
        }
    }

    /// [`Self::heard`] for an optional time (`last_heard()` of an engine).
    pub fn heard_opt(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.heard(at);
        }
    }

    /// Whether anything was ever heard.
    pub fn ever_heard(&self) -> bool {
        self.heard
    }

    /// Time since the last sign of life (or since monitoring started).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }

    /// Strictly more than `timeout` of silence.
    pub fn is_dead(&self, now: Instant) -> bool {
        self.silent_for(now) > self.timeout
    }

    /// When the peer will be declared dead unless heard from again: the
    /// I/O thread must be awake at (just after) this instant to notice.
    pub fn deadline(&self) -> Instant {
        self.last + self.timeout
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
