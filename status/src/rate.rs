//! The log bandwidth: the change of a byte counter over a short sliding
//! window of samples (the status server samples every ~100 ms and on every
//! request), so a dashboard sees the current rate, not the average since
//! start.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the rate looks.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Spans shorter than this give no rate yet (0): too noisy.
const MIN_SPAN: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct RateWindow {
    /// (time, counter value), oldest first, times non-decreasing.
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub fn new() -> Self {
        RateWindow::default()
    }

    /// Adds a sample and forgets those no longer needed: everything older
    /// than [`WINDOW`] except the newest of those, which anchors a span of
    /// at least a full window.
    pub fn push(&mut self, at: Instant, value: u64) {
        if self.samples.back().is_some_and(|&(last, _)| at < last) {
            return;
        }
        self.samples.push_back((at, value));
        let cutoff = at.checked_sub(WINDOW);
        while let (Some(cutoff), Some(&(second, _))) = (cutoff, self.samples.get(1)) {
            if second > cutoff {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// Units per second between the oldest kept sample and the newest; 0
    /// until the samples span [`MIN_SPAN`]. A counter that went backwards
    /// (restarted) counts as 0.
    pub fn rate(&self) -> f64 {
        let (Some(&(t0, v0)), Some(&(t1, v1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let span = t1.duration_since(t0);
        if span < MIN_SPAN {
            return 0.0;
        }
        v1.saturating_sub(v0) as f64 / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_over_the_window() {
        let t = Instant::now();
        let mut w = RateWindow::new();
        // 1 MB every 100 ms for 3 s = 10 MB/s.
        for i in 0..=30u64 {
            w.push(t + Duration::from_millis(100 * i), i * 1_000_000);
        }
        assert!((w.rate() - 10e6).abs() < 1.0, "rate {}", w.rate());
        // Only about one window of samples is kept.
        assert!(w.samples.len() <= 12, "{} samples kept", w.samples.len());
    }

    #[test]
    fn rate_follows_a_change_within_a_window() {
        let t = Instant::now();
        let mut w = RateWindow::new();
        for i in 0..=20u64 {
            w.push(t + Duration::from_millis(100 * i), i * 1_000_000);
        }
        // The stream stops: after a window of idle samples the rate is 0.
        for i in 21..=32u64 {
            w.push(t + Duration::from_millis(100 * i), 20_000_000);
        }
        assert_eq!(w.rate(), 0.0);
    }

    #[test]
    fn too_short_or_backwards_gives_zero() {
        let t = Instant::now();
        let mut w = RateWindow::new();
        assert_eq!(w.rate(), 0.0);
        w.push(t, 100);
        w.push(t + Duration::from_millis(10), 1_000_000);
        assert_eq!(w.rate(), 0.0);
        w.push(t + Duration::from_millis(500), 0);
        assert_eq!(w.rate(), 0.0);
    }
}
