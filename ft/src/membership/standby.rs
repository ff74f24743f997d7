//! A waiting backup's registration in the spares registry
//! (`lockstep backup --standby etcd://HOST:PORT/PREFIX`): while it waits
//! for a primary it holds an etcd lease, kept alive from a thread of its
//! own, and the key `PREFIX/NAME` = its listen address bound to that
//! lease. Once a primary attaches (or the backup stops) the lease is
//! revoked, which deletes the key, so no other primary picks it; a backup
//! whose process dies disappears when the lease expires (its TTL).
//!
//! etcd being unreachable never stops the backup: the thread retries with
//! back-off, and registers again (new lease) if its lease expired
//! meanwhile. A key of the same name held by another live lease (another
//! process with the same `--name`) is not taken over: the registration
//! waits until it is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::etcd::{Gateway, GatewayError};

use super::{MembershipError, RateLimit};

/// The lease's TTL: a dead spare is offered to primaries for at most this
/// long (a primary that tries it fails to connect and tries the next).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// How often a failing registry is complained about.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The stop flag the thread waits on (a condvar, so a stop is immediate).
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
    /// Set by the thread once it has withdrawn (or given up).
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Stop {
    /// Waits `d`; true if asked to stop.
    fn wait(&self, d: Duration) -> bool {
        let Ok(guard) = self.stopped.lock() else {
            return true;
        };
        match self.cv.wait_timeout_while(guard, d, |s| !*s) {
            Ok((s, _)) => *s,
            Err(_) => true,
        }
    }

    fn stop(&self) {
        if let Ok(mut s) = self.stopped.lock() {
            *s = true;
        }
        self.cv.notify_all();
    }

    fn finish(&self) {
        if let Ok(mut d) = self.done.lock() {
            *d = true;
        }
        self.done_cv.notify_all();
    }

    fn wait_done(&self, d: Duration) -> bool {
        let Ok(guard) = self.done.lock() else {
            return false;
        };
        self.done_cv
            .wait_timeout_while(guard, d, |d| !*d)
            .is_ok_and(|(d, _)| *d)
    }
}

/// A live registration; withdrawn on [`Standby::withdraw`] or drop.
pub struct Standby {
    key: String,
    stop: Arc<Stop>,
    registered: Arc<AtomicBool>,
}

impl Standby {
    /// Checks a registration without making it: a bad URI, name or
    /// address is refused here, before the backup starts waiting.
    pub fn check(uri: &str, name: &str, addr: SocketAddr) -> Result<(), MembershipError> {
        Self::parse(uri, name, addr).map(drop)
    }

    /// The gateway and the key of a registration.
    fn parse(
        uri: &str,
        name: &str,
        addr: SocketAddr,
    ) -> Result<(Gateway, String), MembershipError> {
        let bad = |why: &str| MembershipError::BadStandby {
            uri: uri.to_string(),
            why: why.to_string(),
        };
        let rest = uri
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("not an etcd:// URI"))?;
        let (gateway, prefix) = Gateway::parse(uri, rest, "PREFIX").map_err(|why| bad(&why))?;
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
            return Err(bad(&format!(
                "the name {name:?} becomes the key's last part: it must be non-empty, without '/' or control characters"
            )));
        }
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(bad(&format!(
                "{addr} is no address a primary can reach: --listen on a specific address"
            )));
        }
        Ok((gateway, format!("{prefix}/{name}")))
    }

    /// Registers `name` at `addr` under the prefix `uri` names, with a
    /// lease of `ttl`. Refuses a bad URI, name or address at once; etcd
    /// itself is contacted from the registration's thread.
    pub fn register(
        uri: &str,
        name: &str,
        addr: SocketAddr,
        ttl: Duration,
    ) -> Result<Standby, MembershipError> {
        let (gateway, key) = Self::parse(uri, name, addr)?;
        let ttl = ttl.max(Duration::from_secs(1));
        // A request must end well within the lease it keeps alive.
        let gateway = gateway.with_timeout((ttl / 3).min(crate::etcd::DEFAULT_TIMEOUT));
        let standby = Standby {
            key,
            stop: Arc::new(Stop::default()),
            registered: Arc::new(AtomicBool::new(false)),
        };
        let worker = Worker {
            gateway,
            key: standby.key.clone(),
            value: addr.to_string(),
            ttl,
            stop: standby.stop.clone(),
            registered: standby.registered.clone(),
            warn: RateLimit::new(WARN_EVERY),
        };
        std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || worker.run())
            .map_err(MembershipError::Thread)?;
        Ok(standby)
    }

    /// The key this spare registers under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the key is in etcd now (as far as this side knows).
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Withdraws the registration (revokes the lease, which deletes the
    /// key), waiting at most `wait` for etcd to confirm; beyond that the
    /// thread finishes on its own (or the lease expires).
    pub fn withdraw(self, wait: Duration) -> bool {
        self.stop.stop();
        self.stop.wait_done(wait)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

struct Worker {
    gateway: Gateway,
    key: String,
    value: String,
    ttl: Duration,
    stop: Arc<Stop>,
    registered: Arc<AtomicBool>,
    warn: RateLimit,
}

impl Worker {
    fn run(mut self) {
        let mut lease: Option<i64> = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            let pause = match lease {
                None => match self.register() {
                    Ok(Some(id)) => {
                        lease = Some(id);
                        backoff = Duration::from_millis(200);
                        self.keep_alive_period()
                    }
                    Ok(None) => self.retry(&mut backoff),
                    Err((id, e)) => {
                        self.complain("registering", &e);
                        // A lease granted for a put that failed: let go.
                        if let Some(id) = id {
                            let _ = self.gateway.revoke(id);
                        }
                        self.retry(&mut backoff)
                    }
                },
                Some(id) => match self.gateway.keep_alive(id) {
                    Ok(Some(_)) => {
                        if self.warn.reset() {
                            tracing::info!("spares registry: {} kept alive again", self.key);
                        }
                        self.keep_alive_period()
                    }
                    Ok(None) => {
                        tracing::warn!(
                            "spares registry: the lease of {} expired; registering again",
                            self.key
                        );
                        self.registered.store(false, Ordering::Relaxed);
                        lease = None;
                        Duration::ZERO
                    }
                    Err(e) => {
                        // The lease may still hold: keep trying it.
                        self.complain("keeping alive", &e);
                        self.keep_alive_period()
                    }
                },
            };
            if self.stop.wait(pause) {
                break;
            }
        }
        self.registered.store(false, Ordering::Relaxed);
        if let Some(id) = lease {
            match self.gateway.revoke(id) {
                Ok(()) => tracing::info!("spares registry: withdrew {}", self.key),
                Err(e) => tracing::warn!(
                    "spares registry: could not withdraw {} ({e}); it goes when its lease expires",
                    self.key
                ),
            }
        }
        self.stop.finish();
    }

    /// A renewal every third of the TTL: two may fail before it lapses.
    fn keep_alive_period(&self) -> Duration {
        self.ttl / 3
    }

    fn retry(&self, backoff: &mut Duration) -> Duration {
        let now = *backoff;
        *backoff = backoff.saturating_mul(2).min(self.ttl);
        now
    }

    /// A new lease and the key bound to it: `Some(lease)` when registered,
    /// `None` when the name is held by another live registration.
    fn register(&mut self) -> Result<Option<i64>, (Option<i64>, GatewayError)> {
        let lease = self.gateway.grant(self.ttl).map_err(|e| (None, e))?;
        let holder = self
            .gateway
            .put_if_absent(&self.key, self.value.as_bytes(), Some(lease.id))
            .map_err(|e| (Some(lease.id), e))?;
        match holder {
            None => {
                self.registered.store(true, Ordering::Relaxed);
                self.warn.reset();
                tracing::info!(
                    "spares registry: registered {} = {} (lease {:x}, TTL {} s)",
                    self.key,
                    self.value,
                    lease.id,
                    lease.ttl_s
                );
                Ok(Some(lease.id))
            }
            Some(kv) => {
                let _ = self.gateway.revoke(lease.id);
                if self.warn.allow(Instant::now()).is_some() {
                    tracing::warn!(
                        "spares registry: {} is held by another registration (lease {:x}); waiting for it to go",
                        self.key,
                        kv.lease
                    );
                }
                Ok(None)
            }
        }
    }

    fn complain(&mut self, what: &str, e: &GatewayError) {
        if let Some(held) = self.warn.allow(Instant::now()) {
            let source = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            tracing::warn!(
                "spares registry: {what} {} failed ({e}{source}); retrying{}",
                self.key,
                if held > 0 {
                    format!(" ({held} more failures since the last warning)")
                } else {
                    String::new()
                }
            );
        }
    }
}
