//! Split-brain protection (the paper's §2.3): before a backup goes live, and
//! before a primary that lost its backup continues alone, the survivor must
//! win an atomic test-and-set on storage both hosts reach; the loser stops.
//!
//! Every FT pair run has an **epoch**. The primary that starts a run takes
//! a fresh one with [`Arbiter::begin_next`] (it registers the epoch, so a
//! later run's epoch is higher even if nobody ever claims); the backup
//! learns it from the log stream. The test-and-set is per epoch: two sides
//! of one epoch cannot both win it, and once a later epoch has begun, a
//! stale side of an earlier one can no longer win at all.
//!
//! Claims are made by a [`Claimant`]: a side's name, for people, and a
//! random token, for the arbiter — two processes started with the same
//! name never both win, and a side that retries after a lost answer knows
//! its own claim. Only an epoch that was begun can be claimed (a backup
//! that follows a forged or stale stream cannot make one up).
//!
//! Backends, chosen by URI ([`parse`]):
//! * `file:PATH` — `PATH.epoch-N` made visible, whole, by `link(2)` in a
//!   directory on shared storage ([`file`]);
//! * `etcd://HOST:PORT/KEY` — an etcd transaction on `KEY/epoch/N` through
//!   etcd's v3 JSON gateway ([`etcd`]).
//!
//! The operator's view of all this is `docs/operations.md`.

pub mod etcd;
pub mod file;

use std::path::PathBuf;

pub use etcd::EtcdArbiter;
pub use file::FileArbiter;

/// What the URI grammar is, repeated in every URI error.
pub const URI_FORMS: &str = "expected file:PATH or etcd://HOST:PORT/KEY";

/// Longest side name an arbiter records.
pub const MAX_NAME_LEN: usize = 255;

/// Who claims: a side's name and a token no other process has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    name: String,
    token: String,
}

impl Claimant {
    /// `name` with a fresh random token (128 bits from the kernel).
    pub fn new(name: &str) -> Result<Self, ArbiterError> {
        let mut bytes = [0u8; 16];
        // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if usize::try_from(n).ok() != Some(bytes.len()) {
            return Err(ArbiterError::NoRandomness(std::io::Error::last_os_error()));
        }
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::with_token(name, token)
    }

    /// `name` with a given token (tests; a token is 1–64 hex digits).
    pub fn with_token(name: &str, token: String) -> Result<Self, ArbiterError> {
        check_name(name)?;
        if token.is_empty() || token.len() > 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ArbiterError::BadName {
                name: name.to_string(),
                why: "its token is not 1 to 64 hex digits",
            });
        }
        Ok(Claimant {
            name: name.to_string(),
            token,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// What a backend stores: `NAME TOKEN` (the token has no space).
    pub(crate) fn record(&self) -> String {
        format!("{} {}", self.name, self.token)
    }

    /// Whether `record` (a stored `NAME TOKEN`) is this claimant's.
    pub(crate) fn owns(&self, record: &str) -> bool {
        parse_record(record).is_some_and(|(_, token)| token == self.token)
    }
}

/// The name and token of a stored record, if it is one.
pub(crate) fn parse_record(record: &str) -> Option<(&str, &str)> {
    let (name, token) = record.rsplit_once(' ')?;
    let hex = !token.is_empty() && token.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && !name.is_empty()).then_some((name, token))
}

/// The name in a stored record, for messages (the whole text if it is not
/// a record).
pub(crate) fn record_name(record: &str) -> String {
    parse_record(record).map_or_else(|| record.to_string(), |(n, _)| n.to_string())
}

/// The answer to a test-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This side won the epoch: it may serve (go live, or continue alone).
    Won,
    /// Someone else won (or a later epoch has begun): this side must stop.
    /// `winner` names who serves instead.
    Lost { winner: String },
}

/// One error type for every backend. Any error means "this side did not
/// win": it must not go live; the caller decides whether to retry within
/// its own deadline.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("bad arbiter URI {uri:?}: {why} ({URI_FORMS})")]
    BadUri { uri: String, why: String },
    #[error("bad side name {name:?} for the arbiter: {why}")]
    BadName { name: String, why: &'static str },
    #[error("epoch 0 is not an epoch (runs start at 1: use begin_next)")]
    EpochZero,
    #[error(
        "the arbiter directory {} does not exist: it must be a directory on storage both hosts share (mount it, or create it there)",
        dir.display()
    )]
    NoDirectory { dir: PathBuf },
    #[error("arbiter path {}: {why}", path.display())]
    BadPath { path: PathBuf, why: &'static str },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("epoch {epoch} cannot begin: epoch {latest} has already begun")]
    Stale { epoch: u64, latest: u64 },
    #[error("epoch {epoch} was already begun by {by}")]
    EpochTaken { epoch: u64, by: String },
    #[error(
        "epoch {epoch} was never begun: no primary started it, so nobody can claim it (a stale or forged stream?)"
    )]
    NotBegun { epoch: u64 },
    #[error("the arbiter's latest epoch is the largest there is: no run can begin")]
    EpochsExhausted,
    #[error("no randomness for a claim token")]
    NoRandomness(#[source] std::io::Error),
    #[error("cannot reach the arbiter at {endpoint}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: lockstep_status::http::HttpError,
    },
    #[error("the arbiter at {endpoint} refused the request: HTTP {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from the arbiter at {endpoint}: {why}")]
    Protocol { endpoint: String, why: String },
}

/// An atomic per-epoch test-and-set on storage both hosts of a pair reach.
///
/// A claim that finds its own token already recorded for the epoch counts
/// as won, which makes a retry after a lost reply (a timeout) safe; the
/// same name with another token is another side.
pub trait Arbiter: Send + Sync {
    /// For logs and errors: the URI.
    fn describe(&self) -> String;

    /// The highest epoch anyone has begun or claimed; 0 if none.
    fn latest_epoch(&self) -> Result<u64, ArbiterError>;

    /// Registers that the run of `epoch` has started, by `who`. Refused with
    /// [`ArbiterError::Stale`] if a later epoch has begun, and with
    /// [`ArbiterError::EpochTaken`] if another side began this one;
    /// repeating one's own `begin` is fine.
    fn begin(&self, epoch: u64, who: &Claimant) -> Result<(), ArbiterError>;

    /// The test-and-set: the first claim of `epoch` wins, every later one
    /// learns the winner. A claim for an epoch older than the latest begun
    /// one is lost (unless this very side had already won it); one for an
    /// epoch never begun is refused ([`ArbiterError::NotBegun`]).
    fn claim(&self, epoch: u64, who: &Claimant) -> Result<Claim, ArbiterError>;

    /// Who began run `epoch` (the name in its record), if anyone did: a
    /// backup follows only a primary whose epoch was begun.
    fn begun_by(&self, epoch: u64) -> Result<Option<String>, ArbiterError>;

    /// Begins a fresh epoch (`latest_epoch() + 1`, or the next free one if
    /// another run takes it at the same moment) and returns it.
    fn begin_next(&self, who: &Claimant) -> Result<u64, ArbiterError> {
        // Each lost race means another run began an epoch meanwhile; a
        // bounded number of them keeps a confused setup from spinning.
        const ATTEMPTS: usize = 64;
        let mut attempt = 1;
        loop {
            let epoch = self
                .latest_epoch()?
                .checked_add(1)
                .ok_or(ArbiterError::EpochsExhausted)?;
            match self.begin(epoch, who) {
                Ok(()) => return Ok(epoch),
                Err(ArbiterError::Stale { .. } | ArbiterError::EpochTaken { .. })
                    if attempt < ATTEMPTS =>
                {
                    attempt += 1
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Opens the arbiter a URI names: `file:PATH` or `etcd://HOST:PORT/KEY`.
/// Nothing is contacted yet.
pub fn parse(uri: &str) -> Result<Box<dyn Arbiter>, ArbiterError> {
    let bad = |why: &str| ArbiterError::BadUri {
        uri: uri.to_string(),
        why: why.to_string(),
    };
    if let Some(rest) = uri.strip_prefix("file:") {
        // `file:///abs/path` is the usual URL spelling of `file:/abs/path`;
        // `file://host/path` names a remote host, which this cannot honour.
        let path = match rest.strip_prefix("//") {
            Some(p) if p.starts_with('/') => p,
            Some(_) => return Err(bad("file://HOST/... is not supported; use file:/PATH")),
            None => rest,
        };
        return Ok(Box::new(
            FileArbiter::new(uri, path).map_err(|why| bad(&why))?,
        ));
    }
    if let Some(rest) = uri.strip_prefix("etcd://") {
        return Ok(Box::new(
            EtcdArbiter::new(uri, rest).map_err(|why| bad(&why))?,
        ));
    }
    Err(bad("unknown scheme"))
}

/// Checks a side name before it is recorded.
pub(crate) fn check_name(who: &str) -> Result<(), ArbiterError> {
    let bad = |why| ArbiterError::BadName {
        name: who.to_string(),
        why,
    };
    if who.is_empty() {
        return Err(bad("it is empty"));
    }
    if who.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 255 bytes"));
    }
    // The file backend ends a complete record with a newline.
    if who.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    Ok(())
}

pub(crate) fn check_epoch(epoch: u64) -> Result<(), ArbiterError> {
    if epoch == 0 {
        Err(ArbiterError::EpochZero)
    } else {
        Ok(())
    }
}

/// The `winner` a stale claim reports: the side that began the later run.
pub(crate) fn superseded(by: &str, latest: u64) -> String {
    format!("{by} (epoch {latest} has begun since)")
}
