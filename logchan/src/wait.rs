//! Spin-then-park waiting between exactly two threads, on a futex.
//!
//! The notifying side is a hot thread (the vCPU publishing entries): when the
//! waiter is awake its `notify` is a fence and one load — no syscall, no
//! shared-cacheline write. Only a parked waiter costs a `FUTEX_WAKE`. The
//! waiter spins first because a wake-up costs ~20–57 µs on this machine and a
//! spinning hand-off ~0.2 µs; after a few µs it yields its core between checks
//! (the thread it waits for may be queued behind it), and it parks after
//! `spin` so that no thread spins forever on a machine whose two cores are
//! shared by six threads. All of this is on the waiting side only.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::time::{Duration, Instant};

/// Pure spinning before the waiter starts yielding its core between checks:
/// covers a hand-off between two running threads (~0.2 µs) with margin.
const PURE_SPIN: Duration = Duration::from_micros(5);

/// One wait/notify channel (single waiter).
#[derive(Debug, Default)]
pub(crate) struct Event {
    /// Futex word; bumped by a notify that finds the waiter parked.
    word: AtomicU32,
    /// The waiter is (about to be) parked.
    parked: AtomicBool,
}

/// How a wait ended successfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The condition held while spinning.
    Spun,
    /// The waiter parked at least once.
    Parked,
}

impl Event {
    /// Call after making the waiter's condition true. Returns whether a
    /// parked waiter had to be woken (a syscall was made).
    pub(crate) fn notify(&self) -> bool {
        // Dekker with the waiter: either it sees our condition store, or we
        // see its `parked` store. Both sides need a full fence between their
        // store and their load.
        fence(Ordering::SeqCst);
        // Plain load first: the common case (waiter awake) writes nothing.
        // Clearing the flag makes this the only wake of this park: further
        // notifies until the waiter parks again cost no syscall.
        if !self.parked.load(Ordering::Relaxed) || !self.parked.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.word.fetch_add(1, Ordering::Release);
        futex_wake(&self.word);
        true
    }

    /// Waits until `ready()` holds, spinning for `spin` first, then parking,
    /// until `deadline` (`None` = no bound). `Err(())` on timeout.
    pub(crate) fn wait(
        &self,
        mut ready: impl FnMut() -> bool,
        spin: Duration,
        deadline: Option<Instant>,
    ) -> Result<Waited, ()> {
        if ready() {
            return Ok(Waited::Spun);
        }
        let start = Instant::now();
        let spin_end = start + spin;
        let yield_from = start + spin.min(PURE_SPIN);
        let mut i: u32 = 0;
        loop {
            std::hint::spin_loop();
            if ready() {
                return Ok(Waited::Spun);
            }
            i = i.wrapping_add(1);
            // Reading the clock (vDSO, ~25 ns) every iteration would dominate.
            if i.is_multiple_of(64) {
                let now = Instant::now();
                if now >= spin_end || deadline.is_some_and(|d| now >= d) {
                    break;
                }
                // Past the first microseconds, let the thread we wait for
                // run if it shares our core (two cores, six threads): a
                // pure spin there would hold it off for the whole spin.
                if now >= yield_from {
                    std::thread::yield_now();
                }
            }
        }
        loop {
            let seen = self.word.load(Ordering::Acquire);
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                self.parked.store(false, Ordering::Relaxed);
                return Ok(Waited::Parked);
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.parked.store(false, Ordering::Relaxed);
                        return Err(());
                    }
                    Some(d - now)
                }
            };
            futex_wait(&self.word, seen, timeout);
            self.parked.store(false, Ordering::Relaxed);
            if ready() {
                return Ok(Waited::Parked);
            }
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call; the
    // timespec (if any) lives on this stack frame; FUTEX_WAIT only reads both.
    // EINTR, EAGAIN (word already changed) and ETIMEDOUT all just return: the
    // caller re-checks its condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access
    // memory beyond looking the address up. At most one waiter exists.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1i32,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_parked_waiter_is_woken_and_a_timeout_is_reported() {
        let ev = Arc::new(Event::default());
        let flag = Arc::new(AtomicBool::new(false));
        let (e2, f2) = (ev.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            e2.wait(
                || f2.load(Ordering::Acquire),
                Duration::from_micros(1),
                Some(Instant::now() + Duration::from_secs(10)),
            )
        });
        std::thread::sleep(Duration::from_millis(30));
        flag.store(true, Ordering::Release);
        assert!(ev.notify(), "the waiter should have been parked");
        assert_eq!(t.join().expect("waiter"), Ok(Waited::Parked));
        // Nobody parked: notify makes no syscall.
        assert!(!ev.notify());

        let start = Instant::now();
        let r = ev.wait(
            || false,
            Duration::from_micros(10),
            Some(start + Duration::from_millis(20)),
        );
        assert_eq!(r, Err(()));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
