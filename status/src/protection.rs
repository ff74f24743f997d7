//! A VM's protection state (docs/join.md), as `lockstep status` shows it:
//! `protected`, `need-backup (reason)`, `starting (join progress)`, or
//! `not protected (reason)`. The FT layer's join updates [`JoinProgress`],
//! the operator's actions (docs/operator-actions.md) its [`Hold`], the
//! supervisor whether the arbiter answers; the rest follows from the role.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use super::counters::Role;

/// A primary's live clone into a new backup, as it goes.
#[derive(Debug, Default)]
pub struct JoinProgress {
    /// A copy is under way.
    pub copying: AtomicBool,
    /// Pre-copy rounds done and pages sent so far, of the guest's pages.
    pub rounds: AtomicU64,
    pub pages: AtomicU64,
    pub guest_pages: AtomicU64,
    /// Joins that completed.
    pub joins: AtomicU64,
    /// Why the last attempt failed, if it did.
    pub last_failure: Mutex<Option<String>>,
    /// Why a primary runs alone, if not because its backup was lost (a VM
    /// started without one says `no backup yet`).
    pub alone_because: Mutex<Option<String>>,
    /// The waiting backups the last round of re-protection was offered
    /// (a list's length, or the spares registered in etcd then).
    pub spares: AtomicU64,
    /// Whether a round has asked for spares yet.
    pub spares_asked: AtomicBool,
    /// The operator's hold on re-protection ([`Hold`] as a number).
    pub hold: AtomicU8,
    /// The supervisor has a lost backup to settle and the arbiter does
    /// not answer: outputs wait, nothing is protected.
    pub arbiter_unreachable: AtomicBool,
}

/// Whether the operator keeps a VM from being protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Re-protection runs (when there is a spare to join).
    None = 0,
    /// `lockstep ft off` (or a `run` VM not turned on yet).
    Off = 1,
    /// `lockstep ft suspend`.
    Suspended = 2,
}

impl Hold {
    fn from_u8(v: u8) -> Hold {
        match v {
            1 => Hold::Off,
            2 => Hold::Suspended,
            _ => Hold::None,
        }
    }
}

impl JoinProgress {
    /// A copy of a guest of `guest_pages` pages begins.
    pub fn start(&self, guest_pages: u64) {
        self.rounds.store(0, Relaxed);
        self.pages.store(0, Relaxed);
        self.guest_pages.store(guest_pages, Relaxed);
        self.copying.store(true, Relaxed);
    }

    /// A pre-copy round ended.
    pub fn round(&self, round: u64, pages_so_far: u64) {
        self.rounds.store(round, Relaxed);
        self.pages.store(pages_so_far, Relaxed);
    }

    /// A round of re-protection was offered `n` waiting backups.
    pub fn saw_spares(&self, n: u64) {
        self.spares.store(n, Relaxed);
        self.spares_asked.store(true, Relaxed);
    }

    /// What [`saw_spares`](Self::saw_spares) noted last, if anything.
    pub fn spares_seen(&self) -> Option<u64> {
        self.spares_asked
            .load(Relaxed)
            .then(|| self.spares.load(Relaxed))
    }

    /// The copy ended: joined, or failed for `why`.
    pub fn end(&self, failed: Option<String>) {
        self.copying.store(false, Relaxed);
        if failed.is_none() {
            self.joins.fetch_add(1, Relaxed);
        }
        if let Ok(mut f) = self.last_failure.lock() {
            *f = failed;
        }
    }

    pub fn hold(&self) -> Hold {
        Hold::from_u8(self.hold.load(Relaxed))
    }

    pub fn set_hold(&self, hold: Hold) {
        self.hold.store(hold as u8, Relaxed);
    }

    /// The protection state of a VMM in `role`.
    pub fn describe(&self, role: Role) -> String {
        let copying = self.copying.load(Relaxed);
        match (role, self.hold()) {
            (Role::PrimaryAlone, Hold::Off) if !copying => {
                return "not protected (turned off)".into();
            }
            (Role::PrimaryAlone, Hold::Suspended) if !copying => {
                return "not protected (suspended by the operator)".into();
            }
            _ => {}
        }
        match role {
            Role::Primary if self.arbiter_unreachable.load(Relaxed) => {
                "not protected (backup lost, arbiter unreachable)".into()
            }
            Role::Primary => "protected".into(),
            Role::PrimaryAlone if copying => format!(
                "starting (join: {} rounds, {} pages sent, guest {} pages)",
                self.rounds.load(Relaxed),
                self.pages.load(Relaxed),
                self.guest_pages.load(Relaxed)
            ),
            Role::PrimaryAlone => {
                let last = self.last_failure.lock().ok().and_then(|f| f.clone());
                let because = self
                    .alone_because
                    .lock()
                    .ok()
                    .and_then(|b| b.clone())
                    .unwrap_or_else(|| "backup lost".into());
                match last {
                    Some(why) => format!("need-backup ({because}; last join failed: {why})"),
                    None => format!("need-backup ({because})"),
                }
            }
            Role::Standalone => "not protected (no backup)".into(),
            Role::Backup | Role::GoingLive => "backup".into(),
            Role::Recording | Role::Stopped => "-".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_role_and_the_join() {
        let j = JoinProgress::default();
        assert_eq!(j.describe(Role::Primary), "protected");
        assert_eq!(j.describe(Role::PrimaryAlone), "need-backup (backup lost)");
        j.start(100);
        j.round(1, 100);
        assert!(
            j.describe(Role::PrimaryAlone)
                .starts_with("starting (join: 1 rounds, 100")
        );
        j.end(Some("refused".into()));
        assert!(
            j.describe(Role::PrimaryAlone)
                .contains("last join failed: refused")
        );
        j.end(None);
        assert_eq!(j.joins.load(Relaxed), 1);
        *j.alone_because.lock().unwrap() = Some("no backup yet".into());
        assert_eq!(
            j.describe(Role::PrimaryAlone),
            "need-backup (no backup yet)"
        );
        j.set_hold(Hold::Suspended);
        assert_eq!(
            j.describe(Role::PrimaryAlone),
            "not protected (suspended by the operator)"
        );
        j.set_hold(Hold::Off);
        assert_eq!(j.describe(Role::PrimaryAlone), "not protected (turned off)");
        j.set_hold(Hold::None);
        j.arbiter_unreachable.store(true, Relaxed);
        assert_eq!(
            j.describe(Role::Primary),
            "not protected (backup lost, arbiter unreachable)"
        );
    }
}
