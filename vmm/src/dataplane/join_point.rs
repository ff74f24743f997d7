//! Where a live clone's copy thread meets the vCPU thread: the copy thread
//! hands over its pre-copy (and, for an FT join, the new recorder) and
//! asks for a pause; the vCPU thread, at the end of the next sync exit with
//! no disk request in flight, runs the final pass, captures the machine
//! and hands the frozen state back; the copy thread sends it and tells the
//! vCPU thread to switch to the new log and plane (or to go on as before,
//! if the joiner failed). The guest's pause is that stretch of the vCPU
//! thread's time (docs/join.md). The switch waits for the send so that the
//! new plane's log stream follows the join stream on the connection, never
//! inside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::devices::virtio::Devices;
use crate::replay::recorder::Recorder;
use crate::snapshot::stream::Frozen;
use crate::snapshot::vcpu::VcpuAccess;
use crate::snapshot::{DevicesState, MachineState, SnapshotError, memory::PreCopy};

use super::plane::IoPlane;

/// How long the paused vCPU waits for the copy thread's verdict.
const RESUME_TIMEOUT: Duration = Duration::from_secs(3);

/// What the copy thread hands the vCPU thread for the pause.
pub struct PauseKit {
    pub precopy: PreCopy,
    /// The log that starts after the join point (its first entry's seq is
    /// the `State`'s `first_seq`); `None` keeps the current recorder (a
    /// clone of a recording VM, or a test).
    pub recorder: Option<Recorder>,
    /// An idle guest's keep-alive period for the new log (an FT primary's).
    pub keepalive: Option<Duration>,
}

/// The copy thread's verdict once the final state is sent.
pub enum Resume {
    /// The joiner has everything: log from the join point on, and the I/O
    /// thread takes this plane (none: the log only, as in tests).
    Switch(Option<Box<dyn IoPlane>>),
    /// The send failed: go on as before the pause.
    Abandon,
}

/// The verdict's hand-over. `abandoned`: the paused vCPU stopped waiting
/// (and went on as before); a verdict placed after that is refused, so the
/// copy thread never believes in a switch that did not happen.
#[derive(Default)]
struct ResumeSlot {
    verdict: Option<Resume>,
    abandoned: bool,
}

/// What the vCPU thread does at the join point.
pub struct Switch {
    pub recorder: Option<Recorder>,
    pub plane: Option<Box<dyn IoPlane>>,
    pub keepalive: Option<Duration>,
}

/// The rendezvous between a copy thread and the vCPU thread. Reusable:
/// one copy at a time.
#[derive(Default)]
pub struct JoinCtl {
    due: AtomicBool,
    retire: AtomicBool,
    kit: Mutex<Option<PauseKit>>,
    frozen: Mutex<Option<Result<Frozen, SnapshotError>>>,
    ready: Condvar,
    resume: Mutex<ResumeSlot>,
    resumed: Condvar,
    /// The whole pause of the last join point.
    last_pause: Mutex<Option<Duration>>,
}

impl JoinCtl {
    /// A copy begins: the I/O thread's current plane (a primary alone's)
    /// is retired at the guest's next sync exit, freeing its sockets for
    /// the new one.
    pub fn begin(&self, wake: impl Fn()) {
        if let Ok(mut r) = self.resume.lock() {
            *r = ResumeSlot::default();
        }
        if let Ok(mut p) = self.last_pause.lock() {
            *p = None;
        }
        self.retire.store(true, Ordering::Release);
        wake();
    }

    /// The vCPU thread: whether the current plane is to be retired now.
    pub fn take_retire(&self) -> bool {
        self.retire.swap(false, Ordering::AcqRel)
    }

    /// The copy thread, after sending the frozen state (or failing to).
    /// False if the paused vCPU had already given up waiting: then nothing
    /// was switched, whatever the verdict.
    pub fn resume(&self, verdict: Resume) -> bool {
        let taken = match self.resume.lock() {
            Ok(mut r) if !r.abandoned => {
                r.verdict = Some(verdict);
                true
            }
            _ => false,
        };
        self.resumed.notify_all();
        taken
    }

    /// The whole pause of the last join point, once the guest runs again.
    pub fn wait_pause(&self, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.last_pause.lock().ok().and_then(|p| *p) {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_resume(&self) -> Option<Resume> {
        let deadline = Instant::now() + RESUME_TIMEOUT;
        let mut r = self.resume.lock().ok()?;
        loop {
            if let Some(v) = r.verdict.take() {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                r.abandoned = true;
                return None;
            }
            r = self.resumed.wait_timeout(r, left).ok()?.0;
        }
    }

    /// Whether a pause is asked for.
    pub fn due(&self) -> bool {
        self.due.load(Ordering::Acquire)
    }

    /// The copy thread: asks for the pause and waits for it. `wake` gets
    /// an idle guest's vCPU thread out of its wait. If no join point comes
    /// within `timeout` the request is withdrawn (the kit is dropped, which
    /// ends dirty logging) and nothing of the guest changed.
    pub fn pause(
        &self,
        kit: PauseKit,
        wake: impl Fn(),
        timeout: Duration,
    ) -> Result<Frozen, SnapshotError> {
        if let Ok(mut k) = self.kit.lock() {
            *k = Some(kit);
        }
        self.due.store(true, Ordering::Release);
        wake();
        let deadline = Instant::now() + timeout;
        let mut frozen = self
            .frozen
            .lock()
            .map_err(|_| SnapshotError::Protocol("join point poisoned".into()))?;
        loop {
            if let Some(result) = frozen.take() {
                self.due.store(false, Ordering::Release);
                return result;
            }
            let now = Instant::now();
            if now >= deadline {
                // Withdraw, unless the vCPU thread holds the kit already:
                // then its answer is on the way.
                let withdrawn = self.kit.lock().ok().and_then(|mut k| k.take());
                if withdrawn.is_some() {
                    self.due.store(false, Ordering::Release);
                    return Err(SnapshotError::Protocol(format!(
                        "no join point within {timeout:?} (disk requests kept in flight?)"
                    )));
                }
            }
            let wait = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            frozen = match self.ready.wait_timeout(frozen, wait) {
                Ok((g, _)) => g,
                Err(_) => return Err(SnapshotError::Protocol("join point poisoned".into())),
            };
            wake();
        }
    }

    fn publish(&self, result: Result<Frozen, SnapshotError>) {
        if let Ok(mut f) = self.frozen.lock() {
            *f = Some(result);
        }
        self.due.store(false, Ordering::Release);
        self.ready.notify_all();
    }

    /// The vCPU thread, at the end of a sync exit: takes the clone if one
    /// is asked for and this is a join point. Returns what to switch to.
    pub fn at_boundary(
        &self,
        exit_index: u64,
        vcpu: &dyn VcpuAccess,
        devices: &Devices,
        output_hash: u64,
        next_seq: u64,
    ) -> Option<Switch> {
        if !self.due() {
            return None;
        }
        let started = Instant::now();
        let mut kit = self.kit.lock().ok()?.take()?;
        let devices = match DevicesState::save(devices) {
            Ok(d) => d,
            Err(SnapshotError::InFlight(_)) => {
                // Not a join point: try the next one.
                if let Ok(mut k) = self.kit.lock() {
                    *k = Some(kit);
                }
                return None;
            }
            Err(e) => {
                self.publish(Err(e));
                return None;
            }
        };
        // The used rings: `virtio-queue` writes them, not the tracked helpers.
        let rings: Vec<u64> = [&devices.net, &devices.blk]
            .into_iter()
            .flatten()
            .filter(|t| t.active)
            .flat_map(|t| t.queues.iter())
            .flat_map(|q| {
                let len = 6 + 8 * u64::from(q.size);
                let first = q.used_ring / 4096;
                let last = q.used_ring.saturating_add(len) / 4096;
                first..=last
            })
            .collect();
        let captured = vcpu.capture_state().and_then(|vcpu| {
            let (pages, final_pages) = kit.precopy.final_pass(&rings)?;
            let first_seq = match &kit.recorder {
                Some(r) => r.seq() + 1,
                None => next_seq,
            };
            let hash = match &kit.recorder {
                Some(r) => r.output_hash(),
                None => output_hash,
            };
            Ok((vcpu, pages, final_pages, first_seq, hash))
        });
        match captured {
            Ok((vcpu, pages, final_pages, first_seq, output_hash)) => {
                let PauseKit {
                    precopy,
                    recorder,
                    keepalive,
                } = kit;
                let pause = started.elapsed();
                self.publish(Ok(Frozen {
                    pages,
                    final_pages,
                    state: MachineState {
                        exit_index,
                        first_seq,
                        output_hash,
                        vcpu,
                        devices,
                    },
                    pause,
                    precopy,
                }));
                let verdict = self.wait_resume();
                let paused = started.elapsed();
                if let Ok(mut p) = self.last_pause.lock() {
                    *p = Some(paused);
                }
                match verdict {
                    Some(Resume::Switch(plane)) => {
                        tracing::info!(
                            "join point at exit {exit_index}: the guest was paused {:.3} ms",
                            paused.as_secs_f64() * 1e3
                        );
                        Some(Switch {
                            recorder,
                            plane,
                            keepalive,
                        })
                    }
                    Some(Resume::Abandon) | None => {
                        tracing::warn!(
                            "join point at exit {exit_index} abandoned: the copy did not complete"
                        );
                        None
                    }
                }
            }
            Err(e) => {
                self.publish(Err(e));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_after_the_vcpu_gave_up_is_refused_and_begin_resets_it() {
        let ctl = JoinCtl::default();
        ctl.begin(|| {});
        assert!(ctl.take_retire(), "a copy retires the lone plane");
        assert!(!ctl.take_retire());
        // The vCPU takes a verdict placed in time.
        assert!(ctl.resume(Resume::Abandon));
        assert!(matches!(ctl.wait_resume(), Some(Resume::Abandon)));
        // The vCPU gave up waiting: a later verdict is refused.
        if let Ok(mut r) = ctl.resume.lock() {
            r.abandoned = true;
        }
        assert!(!ctl.resume(Resume::Switch(None)));
        // The next copy starts clean.
        ctl.begin(|| {});
        assert!(ctl.resume(Resume::Switch(None)));
        assert!(matches!(ctl.wait_resume(), Some(Resume::Switch(None))));
        assert!(ctl.wait_pause(Duration::from_millis(1)).is_none());
    }
}
