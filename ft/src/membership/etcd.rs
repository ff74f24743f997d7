//! The primary's side of the spares registry: the waiting backups
//! registered under `PREFIX/` in etcd, read afresh at every round of
//! re-protection (one range request), oldest registration first.
//!
//! Key layout (a format; docs/join.md, "Spares in etcd"): `PREFIX/NAME` =
//! the waiting backup's logging-channel address as `IP:PORT` (ASCII, no
//! host names: nothing read from etcd is ever resolved), bound to the
//! backup's lease, so a spare whose process died disappears when the lease
//! expires. What is read there is untrusted: at most [`MAX_SPARES`] keys
//! per round, values of at most [`MAX_VALUE`] bytes; anything else under
//! the prefix is skipped and logged once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::etcd::{Gateway, GatewayError, KeyValue};

use super::{RateLimit, Spares};

/// At most this many registrations are read per round.
pub const MAX_SPARES: u32 = 64;
/// A longer value is no `IP:PORT`.
pub const MAX_VALUE: usize = 64;
/// How often an unreachable registry is complained about.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Junk entries remembered (so each is logged once); forgotten beyond.
const MAX_REPORTED: usize = 1024;

/// One registered spare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spare {
    /// The key's last part (the backup's `--name`), for the log.
    pub name: String,
    pub addr: SocketAddr,
}

/// What a round read: the spares, and the entries skipped as junk.
#[derive(Debug, Default)]
pub struct Listing {
    pub spares: Vec<Spare>,
    /// `(key, mod revision, why)` of each entry that is not a
    /// registration.
    pub junk: Vec<(String, i64, String)>,
}

pub struct EtcdSpares {
    gateway: Gateway,
    /// `PREFIX/`.
    prefix: String,
    unreachable: RateLimit,
    /// `(key, mod revision)` of the junk already logged.
    reported: HashSet<(Vec<u8>, i64)>,
}

impl EtcdSpares {
    /// `uri`: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`. Nothing is
    /// contacted yet.
    pub fn new(uri: &str) -> Result<Self, String> {
        let rest = uri.strip_prefix("etcd://").ok_or("not an etcd:// URI")?;
        let (gateway, prefix) = Gateway::parse(uri, rest, "PREFIX")?;
        // The command line splits --spares at commas: one in the prefix is
        // more likely a list after the URI than a name.
        if prefix.contains(',') {
            return Err(format!(
                "PREFIX {prefix:?} has a ',': an etcd URI must be the only --spares value"
            ));
        }
        Ok(EtcdSpares {
            gateway,
            prefix: format!("{prefix}/"),
            unreachable: RateLimit::new(WARN_EVERY),
            reported: HashSet::new(),
        })
    }

    /// Per-request timeout (default [`crate::etcd::DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.gateway = self.gateway.with_timeout(timeout);
        self
    }

    /// The registered spares now, junk set apart.
    pub fn list(&self) -> Result<Listing, GatewayError> {
        let range = self.gateway.range_prefix(&self.prefix, MAX_SPARES)?;
        let mut listing = Listing::default();
        for kv in range.kvs {
            match self.spare(&kv) {
                Ok(spare) => listing.spares.push(spare),
                Err(why) => listing.junk.push((
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.mod_revision,
                    why,
                )),
            }
        }
        for _ in 0..range.malformed {
            listing.junk.push((
                self.prefix.clone(),
                0,
                "an entry that is no key-value".into(),
            ));
        }
        if range.more {
            tracing::debug!(
                "more than {MAX_SPARES} spares under {}: the oldest {MAX_SPARES} are tried",
                self.prefix
            );
        }
        Ok(listing)
    }

    /// The registration `kv` holds, or why it is none.
    fn spare(&self, kv: &KeyValue) -> Result<Spare, String> {
        let name = kv
            .key
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok())
            .filter(|n| !n.is_empty() && n.len() <= crate::arbiter::MAX_NAME_LEN)
            .ok_or("its name is not 1 to 255 bytes of UTF-8")?;
        if kv.value.len() > MAX_VALUE {
            return Err(format!("its value is {} bytes long", kv.value.len()));
        }
        let addr = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
            .ok_or("its value is not an IP:PORT")?;
        Ok(Spare {
            name: name.to_string(),
            addr,
        })
    }

    /// Logs each junk entry once (per version of it).
    fn report(&mut self, junk: &[(String, i64, String)]) {
        for (key, rev, why) in junk {
            if self.reported.len() >= MAX_REPORTED {
                self.reported.clear();
            }
            if self.reported.insert((key.as_bytes().to_vec(), *rev)) {
                tracing::warn!("spares registry: skipping {key:?}: {why}");
            }
        }
    }
}

impl Spares for EtcdSpares {
    fn candidates(&mut self) -> Vec<SocketAddr> {
        match self.list() {
            Ok(listing) => {
                if self.unreachable.reset() {
                    tracing::info!("spares registry {} answers again", self.gateway.uri());
                }
                self.report(&listing.junk);
                if !listing.spares.is_empty() {
                    let names: Vec<String> = listing
                        .spares
                        .iter()
                        .map(|s| format!("{} at {}", s.name, s.addr))
                        .collect();
                    tracing::info!("spares registered: {}", names.join(", "));
                }
                listing.spares.into_iter().map(|s| s.addr).collect()
            }
            Err(e) => {
                if let Some(held) = self.unreachable.allow(Instant::now()) {
                    let mut why = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        why.push_str(&format!(": {s}"));
                        src = s.source();
                    }
                    tracing::warn!(
                        "cannot read the spares registry ({why}); retrying{}",
                        if held > 0 {
                            format!(" ({held} more failures since the last warning)")
                        } else {
                            String::new()
                        }
                    );
                }
                Vec::new()
            }
        }
    }

    fn describe(&self) -> String {
        self.gateway.uri().to_string()
    }
}
