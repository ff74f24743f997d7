//! Execution lag, measured on the primary (the paper's §3.2): how far the
//! backup's replay is behind, from the replay position its acks carry —
//! in exits, in log bytes, and in guest execution time (what the backup
//! still has to replay, so what a failover would replay first) — and the
//! backup's replay speed. The lag drives the throttle ([`crate::throttle`]).
//!
//! Guest execution is measured in the vCPU thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`): what a replay of the same exits has to
//! execute, without the time the host gave the CPU to something else
//! (which a wall clock would count) — and without idle waits, throttle
//! holds and full-buffer stalls, where the thread sleeps.
//!
//! The vCPU thread ([`ThrottlePacer`]) notes where the guest is after every
//! sync exit and keeps a sample every [`SAMPLE_EVERY`] of guest execution
//! (reading its CPU clock, a system call, only then);
//! the I/O thread ([`LagControl`]) looks the backup's replayed exit up in
//! the samples, runs the controller and hands its level back. They share
//! one mutex the vCPU thread only ever *tries* (a sample skipped costs
//! nothing); the I/O thread holds it for a binary search.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::pace::{Pacer, SyncPoint};

use crate::throttle::{self, Throttle, ThrottleConfig};

/// Guest execution between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_micros(500);
/// Samples kept: at least 4 s of guest execution (a lag beyond that reads
/// as the oldest sample's, an under-estimate the log bytes still show).
const SAMPLES: usize = 8192;
/// Over how long the replay speed is measured.
const SPEED_WINDOW: Duration = Duration::from_millis(500);

/// A sync point with the vCPU thread's CPU time there (`None`: the clock
/// could not be read; the wall-clock execution time stands in).
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    at: SyncPoint,
    cpu_ns: Option<u64>,
}

impl Sample {
    /// Guest execution from `self` to `later`.
    fn until(&self, later: &Sample) -> u64 {
        match (self.cpu_ns, later.cpu_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => later.at.exec_ns.saturating_sub(self.at.exec_ns),
        }
    }
}

struct Samples {
    ring: VecDeque<Sample>,
    /// The latest sync point (exits and bytes are exact to it; execution
    /// time to the latest sample).
    head: SyncPoint,
}

/// What the vCPU and I/O threads share for the lag.
pub struct LagShared {
    samples: Mutex<Samples>,
    /// The throttle level in millionths (0: no brake).
    level_ppm: AtomicU64,
}

impl Default for LagShared {
    fn default() -> Self {
        LagShared {
            samples: Mutex::new(Samples {
                ring: VecDeque::with_capacity(SAMPLES),
                head: SyncPoint::default(),
            }),
            level_ppm: AtomicU64::new(0),
        }
    }
}

/// How far the backup is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    pub exits: u64,
    pub log_bytes: u64,
    pub guest: Duration,
}

impl LagShared {
    /// vCPU thread: the guest is at `p`; with `sample`, the thread's CPU
    /// time there is kept as a sample (`Some(None)`: no CPU clock).
    pub fn note(&self, p: SyncPoint, sample: Option<Option<u64>>) {
        let Ok(mut s) = self.samples.try_lock() else {
            return;
        };
        s.head = p;
        if let Some(cpu_ns) = sample {
            if s.ring.len() >= SAMPLES {
                s.ring.pop_front();
            }
            s.ring.push_back(Sample { at: p, cpu_ns });
        }
    }

    /// I/O thread: the lag of a backup whose replay reached `replayed_exit`
    /// (samples before it are dropped: the replay only moves forward).
    pub fn lag(&self, replayed_exit: u64) -> Lag {
        let Ok(mut s) = self.samples.lock() else {
            return Lag::default();
        };
        let head = s.head;
        // The newest sample at or before the replayed exit; the oldest kept
        // if all are later (a lag longer than the ring).
        let after = s.ring.partition_point(|x| x.at.exit_index <= replayed_exit);
        let at = after.saturating_sub(1);
        s.ring.drain(..at);
        if replayed_exit >= head.exit_index {
            return Lag::default();
        }
        let (from, last) = match (s.ring.front(), s.ring.back()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Lag::default(),
        };
        Lag {
            exits: head.exit_index - replayed_exit,
            log_bytes: head.log_bytes.saturating_sub(from.at.log_bytes),
            guest: Duration::from_nanos(from.until(&last)),
        }
    }

    /// The throttle level (0..1).
    pub fn level(&self) -> f64 {
        self.level_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn set_level(&self, level: f64) {
        let ppm = (level.clamp(0.0, 1.0) * 1e6) as u64;
        self.level_ppm.store(ppm, Ordering::Relaxed);
    }
}

/// The vCPU thread's side: notes each sync point, holds the guest as the
/// level says ([`throttle::hold_for`]).
pub struct ThrottlePacer {
    lag: Arc<LagShared>,
    /// Guest execution at the last hold.
    held_at_ns: u64,
    /// Guest execution (wall clock) at which the next sample is due.
    sample_due_ns: u64,
}

impl ThrottlePacer {
    pub fn new(lag: Arc<LagShared>) -> Self {
        ThrottlePacer {
            lag,
            held_at_ns: 0,
            sample_due_ns: 0,
        }
    }
}

/// The calling thread's CPU time in ns; `None` if the clock cannot be read.
fn thread_cpu_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    u64::try_from(t.tv_sec())
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(t.tv_nsec()).ok()?)
}

impl Pacer for ThrottlePacer {
    fn after_sync(&mut self, at: SyncPoint) -> Duration {
        let sample = (at.exec_ns >= self.sample_due_ns).then(|| {
            self.sample_due_ns = at.exec_ns.saturating_add(SAMPLE_EVERY.as_nanos() as u64);
            thread_cpu_ns()
        });
        self.lag.note(at, sample);
        let level = self.lag.level();
        let ran = Duration::from_nanos(at.exec_ns.saturating_sub(self.held_at_ns));
        let hold = throttle::hold_for(ran, level);
        // Without a brake the clock still moves: what ran unbraked is not
        // owed later.
        if hold > Duration::ZERO || level == 0.0 {
            self.held_at_ns = at.exec_ns;
        }
        hold
    }
}

/// The I/O thread's side: the lag from each replay position the acks
/// report, the replay speed, and the controller run every
/// [`throttle::PERIOD`]; everything shown in `status`.
pub struct LagControl {
    lag: Arc<LagShared>,
    throttle: Option<Throttle>,
    status: Arc<StatusCounters>,
    last_run: Instant,
    /// (when, replayed exit) at the start of the speed window.
    speed_from: (Instant, u64),
    speed: u64,
    last: Lag,
}

impl LagControl {
    /// `target`: the lag to hold (`None`: measure only, never brake).
    pub fn new(lag: Arc<LagShared>, target: Option<Duration>, status: Arc<StatusCounters>) -> Self {
        let now = Instant::now();
        let throttle = target.map(|t| Throttle::new(ThrottleConfig::new(t)));
        StatusCounters::set(
            &status.lag_target_ms,
            target.map_or(0, |t| t.as_millis() as u64),
        );
        LagControl {
            lag,
            throttle,
            status,
            last_run: now,
            speed_from: (now, 0),
            speed: 0,
            last: Lag::default(),
        }
    }

    /// The lag at the last run.
    pub fn last(&self) -> Lag {
        self.last
    }

    /// The throttle's level now.
    pub fn level(&self) -> f64 {
        self.lag.level()
    }

    /// Runs once per [`throttle::PERIOD`]: measures the lag of a backup at
    /// `replayed_exit` and sets the level. `braking`: whether a backup is
    /// there to wait for (without one the brakes are off for good).
    pub fn tick(&mut self, now: Instant, replayed_exit: u64, braking: bool) {
        let dt = now.saturating_duration_since(self.last_run);
        if dt < throttle::PERIOD {
            return;
        }
        self.last_run = now;
        let lag = self.lag.lag(replayed_exit);
        self.last = lag;
        let (from_at, from_exit) = self.speed_from;
        let window = now.saturating_duration_since(from_at);
        if window >= SPEED_WINDOW {
            let exits = replayed_exit.saturating_sub(from_exit);
            self.speed = (exits as f64 / window.as_secs_f64()) as u64;
            self.speed_from = (now, replayed_exit);
        }
        let level = match self.throttle.as_mut() {
            Some(t) if braking => t.update(lag.guest, dt),
            Some(t) => {
                t.reset();
                0.0
            }
            None => 0.0,
        };
        let before = self.lag.level();
        self.lag.set_level(level);
        if (before == 0.0) != (level == 0.0) {
            tracing::debug!(
                lag_ms = lag.guest.as_secs_f64() * 1e3,
                level,
                "throttle {}",
                if level > 0.0 { "on" } else { "off" }
            );
        }
        let st = &self.status;
        StatusCounters::set(&st.lag_log_bytes, lag.log_bytes);
        StatusCounters::set(&st.lag_guest_us, lag.guest.as_micros() as u64);
        StatusCounters::set(&st.replay_exits_per_s, self.speed);
        StatusCounters::set(&st.throttle_permille, (level * 1000.0).round() as u64);
        let per_ms = throttle::hold_for(Duration::from_millis(1), level);
        StatusCounters::set(&st.throttle_delay_us, per_ms.as_micros() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(exit: u64, exec_ms: u64, bytes: u64) -> SyncPoint {
        SyncPoint {
            exit_index: exit,
            exec_ns: exec_ms * 1_000_000,
            log_seq: exit,
            log_bytes: bytes,
        }
    }

    #[test]
    fn the_lag_is_looked_up_at_the_replayed_exit() {
        let l = LagShared::default();
        for i in 0..100 {
            l.note(at(10 * i, i, 1000 * i), Some(Some(i * 1_000_000)));
        }
        let lag = l.lag(500);
        assert_eq!(lag.exits, 490);
        assert_eq!(lag.guest, Duration::from_millis(49));
        assert_eq!(lag.log_bytes, 49_000);
        // Between samples: the sample before (an over-estimate by less
        // than one sample).
        let lag = l.lag(505);
        assert_eq!(lag.guest, Duration::from_millis(49));
        // Caught up: no lag.
        assert_eq!(l.lag(990), Lag::default());
    }

    #[test]
    fn without_a_cpu_clock_the_wall_clock_execution_stands_in() {
        let l = LagShared::default();
        for i in 0..10 {
            l.note(at(i, 2 * i, 0), Some(None));
        }
        assert_eq!(l.lag(4).guest, Duration::from_millis(10));
    }

    #[test]
    fn cpu_time_not_wall_time_is_the_lag() {
        // The host took the CPU away for half the wall time: the replay
        // has only the CPU time to redo.
        let l = LagShared::default();
        for i in 0..10 {
            l.note(at(i, 2 * i, 0), Some(Some(i * 1_000_000)));
        }
        assert_eq!(l.lag(4).guest, Duration::from_millis(5));
    }

    #[test]
    fn the_pacer_reads_the_cpu_clock_only_per_sample() {
        let l = Arc::new(LagShared::default());
        let mut p = ThrottlePacer::new(l.clone());
        for i in 0..10u64 {
            // 100 µs of guest execution per exit: a sample every 5 exits.
            let _ = p.after_sync(SyncPoint {
                exit_index: i,
                exec_ns: i * 100_000,
                log_seq: i,
                log_bytes: 0,
            });
        }
        let n = l.samples.lock().map(|s| s.ring.len()).unwrap_or(0);
        assert_eq!(n, 2);
        assert!(thread_cpu_ns().is_some(), "Linux has a thread CPU clock");
    }

    #[test]
    fn the_pacer_holds_only_when_the_level_says() {
        let l = Arc::new(LagShared::default());
        let mut p = ThrottlePacer::new(l.clone());
        assert_eq!(p.after_sync(at(1, 1, 0)), Duration::ZERO);
        l.set_level(0.5);
        let h = p.after_sync(at(2, 3, 0));
        assert_eq!(h, Duration::from_millis(2), "2 ms ran since the last hold");
        l.set_level(0.0);
        assert_eq!(p.after_sync(at(3, 10, 0)), Duration::ZERO);
    }

    #[test]
    fn control_brakes_a_lagging_backup_and_releases_it() {
        let l = Arc::new(LagShared::default());
        let st = Arc::new(StatusCounters::default());
        let mut c = LagControl::new(l.clone(), Some(Duration::from_millis(100)), st.clone());
        for i in 0..=400 {
            l.note(at(i, i, 0), Some(Some(i * 1_000_000)));
        }
        let mut now = Instant::now();
        now += throttle::PERIOD;
        c.tick(now, 100, true);
        assert_eq!(c.last().guest, Duration::from_millis(300));
        assert!(c.level() > 0.9);
        assert!(StatusCounters::get(&st.throttle_permille) > 900);
        now += throttle::PERIOD;
        c.tick(now, 100, false);
        assert_eq!(c.level(), 0.0, "no backup to wait for: no brake");
    }
}
