//! Throttling the primary (the paper's §3.2: "if the backup is getting too
//! far behind, the primary's CPU allocation is reduced"): a
//! proportional-integral controller from the execution lag to a throttle
//! level, and the pacing rule that turns the level into holds of the
//! primary's guest at its sync calls. Pure: no KVM, no threads; the plane
//! feeds it (`crate::lag`), the vCPU thread applies it
//! (`lockstep_vmm::dataplane::pace`). docs/throttling.md has the reasoning.
//!
//! **Plant.** With the lag `L` in seconds of guest execution, a primary
//! whose guest runs a fraction `1 − u` of the time (throttle level `u`)
//! and a backup that replays `r` seconds of guest execution per second:
//! `dL/dt = (1 − u) − r` while the guest is busy. An integrator, whose
//! input the controller sets exactly: the pacing rule makes the guest run
//! `1 − u` of the time whatever its rate of sync calls.
//!
//! **Controller.** `u = Kp·e + Ki·∫e`, `e = L − target`, `u` clamped to
//! `[0, max_level]`. Closed loop: `ë + Kp·ė + Ki·e = 0`, so
//! `ωn = √Ki`, `ζ = Kp / (2√Ki)`; the defaults put `ωn = 5 rad/s`,
//! `ζ = 1` (critically damped: no oscillation). After a step of `v` in
//! the backup's speed (a fraction of full speed) the lag overshoots the
//! target by at most `v / (e·ωn)` ≤ 74 ms and settles (2 %) within
//! `5.8 / ωn` ≈ 1.2 s, in the unsaturated range.
//!
//! **Anti-windup.** The integral is clamped to what `max_level` needs and
//! stops growing while the output is saturated high; it never goes below
//! zero, so once the backup has caught up the brakes come off at once
//! (the proportional term alone, negative, opens them) and stay off.

use std::time::Duration;

/// Default target: 100 ms of guest execution, the paper's order.
pub const DEFAULT_TARGET: Duration = Duration::from_millis(100);
/// How often the controller runs.
pub const PERIOD: Duration = Duration::from_millis(10);
/// The longest hold at one sync call: a guest that calls rarely is not
/// frozen for long at once (the controller makes up for the cap).
pub const MAX_HOLD: Duration = Duration::from_millis(20);

/// Gains and limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleConfig {
    /// The lag the controller holds the backup at (guest execution).
    pub target: Duration,
    /// Level per second of lag error (1/s).
    pub kp: f64,
    /// Level per second of integrated error (1/s²).
    pub ki: f64,
    /// The most the guest is braked: it still runs `1 − max_level` of the
    /// time (a full log buffer stalls it outright beyond that).
    pub max_level: f64,
}

impl ThrottleConfig {
    /// Critically damped at `ωn = 5 rad/s` around `target`.
    pub fn new(target: Duration) -> Self {
        let wn = 5.0;
        ThrottleConfig {
            target,
            kp: 2.0 * wn,
            ki: wn * wn,
            max_level: 0.95,
        }
    }
}

/// The controller's state.
#[derive(Clone, Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    /// ∫e dt, in seconds².
    integral: f64,
    level: f64,
}

impl Throttle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        Throttle {
            cfg,
            integral: 0.0,
            level: 0.0,
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// The current level, 0 (no brake) to `max_level`.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// One step: the lag now and the time since the last step; returns the
    /// new level.
    pub fn update(&mut self, lag: Duration, dt: Duration) -> f64 {
        let e = lag.as_secs_f64() - self.cfg.target.as_secs_f64();
        // A long gap (this thread stalled) is not integrated as if the lag
        // had been there all along.
        let dt = dt.as_secs_f64().min(0.1);
        let max = self.cfg.max_level.clamp(0.0, 1.0);
        let unclamped = self.cfg.kp * e + self.cfg.ki * self.integral;
        // Conditional integration: not further up while saturated high.
        if !(unclamped >= max && e > 0.0) {
            self.integral += e * dt;
        }
        let i_max = if self.cfg.ki > 0.0 {
            max / self.cfg.ki
        } else {
            0.0
        };
        self.integral = self.integral.clamp(0.0, i_max);
        let u = self.cfg.kp * e + self.cfg.ki * self.integral;
        self.level = if u.is_finite() {
            u.clamp(0.0, max)
        } else {
            0.0
        };
        self.level
    }

    /// Brakes off, state cleared (no backup to wait for).
    pub fn reset(&mut self) {
        self.integral = 0.0;
        self.level = 0.0;
    }
}

/// The pacing rule: after the guest executed `ran` since its last hold, at
/// `level` it is held `ran · level / (1 − level)`, so it runs `1 − level`
/// of the time whatever its rate of sync calls; at most [`MAX_HOLD`].
pub fn hold_for(ran: Duration, level: f64) -> Duration {
    // NaN and non-positive levels: no hold.
    if level.is_nan() || level <= 0.0 {
        return Duration::ZERO;
    }
    let level = level.min(0.99);
    let secs = ran.as_secs_f64() * level / (1.0 - level);
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_HOLD)
        .min(MAX_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A primary and a backup at `speed(t)` (guest-seconds replayed per
    /// second), the lag measured `delay` late, the controller every
    /// PERIOD: returns (t, lag, level) per step.
    fn simulate(
        seconds: f64,
        delay_steps: usize,
        speed: impl Fn(f64) -> f64,
    ) -> Vec<(f64, f64, f64)> {
        let mut t = Throttle::new(ThrottleConfig::new(DEFAULT_TARGET));
        let dt = PERIOD.as_secs_f64();
        let mut lag = 0.0f64;
        let mut seen = std::collections::VecDeque::from(vec![0.0; delay_steps + 1]);
        let mut out = Vec::new();
        let mut now = 0.0;
        while now < seconds {
            let measured = seen.pop_front().unwrap_or(lag);
            let u = t.update(Duration::from_secs_f64(measured.max(0.0)), PERIOD);
            lag = (lag + ((1.0 - u) - speed(now)) * dt).max(0.0);
            seen.push_back(lag);
            now += dt;
            out.push((now, lag, u));
        }
        out
    }

    fn max_lag(run: &[(f64, f64, f64)], from: f64, to: f64) -> f64 {
        run.iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .map(|r| r.1)
            .fold(0.0, f64::max)
    }

    /// Steps in the backup's speed: fast, half, a quarter, fast again.
    fn steps(t: f64) -> f64 {
        match t {
            t if t < 2.0 => 1.2,
            t if t < 6.0 => 0.5,
            t if t < 10.0 => 0.25,
            _ => 1.2,
        }
    }

    #[test]
    fn a_slower_backup_is_held_near_the_target_without_oscillation() {
        // Measurement 20 ms late (acks, the controller's own period).
        let run = simulate(14.0, 2, steps);
        let target = DEFAULT_TARGET.as_secs_f64();
        // Stated bound: the lag overshoots the target by at most 80 ms.
        for (from, to) in [(2.0, 6.0), (6.0, 10.0)] {
            let peak = max_lag(&run, from, to);
            assert!(peak <= target + 0.080, "peak {peak:.3} s in [{from}, {to})");
        }
        // Settles: within 10 % of the target 1.5 s after a step, and stays.
        for (from, to, level) in [(3.5, 6.0, 0.5), (7.5, 10.0, 0.75)] {
            for &(t, lag, u) in run.iter().filter(|r| r.0 >= from && r.0 < to) {
                assert!(
                    (lag - target).abs() <= 0.1 * target,
                    "lag {lag:.4} at {t:.2}"
                );
                assert!((u - level).abs() < 0.05, "level {u:.3} at {t:.2}");
            }
        }
        // No oscillation: the error changes sign at most twice per step.
        let crossings = run
            .windows(2)
            .filter(|w| w[0].0 >= 2.0 && w[0].0 < 10.0)
            .filter(|w| ((w[0].1 - target) * (w[1].1 - target)) < -1e-9)
            .count();
        assert!(crossings <= 4, "{crossings} crossings of the target");
    }

    #[test]
    fn the_brakes_come_off_when_the_backup_catches_up() {
        let run = simulate(14.0, 2, steps);
        // 1 s after the backup is fast again: no brake, lag under target.
        for &(t, lag, u) in run.iter().filter(|r| r.0 >= 11.0) {
            assert_eq!(u, 0.0, "level at {t:.2}");
            assert!(lag < DEFAULT_TARGET.as_secs_f64(), "lag {lag} at {t:.2}");
        }
        // Before the first step: never braked.
        assert!(run.iter().filter(|r| r.0 < 2.0).all(|r| r.2 == 0.0));
    }

    #[test]
    fn a_stopped_backup_saturates_without_windup() {
        let run = simulate(8.0, 2, |t| if t < 5.0 { 0.0 } else { 1.2 });
        let at_5 = run.iter().find(|r| r.0 >= 5.0).map(|r| r.2).unwrap_or(0.0);
        assert!((at_5 - 0.95).abs() < 1e-9, "saturated at max_level");
        // No windup: once the lag is back under target the brake is off
        // within a second of the backup resuming (the lag itself decides).
        let off = run
            .iter()
            .find(|r| r.0 > 5.0 && r.2 == 0.0)
            .map(|r| r.0)
            .unwrap_or(f64::MAX);
        let lag_at_5 = max_lag(&run, 4.9, 5.0);
        // Draining lag − target at ≥ 0.2 s/s after resuming.
        let bound = 5.0 + (lag_at_5 - 0.1) / 0.2 + 0.5;
        assert!(off <= bound, "brake off at {off:.2} s, bound {bound:.2}");
    }

    #[test]
    fn holds_make_the_guest_run_the_complement_of_the_level() {
        assert_eq!(hold_for(Duration::from_millis(1), 0.0), Duration::ZERO);
        assert_eq!(hold_for(Duration::from_millis(1), f64::NAN), Duration::ZERO);
        let h = hold_for(Duration::from_millis(1), 0.5);
        assert!((h.as_secs_f64() - 0.001).abs() < 1e-9);
        let h = hold_for(Duration::from_millis(1), 0.75);
        assert!((h.as_secs_f64() - 0.003).abs() < 1e-9);
        assert_eq!(hold_for(Duration::from_secs(1), 0.9), MAX_HOLD);
    }

    #[test]
    fn lag_under_target_never_brakes() {
        let mut t = Throttle::new(ThrottleConfig::new(DEFAULT_TARGET));
        for _ in 0..1000 {
            assert_eq!(t.update(Duration::from_millis(50), PERIOD), 0.0);
        }
        // And the integral did not wind down below zero: a lag over target
        // brakes at once.
        assert!(t.update(Duration::from_millis(150), PERIOD) > 0.4);
    }
}
