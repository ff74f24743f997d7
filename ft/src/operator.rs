//! The operator's FT actions (vSphere FT's menu; docs/operator-actions.md):
//! `lockstep ft on|off|suspend|resume|test-failover|test-restart-backup|
//! migrate-backup`, carried out on the management endpoint's connection
//! thread. Each answers once it is complete (or at its deadline) with what
//! was done and how long the VM was unprotected.
//!
//! Nothing here is a new mechanism: a backup is dropped as a lost backup
//! is (the supervisor claims the epoch at the arbiter, then the primary
//! runs alone), and protected again by the join thread
//! ([`crate::join::primary::reprotect`]), which the action aims and wakes
//! through [`Protection`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lockstep_status::actions::{ACTION_DEADLINE, Action, ActionHandler, Answered, Outcome};
use lockstep_status::protection::Hold;
use lockstep_status::{Role, StatusCounters};
use lockstep_vmm::dataplane::shared::VmShared;

use crate::join::control::Protection;
use crate::shared::FtShared;

/// How often a waiting action looks at the VM's state (it is also woken
/// by every join attempt's end).
const LOOK: Duration = Duration::from_millis(5);

/// Stops the process at once, without releasing anything more (a test
/// failover); the binary's, which owns exit statuses.
pub type StopNow = Box<dyn Fn() + Send + Sync>;

/// Carries out the actions of one VMM.
pub struct Operator {
    control: Arc<Protection>,
    shared: OnceLock<Arc<VmShared>>,
    initial: Hold,
    stop_now: Arc<StopNow>,
    /// The exit status a test failover ends with (for the answer).
    failover_exit: u8,
    /// One action at a time.
    busy: Mutex<()>,
    /// Since when the VM is unprotected, as far as this side knows (its
    /// start alone, or an action that dropped its backup).
    unprotected_since: Mutex<Option<Instant>>,
    deadline: Duration,
}

/// A backup that was dropped.
struct Dropped {
    epoch: u64,
    peer: String,
    /// From the drop to the arbiter's verdict (the primary alone).
    claim: Duration,
}

/// A primary with a live backup: not one whose backup is gone while the
/// supervisor still waits for the arbiter (its role is still `primary`).
fn protected(status: &StatusCounters) -> bool {
    status.role() == Role::Primary
        && !status
            .join
            .arbiter_unreachable
            .load(std::sync::atomic::Ordering::Relaxed)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

impl Operator {
    /// `initial`: whether the VM starts with re-protection held (a `run`
    /// VM is `Off` until `ft on`).
    pub fn new(
        control: Arc<Protection>,
        initial: Hold,
        stop_now: StopNow,
        failover_exit: u8,
    ) -> Operator {
        Operator {
            control,
            shared: OnceLock::new(),
            initial,
            stop_now: Arc::new(stop_now),
            failover_exit,
            busy: Mutex::new(()),
            unprotected_since: Mutex::new(None),
            deadline: ACTION_DEADLINE - Duration::from_secs(2),
        }
    }

    /// The running VM, once built (before its join thread starts).
    pub fn attach(&self, shared: Arc<VmShared>) {
        shared.status.join.set_hold(self.initial);
        if shared.status.role() != Role::Primary {
            self.mark_unprotected();
        }
        let _ = self.shared.set(shared);
    }

    fn mark_unprotected(&self) {
        if let Ok(mut t) = self.unprotected_since.lock() {
            *t = Some(Instant::now());
        }
    }

    /// How long the VM has been unprotected, if this side knows.
    fn unprotected_for(&self) -> Option<Duration> {
        self.unprotected_since
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed()))
    }

    fn resolve(target: &str) -> Result<SocketAddr, Outcome> {
        target
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Outcome::BadRequest(format!("cannot resolve {target}")))
    }

    /// Waits until `done` says something, at most the action's deadline.
    fn until(
        &self,
        mut done: impl FnMut() -> Option<Outcome>,
        late: impl Fn() -> Outcome,
    ) -> Outcome {
        let deadline = Instant::now() + self.deadline;
        loop {
            if let Some(o) = done() {
                return o;
            }
            if Instant::now() >= deadline {
                return late();
            }
            self.control.wait_news(LOOK);
        }
    }

    /// Drops the backup the VM has now, as a lost one is dropped: the
    /// supervisor claims the epoch (the channel stays open until it has
    /// won, so the backup cannot claim first), then the primary runs
    /// alone. `None`: there was none to drop. A join under way ends first:
    /// its backup is dropped too, and the hold keeps a new one from
    /// beginning.
    fn drop_backup(&self, s: &VmShared, why: &str) -> Result<Option<Dropped>, Outcome> {
        let status = &s.status;
        let settled = self.until(
            || {
                (!self.control.joining()
                    && !status
                        .join
                        .copying
                        .load(std::sync::atomic::Ordering::Relaxed))
                .then(|| Outcome::Done(String::new()))
            },
            || Outcome::TimedOut("a join under way did not end".into()),
        );
        if !matches!(settled, Outcome::Done(_)) {
            return Err(settled);
        }
        if status.role() != Role::Primary {
            return Ok(None);
        }
        let Some((ft, peer)) = self.control.current() else {
            return Err(Outcome::Failed("no pair run known to drop".into()));
        };
        let epoch = StatusCounters::get(&status.epoch);
        let t0 = Instant::now();
        self.mark_unprotected();
        ft.note(why.to_string());
        ft.set(&ft.dropped);
        ft.set(&ft.peer_dead);
        s.wake_vcpu();
        let outcome = self.until(
            || match status.role() {
                Role::PrimaryAlone if FtShared::flag(&ft.alone) => Some(Outcome::Done(String::new())),
                Role::Stopped => Some(Outcome::Failed(format!(
                    "the arbiter gave epoch {epoch} to the backup at {peer}: it serves now, and this primary stops"
                ))),
                _ => None,
            },
            || {
                Outcome::TimedOut(format!(
                    "the backup is dropped but the arbiter has not answered yet ({}): outputs wait until it does",
                    status.join.describe(status.role())
                ))
            },
        );
        match outcome {
            Outcome::Done(_) => Ok(Some(Dropped {
                epoch,
                peer,
                claim: t0.elapsed(),
            })),
            other => Err(other),
        }
    }

    /// Waits until the VM is protected again by a join after attempt
    /// `seen`; a failed attempt at `aim` ends the wait.
    fn wait_protected(&self, s: &VmShared, seen: u64, aim: Option<SocketAddr>) -> Outcome {
        let status = &s.status;
        let asked = Instant::now();
        self.until(
            || {
                let (n, last) = self.control.last();
                let copying = status
                    .join
                    .copying
                    .load(std::sync::atomic::Ordering::Relaxed);
                match (status.role(), last) {
                    (Role::Primary, Some(a)) if n > seen && !copying => {
                        // Unknown when the backup was lost on its own (the
                        // supervisor's doing, not an action's): then at
                        // least since this action.
                        let (window, least) = match self.unprotected_for() {
                            Some(w) => (w, ""),
                            None => (asked.elapsed(), "at least "),
                        };
                        if let Ok(mut t) = self.unprotected_since.lock() {
                            *t = None;
                        }
                        Some(Outcome::Done(format!(
                            "protected: the backup at {} joined in epoch {}; unprotected for {least}{} ms",
                            a.addr,
                            a.result.as_ref().map_or(0, |e| *e),
                            ms(window)
                        )))
                    }
                    (Role::Stopped, _) => Some(Outcome::Failed("the VM stopped".into())),
                    (_, Some(a)) if n > seen && Some(a.addr) == aim => match a.result {
                        Err(why) => Some(Outcome::Failed(format!(
                            "no backup joined at {}: {why}; the VM serves on, {}",
                            a.addr,
                            status.join.describe(status.role())
                        ))),
                        Ok(_) => None,
                    },
                    _ => None,
                }
            },
            || {
                Outcome::TimedOut(format!(
                    "not protected within {:?}: {}; re-protection goes on",
                    self.deadline,
                    status.join.describe(status.role())
                ))
            },
        )
    }

    fn on(&self, s: &VmShared, target: Option<String>) -> Outcome {
        let aim = match target.as_deref().map(Self::resolve).transpose() {
            Ok(a) => a,
            Err(o) => return o,
        };
        let status = &s.status;
        match status.role() {
            Role::PrimaryAlone => {}
            Role::Primary if !protected(status) => {
                return Outcome::Conflict(format!(
                    "the backup is being settled first: {}",
                    status.join.describe(status.role())
                ));
            }
            Role::Primary => {
                return Outcome::Conflict(format!(
                    "already protected (epoch {})",
                    StatusCounters::get(&status.epoch)
                ));
            }
            other => {
                return Outcome::Conflict(format!("a VMM in role {other} cannot be turned on"));
            }
        }
        if aim.is_none() && !self.control.has_spares() {
            return Outcome::Conflict(
                "no spare to join: name one (lockstep ft on HOST:PORT), or start the VM with --spares"
                    .into(),
            );
        }
        let (seen, _) = self.control.last();
        self.control.aim(aim);
        status.join.set_hold(Hold::None);
        self.control.kick();
        self.wait_protected(s, seen, aim)
    }

    fn hold(&self, s: &VmShared, hold: Hold) -> Outcome {
        let status = &s.status;
        let before = status.join.hold();
        match (before, hold) {
            (Hold::Off, Hold::Suspended) => {
                return Outcome::Conflict("protection is off: `ft on` turns it on".into());
            }
            (b, h) if b == h => {
                return Outcome::Done(format!(
                    "protection was already {}",
                    if h == Hold::Off { "off" } else { "suspended" }
                ));
            }
            _ => {}
        }
        if !matches!(status.role(), Role::Primary | Role::PrimaryAlone) {
            return Outcome::Conflict(format!(
                "a VMM in role {} has no protection to change",
                status.role()
            ));
        }
        let was = status.join.describe(status.role());
        status.join.set_hold(hold);
        self.control.aim(None);
        let (what, until) = match hold {
            Hold::Suspended => ("suspended", "lockstep ft resume"),
            _ => ("off", "lockstep ft on"),
        };
        match self.drop_backup(s, &format!("protection {what} by the operator")) {
            Ok(Some(d)) => Outcome::Done(format!(
                "dropped the backup at {} (epoch {}; the arbiter's claim took {} ms): protection {what}; the VM is unprotected until `{until}`",
                d.peer,
                d.epoch,
                ms(d.claim)
            )),
            Ok(None) => Outcome::Done(format!(
                "protection {what} (the VM was not protected: {was}); nothing joins until `{until}`"
            )),
            Err(o) => o,
        }
    }

    fn resume(&self, s: &VmShared) -> Outcome {
        let status = &s.status;
        match status.join.hold() {
            Hold::Suspended => {}
            Hold::Off => {
                return Outcome::Conflict("protection is off, not suspended: use `ft on`".into());
            }
            Hold::None => return Outcome::Conflict("protection is not suspended".into()),
        }
        let (seen, _) = self.control.last();
        status.join.set_hold(Hold::None);
        self.control.kick();
        if !self.control.has_spares() {
            return Outcome::Done(
                "re-protection resumed, but there is no spare to join: `lockstep ft on HOST:PORT`"
                    .into(),
            );
        }
        self.wait_protected(s, seen, None)
    }

    /// Drops the backup and lets re-protection join `aim` (or the next
    /// spare) at once.
    fn replace(&self, s: &VmShared, aim: Option<SocketAddr>, what: &str) -> Outcome {
        let status = &s.status;
        if !protected(status) || status.join.hold() != Hold::None {
            return Outcome::Conflict(format!(
                "{what} needs a protected VM: {}",
                status.join.describe(status.role())
            ));
        }
        if aim.is_none() && !self.control.has_spares() {
            return Outcome::Conflict(format!(
                "{what}: no spare to join (--spares); use migrate-backup HOST:PORT"
            ));
        }
        let (seen, _) = self.control.last();
        // Aimed first: the join thread goes there once the VM is alone.
        self.control.aim(aim);
        let dropped = match self.drop_backup(s, &format!("{what} by the operator")) {
            Ok(Some(d)) => d,
            Ok(None) => return Outcome::Conflict("the backup was gone already".into()),
            Err(o) => return o,
        };
        self.control.kick();
        match self.wait_protected(s, seen, aim) {
            Outcome::Done(t) => Outcome::Done(format!(
                "{what}: dropped the backup at {} (epoch {}; the arbiter's claim took {} ms); {t}",
                dropped.peer,
                dropped.epoch,
                ms(dropped.claim)
            )),
            other => other,
        }
    }

    fn test_failover(&self, s: &Arc<VmShared>) -> Answered {
        let status = &s.status;
        let current = self.control.current();
        let (true, Some((ft, peer))) = (protected(status), current) else {
            return Outcome::Conflict(format!(
                "a test failover needs a protected VM (there would be no VM left): {}",
                status.join.describe(status.role())
            ))
            .into();
        };
        let epoch = StatusCounters::get(&status.epoch);
        let stop = self.stop_now.clone();
        let shared = s.clone();
        Answered {
            outcome: Outcome::Done(format!(
                "test failover: this primary (epoch {epoch}) stops now without releasing anything more (fenced, exit status {}); the backup at {peer} takes over once it finds it silent",
                self.failover_exit
            )),
            then: Some(Box::new(move || {
                // Fenced first: whatever the I/O thread holds stays.
                ft.set(&ft.fenced);
                shared.wake_vcpu();
                // A process slow to exit: the fence alone must keep the
                // backup's log free of anything after it.
                fail::fail_point!("test-failover-exit");
                stop();
            })),
        }
    }
}

impl ActionHandler for Operator {
    fn act(&self, action: Action) -> Answered {
        let Ok(_one) = self.busy.try_lock() else {
            return Outcome::Conflict("another action is under way".into()).into();
        };
        let Some(s) = self.shared.get() else {
            return Outcome::Conflict("the VM is not running yet".into()).into();
        };
        match action {
            Action::On { target } => self.on(s, target).into(),
            Action::Off => self.hold(s, Hold::Off).into(),
            Action::Suspend => self.hold(s, Hold::Suspended).into(),
            Action::Resume => self.resume(s).into(),
            Action::TestFailover => self.test_failover(s),
            Action::TestRestartBackup => self.replace(s, None, "test restart backup").into(),
            Action::MigrateBackup { target } => match Self::resolve(&target) {
                Ok(a) => self.replace(s, Some(a), "migrate backup").into(),
                Err(o) => o.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
