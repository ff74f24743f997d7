//! The operator's say over re-protection (docs/operator-actions.md): the
//! join thread ([`super::primary::reprotect`]) asks it where to join next
//! and reports each attempt to it; the operator's actions
//! ([`crate::operator`]) aim it at a host, wake it, and wait for what it
//! reports. Whether re-protection may run at all is the status's
//! [`Hold`], which `lockstep status` shows.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use lockstep_status::protection::{Hold, JoinProgress};

use super::primary::{JoinError, Joined, chain};
use crate::membership::Spares;
use crate::shared::FtShared;

/// One join attempt, as the operator sees it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Counts attempts from 1: an action waits for one later than it saw.
    pub seq: u64,
    pub addr: SocketAddr,
    /// The epoch of the new pair run, or why the join failed.
    pub result: Result<u64, String>,
}

#[derive(Default)]
struct Inner {
    /// Join this host next (once, whatever the outcome), before the
    /// spares list.
    aim: Option<SocketAddr>,
    /// The pair run a backup follows now (the last joined, or the one the
    /// VM started with): the one an action drops.
    current: Option<Arc<FtShared>>,
    /// Where that run's backup is.
    peer: Option<String>,
    last: Option<Attempt>,
    attempts: u64,
    joining: bool,
    /// An action woke the join thread: its next wait returns at once (a
    /// wake between its look at the state and its wait is not lost).
    kicked: bool,
}

/// Shared by the join thread and the operator's actions.
#[derive(Default)]
pub struct Protection {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// The configured spares (`--spares`: a list, or etcd's registry,
    /// asked afresh each round); none: re-protection only joins where the
    /// operator aims it.
    spares: Mutex<Option<Box<dyn Spares>>>,
    configured: bool,
}

impl Protection {
    pub fn new(spares: Option<Box<dyn Spares>>) -> Protection {
        Protection {
            configured: spares.is_some(),
            spares: Mutex::new(spares),
            ..Protection::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock: a thread panicked mid-update of plain values,
        // which are still whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn has_spares(&self) -> bool {
        self.configured
    }

    /// For the log: where spares come from, if anywhere.
    pub fn describe(&self) -> Option<String> {
        let spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        spares.as_ref().map(|s| s.describe())
    }

    /// The pair run a backup follows now, if any, and where the backup is.
    pub fn current(&self) -> Option<(Arc<FtShared>, String)> {
        let inner = self.lock();
        let peer = inner.peer.clone().unwrap_or_else(|| "?".into());
        inner.current.clone().map(|ft| (ft, peer))
    }

    /// The pair run the VM started with, and its backup.
    pub fn set_current(&self, ft: Arc<FtShared>, peer: String) {
        let mut inner = self.lock();
        inner.current = Some(ft);
        inner.peer = Some(peer);
    }

    /// Aims the next join at `addr`, and wakes the join thread.
    pub fn aim(&self, addr: Option<SocketAddr>) {
        let mut inner = self.lock();
        inner.aim = addr;
        inner.kicked = true;
        drop(inner);
        self.changed.notify_all();
    }

    /// Wakes the join thread now (out of its back-off).
    pub fn kick(&self) {
        self.lock().kicked = true;
        self.changed.notify_all();
    }

    /// Where the next round of joins goes: the aimed host alone, else the
    /// spares in order (a registry is read now; the count goes to
    /// `progress` for `lockstep status`).
    pub fn targets(&self, progress: &JoinProgress) -> Vec<SocketAddr> {
        if let Some(a) = self.lock().aim {
            return vec![a];
        }
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let Some(source) = spares.as_mut() else {
            return Vec::new();
        };
        let candidates = source.candidates();
        progress.saw_spares(u64::try_from(candidates.len()).unwrap_or(u64::MAX));
        candidates
    }

    /// The join thread's wait: up to `d`, or until an action wakes it
    /// (also one that came since its last wait).
    pub fn wait(&self, d: Duration) {
        let mut inner = self.lock();
        if !inner.kicked {
            inner = self
                .changed
                .wait_timeout(inner, d)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        inner.kicked = false;
    }

    /// An action's wait: up to `d`, or until a join attempt ends (or
    /// anything else changes); leaves the join thread's wake alone.
    pub fn wait_news(&self, d: Duration) {
        let inner = self.lock();
        let _ = self.changed.wait_timeout(inner, d);
    }

    /// The last attempt, and how many were made.
    pub fn last(&self) -> (u64, Option<Attempt>) {
        let inner = self.lock();
        (inner.attempts, inner.last.clone())
    }

    /// Whether a join attempt is under way.
    pub fn joining(&self) -> bool {
        self.lock().joining
    }

    /// Runs one join attempt at `addr` with `join`, unless the operator
    /// holds re-protection (`None` then). Marked under the lock before the
    /// hold is read again, so an action that sets the hold and then finds
    /// no attempt under way knows none will begin.
    pub fn attempt(
        &self,
        addr: SocketAddr,
        progress: &JoinProgress,
        join: impl FnOnce() -> Result<Joined, JoinError>,
    ) -> Option<Result<Joined, JoinError>> {
        self.lock().joining = true;
        if progress.hold() != Hold::None {
            self.lock().joining = false;
            self.changed.notify_all();
            return None;
        }
        let result = join();
        let mut inner = self.lock();
        inner.attempts += 1;
        inner.last = Some(Attempt {
            seq: inner.attempts,
            addr,
            result: match &result {
                Ok(j) => Ok(j.epoch),
                Err(e) => Err(chain(e)),
            },
        });
        if let Ok(j) = &result {
            inner.current = Some(j.ft.clone());
            inner.peer = Some(addr.to_string());
        }
        if inner.aim == Some(addr) {
            inner.aim = None;
        }
        inner.joining = false;
        drop(inner);
        self.changed.notify_all();
        Some(result)
    }
}
