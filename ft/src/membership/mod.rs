//! Where a primary alone finds its next backup (docs/join.md, "Spares"):
//! a fixed list of waiting backups (`--spares HOST:PORT,...`), or the
//! spares that registered themselves in etcd under a key prefix
//! (`--spares etcd://HOST:PORT[,HOST:PORT...]/PREFIX`; a waiting backup
//! registers with `lockstep backup --standby`). The source is asked afresh
//! at every round of re-protection, so the primary picks a spare that is
//! alive at the moment it needs one.
//!
//! * [`etcd`]: the primary's read of the registry.
//! * [`standby`]: a waiting backup's registration, under a lease.

pub mod etcd;
pub mod standby;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use etcd::EtcdSpares;
pub use standby::Standby;

/// What the `--spares` grammar is, repeated in every error.
pub const SPARES_FORMS: &str =
    "expected HOST:PORT[,HOST:PORT...] or etcd://HOST:PORT[,HOST:PORT...]/PREFIX";

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("bad spares {spec:?}: {why} ({SPARES_FORMS})")]
    BadSpares { spec: String, why: String },
    #[error(
        "bad standby registration {uri:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)"
    )]
    BadStandby { uri: String, why: String },
    #[error("spare {addr:?} does not resolve")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the registration's keep-alive thread")]
    Thread(#[source] std::io::Error),
}

/// A source of waiting backups.
pub trait Spares: Send {
    /// The waiting backups to try now, in order. A source that cannot be
    /// read says so in the log (rate-limited) and offers none this round:
    /// the caller retries with back-off.
    fn candidates(&mut self) -> Vec<SocketAddr>;

    /// For the log: where spares come from.
    fn describe(&self) -> String;
}

/// A fixed list, resolved once at start.
pub struct StaticSpares(pub Vec<SocketAddr>);

impl Spares for StaticSpares {
    fn candidates(&mut self) -> Vec<SocketAddr> {
        self.0.clone()
    }

    fn describe(&self) -> String {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        list.join(", ")
    }
}

/// The spares `--spares` names: its values (split at commas by the
/// command line, which also splits an etcd URI's endpoint list; they are
/// joined again here). `None` if there are none.
pub fn parse(values: &[String]) -> Result<Option<Box<dyn Spares>>, MembershipError> {
    if values.is_empty() {
        return Ok(None);
    }
    let spec = values.join(",");
    let bad = |why: &str| MembershipError::BadSpares {
        spec: spec.clone(),
        why: why.to_string(),
    };
    if spec.starts_with("etcd://") {
        return Ok(Some(Box::new(
            EtcdSpares::new(&spec).map_err(|why| bad(&why))?,
        )));
    }
    let mut list = Vec::new();
    for value in values {
        if value.contains("://") {
            return Err(bad(&format!(
                "{value:?}: a URI must be the only value, and etcd:// the only scheme"
            )));
        }
        let addr = value
            .to_socket_addrs()
            .map_err(|source| MembershipError::Resolve {
                addr: value.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| bad(&format!("{value:?} resolves to no address")))?;
        list.push(addr);
    }
    Ok(Some(Box::new(StaticSpares(list))))
}

/// A warning said at most once per `every`, with how many were held back:
/// an etcd that stays unreachable for an hour must not fill the log.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last one)` if this one may be said.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held = self.held.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }

    /// Whether anything was said since the last [`reset`](Self::reset):
    /// the trouble it was about is over.
    pub fn reset(&mut self) -> bool {
        let was = self.last.is_some();
        self.last = None;
        self.held = 0;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_values() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(parse(&[]).expect("none").is_none());
        let mut list = parse(&v(&["127.0.0.1:7000", "127.0.0.2:7001"]))
            .expect("list")
            .expect("some");
        assert_eq!(list.candidates().len(), 2);
        // The command line split the endpoint list: joined again.
        let etcd = parse(&v(&["etcd://127.0.0.1:2379", "127.0.0.2:2379/spares"]))
            .expect("etcd")
            .expect("some");
        assert_eq!(
            etcd.describe(),
            "etcd://127.0.0.1:2379,127.0.0.2:2379/spares"
        );
        for bad in [
            &["etcd://127.0.0.1:2379"][..],
            &["etcd://127.0.0.1:2379/"],
            &["etcd://127.0.0.1/spares"],
            &["127.0.0.1:7000", "etcd://127.0.0.1:2379/spares"],
            &["http://127.0.0.1:2379/spares"],
            &["not an address"],
        ] {
            assert!(parse(&v(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rate_limit() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(30));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(31)), Some(2));
        assert!(r.reset());
        assert!(!r.reset());
        assert_eq!(r.allow(t0 + Duration::from_secs(32)), Some(0));
    }
}
