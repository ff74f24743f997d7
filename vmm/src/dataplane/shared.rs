//! State the VMM's threads share: a few atomics and the handles needed to
//! wake each other (threads share nothing else: docs/architecture.md).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use lockstep_status::StatusCounters;

/// Shared between the vCPU thread, the I/O thread and the main thread.
#[derive(Default)]
pub struct VmShared {
    /// The host asked the VM to stop (SIGINT/SIGTERM): the guest sees EV_STOP.
    pub stop: AtomicBool,
    /// The host gave up waiting for the guest: the vCPU loop ends.
    pub force_stop: AtomicBool,
    /// The log ends at the next sync call (an FT primary continuing alone).
    pub stop_log: AtomicBool,
    /// The vCPU thread, for unparking it when an input arrives.
    pub vcpu_thread: OnceLock<Thread>,
    /// What `lockstep status` and the metrics endpoint show.
    pub status: Arc<StatusCounters>,
}

impl VmShared {
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether the log must end now.
    pub fn log_stopped(&self) -> bool {
        self.stop_log.load(Ordering::Acquire)
    }

    /// Ends the log at the guest's next sync call; wakes the vCPU thread.
    pub fn stop_logging(&self) {
        self.stop_log.store(true, Ordering::Release);
        self.wake_vcpu();
    }

    /// Whether the host gave up waiting for the guest.
    pub fn forced(&self) -> bool {
        self.force_stop.load(Ordering::Acquire)
    }

    /// Ends the vCPU loop at its next exit and wakes the vCPU thread if it
    /// is waiting (the caller kicks it out of `KVM_RUN`).
    pub fn force(&self) {
        self.force_stop.store(true, Ordering::Release);
        self.wake_vcpu();
    }

    /// Asks the guest to stop and wakes the vCPU thread if it is waiting.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake_vcpu();
    }

    /// Wakes the vCPU thread if it is parked in a sync wait; costs one
    /// atomic when it is not.
    pub fn wake_vcpu(&self) {
        if let Some(t) = self.vcpu_thread.get() {
            t.unpark();
        }
    }
}

/// Spins for a short while, then parks, until `ready()` or `deadline`.
/// Returns whether `ready()` became true. Spinning first keeps a request
/// that is already on its way from paying a wake-up (~20–60 µs here); the
/// spin is short so a second VMM on the same core is not starved.
pub fn wait_until(deadline: Instant, spin: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let spin_end = Instant::now() + spin;
    loop {
        if ready() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if now < spin_end {
            std::hint::spin_loop();
            continue;
        }
        std::thread::park_timeout((deadline - now).min(Duration::from_millis(100)));
    }
}

/// The I/O thread's end of a ring to another thread. It never blocks:
/// what the ring has no room for waits here, in order, for `flush`.
pub struct Handoff<T> {
    ring: rtrb::Producer<T>,
    overflow: VecDeque<T>,
}

impl<T> Handoff<T> {
    pub fn new(ring: rtrb::Producer<T>) -> Self {
        Handoff {
            ring,
            overflow: VecDeque::new(),
        }
    }

    /// Queues `msg` behind everything not yet on the ring.
    pub fn push(&mut self, msg: T) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(msg);
            return;
        }
        if let Err(rtrb::PushError::Full(m)) = self.ring.push(msg) {
            self.overflow.push_back(m);
        }
    }

    /// Moves what waits onto the ring as far as it has room; returns
    /// whether anything moved.
    pub fn flush(&mut self) -> bool {
        let mut moved = false;
        while let Some(msg) = self.overflow.pop_front() {
            match self.ring.push(msg) {
                Ok(()) => moved = true,
                Err(rtrb::PushError::Full(m)) => {
                    self.overflow.push_front(m);
                    break;
                }
            }
        }
        moved
    }

    pub fn has_overflow(&self) -> bool {
        !self.overflow.is_empty()
    }

    /// Messages not yet taken by the other thread: on the ring and behind it.
    pub fn queued(&self) -> usize {
        let on_ring = self.ring.buffer().capacity() - self.ring.slots();
        on_ring + self.overflow.len()
    }
}
