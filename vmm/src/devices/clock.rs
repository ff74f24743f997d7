//! Virtual time: what the sync call returns as `now_ns`.
//!
//! Nanoseconds since the Unix epoch, so a guest's absolute deadlines (key
//! expiry) survive a restart, but advanced by the monotonic clock and never
//! backwards, so a wall-clock step on the host does not reach the guest.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct VirtualClock {
    base_ns: u64,
    start: Instant,
    last: u64,
}

impl VirtualClock {
    pub fn new() -> Self {
        let base_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::starting_at(base_ns)
    }

    /// A clock that continues from `ns` (a backup going live continues the
    /// primary's time).
    pub fn starting_at(ns: u64) -> Self {
        VirtualClock {
            base_ns: ns,
            start: Instant::now(),
            last: ns,
        }
    }

    pub fn now(&mut self) -> u64 {
        let t = self.base_ns + self.start.elapsed().as_nanos() as u64;
        self.last = self.last.max(t);
        self.last
    }

    /// Host time left until virtual time `deadline`.
    pub fn until(&mut self, deadline: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(deadline.saturating_sub(self.now()))
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_never_goes_backwards_and_continues() {
        let mut c = VirtualClock::starting_at(1_000);
        let a = c.now();
        let b = c.now();
        assert!(a >= 1_000 && b >= a);
        assert_eq!(c.until(0), std::time::Duration::ZERO);
        assert!(c.until(b + 5_000_000) > std::time::Duration::from_millis(1));
    }
}
