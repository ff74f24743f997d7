//! Per-thread CPU accounting of the benchmark's threads.

use super::*;

/// CPU time one thread used (`getrusage(RUSAGE_THREAD)`) and how often it
/// gave up the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThreadCpu {
    pub user: Duration,
    pub sys: Duration,
    /// Voluntary context switches (slept) and involuntary ones (preempted).
    pub sleeps: u64,
    pub preempted: u64,
    /// Page faults served without I/O.
    pub faults: u64,
}

impl ThreadCpu {
    /// The calling thread's usage so far.
    pub fn now() -> ThreadCpu {
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a live, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
            return ThreadCpu::default();
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        ThreadCpu {
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            sleeps: ru.ru_nvcsw.max(0) as u64,
            preempted: ru.ru_nivcsw.max(0) as u64,
            faults: ru.ru_minflt.max(0) as u64,
        }
    }

    /// Usage between `earlier` and `self`.
    pub fn since(&self, earlier: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
            preempted: self.preempted.saturating_sub(earlier.preempted),
            faults: self.faults.saturating_sub(earlier.faults),
        }
    }

    pub fn total(&self) -> Duration {
        self.user + self.sys
    }
}
