//! `file:PATH`: the test-and-set is the appearance of `PATH.epoch-N` in a
//! directory on storage both hosts share (the default arbiter).
//!
//! A record (`NAME TOKEN` and a newline) is written whole into a file of
//! its own, fsynced, and only then made visible under its final name with
//! `link(2)`, which fails with `EEXIST` if the name exists. `link` is
//! atomic across processes and hosts on local file systems and on NFS, so
//! exactly one claimant of an epoch gets the name, and a record is never
//! seen half written: a claimant that crashes before the link leaves only
//! its private file (removed by the next `begin`), one that crashes after
//! it has claimed, whole. `PATH.begun-N` records that run N started, the
//! same way.
//!
//! A record that exists but is not a record (empty or garbled: a crash of
//! an older build between its create and its write, or damage) voids its
//! name after [`RECORD_WAIT`]: the decision moves to the next slot
//! (`PATH.epoch-N.1`, `.2`, …), won by the next `link` — the survivor of a
//! crash still wins, within a bounded time, and every reader agrees on the
//! first slot that holds a record.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    Arbiter, ArbiterError, Claim, Claimant, check_epoch, parse_record, record_name, superseded,
};

/// How long a reader gives a name that holds no record before it voids it.
const RECORD_WAIT: Duration = Duration::from_secs(1);
const RECORD_POLL: Duration = Duration::from_millis(5);
/// A record is a name (at most 255 bytes), a token and a newline; anything
/// longer was not written by lockstep.
const RECORD_MAX: u64 = 4096;
/// Slots per epoch: one more for each void record before it.
const SLOTS: u32 = 8;

const CLAIM_INFIX: &str = ".epoch-";
const BEGUN_INFIX: &str = ".begun-";
const PRIVATE_INFIX: &str = ".writing-";

pub struct FileArbiter {
    uri: String,
    /// `PATH` of the URI: records are `PATH.epoch-N` and `PATH.begun-N`.
    path: PathBuf,
    dir: PathBuf,
    base: String,
}

/// What a record's name holds.
enum Record {
    Absent,
    /// `NAME TOKEN`.
    Named(String),
    /// Not a record, still, after [`RECORD_WAIT`]: void.
    Void,
}

impl FileArbiter {
    /// `path` is the URI's PATH; `uri` is kept for messages. The directory
    /// is not checked here: shared storage may be mounted later.
    pub fn new(uri: &str, path: &str) -> Result<Self, String> {
        if path.is_empty() {
            return Err("the path is empty".into());
        }
        if path.ends_with('/') {
            return Err(format!(
                "PATH names a file prefix, not a directory: e.g. file:{path}arbiter"
            ));
        }
        let path = PathBuf::from(path);
        let base = path
            .file_name()
            .and_then(|b| b.to_str())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                format!(
                    "{} does not end in a UTF-8 file name: e.g. file:/var/lib/lockstep/arbiter",
                    path.display()
                )
            })?
            .to_string();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(FileArbiter {
            uri: uri.to_string(),
            path,
            dir,
            base,
        })
    }

    /// The name whose appearance wins `epoch` (slot 0; the slots after it
    /// only matter when a record before them is void).
    pub fn claim_path(&self, epoch: u64) -> PathBuf {
        self.slot_path(CLAIM_INFIX, epoch, 0)
    }

    /// The name that records who began `epoch`.
    pub fn begun_path(&self, epoch: u64) -> PathBuf {
        self.slot_path(BEGUN_INFIX, epoch, 0)
    }

    fn slot_path(&self, infix: &str, epoch: u64, slot: u32) -> PathBuf {
        match slot {
            0 => self.dir.join(format!("{}{infix}{epoch}", self.base)),
            n => self.dir.join(format!("{}{infix}{epoch}.{n}", self.base)),
        }
    }

    /// The directory must exist (creating it could create a *local*
    /// directory where the shared mount is missing, and then both hosts
    /// would win), and PATH must not be a directory itself.
    fn check_place(&self) -> Result<(), ArbiterError> {
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArbiterError::BadPath {
                    path: self.dir.clone(),
                    why: "not a directory",
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ArbiterError::NoDirectory {
                    dir: self.dir.clone(),
                });
            }
            Err(e) => return Err(io_err("stat arbiter directory", &self.dir)(e)),
        }
        if self.path.is_dir() {
            return Err(ArbiterError::BadPath {
                path: self.path.clone(),
                why: "is a directory; name a file inside it, e.g. file:DIR/arbiter",
            });
        }
        Ok(())
    }

    /// Makes `path` hold `record`, whole, unless it exists: the record is
    /// written and fsynced under a private name, then linked into place
    /// (the test-and-set), and the directory fsynced so the link survives a
    /// crash of the storage. True if this call made it.
    fn link_record(&self, path: &Path, who: &Claimant) -> Result<bool, ArbiterError> {
        let private = self.dir.join(format!(
            "{}{PRIVATE_INFIX}{}-{}",
            self.base,
            who.token(),
            std::process::id()
        ));
        let written = File::create(&private)
            .and_then(|mut f| {
                f.write_all(format!("{}\n", who.record()).as_bytes())?;
                f.sync_all()
            })
            .map_err(io_err("write arbiter record", &private));
        let linked = written.and_then(|()| match std::fs::hard_link(&private, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ArbiterError::NoDirectory {
                dir: self.dir.clone(),
            }),
            Err(e) => Err(io_err("link arbiter record", path)(e)),
        });
        // The private name has done its job either way.
        let _ = std::fs::remove_file(&private);
        let linked = linked?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync arbiter directory", &self.dir))?;
        Ok(linked)
    }

    /// The first record among the slots of `infix`/`epoch` (voids skipped),
    /// and the first free slot if there is none.
    fn decided(&self, infix: &str, epoch: u64) -> Result<Result<String, u32>, ArbiterError> {
        for slot in 0..SLOTS {
            match self.read_record(&self.slot_path(infix, epoch, slot))? {
                Record::Named(r) => return Ok(Ok(r)),
                Record::Absent => return Ok(Err(slot)),
                Record::Void => continue,
            }
        }
        Err(ArbiterError::BadPath {
            path: self.slot_path(infix, epoch, SLOTS - 1),
            why: "every slot of this epoch holds a void record: clean the arbiter directory",
        })
    }

    /// The test-and-set on the slots of `infix`/`epoch`: the record that
    /// decides it, this side's if its link won.
    fn test_and_set(
        &self,
        infix: &str,
        epoch: u64,
        who: &Claimant,
    ) -> Result<String, ArbiterError> {
        loop {
            let slot = match self.decided(infix, epoch)? {
                Ok(record) => return Ok(record),
                Err(free) => free,
            };
            if self.link_record(&self.slot_path(infix, epoch, slot), who)? {
                return Ok(who.record());
            }
            // Someone linked this slot first: read it (a valid record
            // decides; the loop is bounded by the slots).
        }
    }

    /// Reads a record, waiting up to [`RECORD_WAIT`] for one that is
    /// created but not yet written.
    fn read_record(&self, path: &Path) -> Result<Record, ArbiterError> {
        let deadline = Instant::now() + RECORD_WAIT;
        loop {
            // Reopened every time: on NFS, open revalidates the cached data
            // (close-to-open consistency).
            let mut text = String::new();
            match File::open(path) {
                Ok(f) => {
                    f.take(RECORD_MAX)
                        .read_to_string(&mut text)
                        .map_err(io_err("read arbiter record", path))?;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Record::Absent),
                Err(e) => return Err(io_err("open arbiter record", path)(e)),
            }
            if let Some(record) = text
                .strip_suffix('\n')
                .filter(|r| parse_record(r).is_some())
            {
                return Ok(Record::Named(record.to_string()));
            }
            if Instant::now() >= deadline {
                return Ok(Record::Void);
            }
            std::thread::sleep(RECORD_POLL);
        }
    }

    /// Who began or claimed `epoch`, for a message.
    fn holder_of(&self, epoch: u64) -> String {
        for infix in [BEGUN_INFIX, CLAIM_INFIX] {
            if let Ok(Ok(record)) = self.decided(infix, epoch) {
                return record_name(&record);
            }
        }
        "another side".to_string()
    }

    /// Private files left by claimants that crashed before their link.
    fn remove_private_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}{PRIVATE_INFIX}", self.base);
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > 10 * RECORD_WAIT);
            if old
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The epoch a record's file name carries, if it is one of ours.
    fn epoch_of(&self, file_name: &str) -> Option<u64> {
        let rest = file_name.strip_prefix(self.base.as_str())?;
        let rest = rest
            .strip_prefix(CLAIM_INFIX)
            .or_else(|| rest.strip_prefix(BEGUN_INFIX))?;
        // `N` or `N.SLOT`.
        let digits = rest.split('.').next()?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

impl Arbiter for FileArbiter {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn latest_epoch(&self) -> Result<u64, ArbiterError> {
        self.check_place()?;
        let entries =
            std::fs::read_dir(&self.dir).map_err(io_err("list arbiter directory", &self.dir))?;
        let mut latest = 0;
        for entry in entries {
            let entry = entry.map_err(io_err("list arbiter directory", &self.dir))?;
            if let Some(epoch) = entry.file_name().to_str().and_then(|n| self.epoch_of(n)) {
                latest = latest.max(epoch);
            }
        }
        Ok(latest)
    }

    fn begin(&self, epoch: u64, who: &Claimant) -> Result<(), ArbiterError> {
        check_epoch(epoch)?;
        self.check_place()?;
        self.remove_private_leftovers();
        let taken = |record: String| {
            if who.owns(&record) {
                Ok(())
            } else {
                Err(ArbiterError::EpochTaken {
                    epoch,
                    by: record_name(&record),
                })
            }
        };
        if let Ok(record) = self.decided(BEGUN_INFIX, epoch)? {
            return taken(record);
        }
        let latest = self.latest_epoch()?;
        if latest > epoch {
            return Err(ArbiterError::Stale { epoch, latest });
        }
        taken(self.test_and_set(BEGUN_INFIX, epoch, who)?)
    }

    fn begun_by(&self, epoch: u64) -> Result<Option<String>, ArbiterError> {
        check_epoch(epoch)?;
        self.check_place()?;
        Ok(self
            .decided(BEGUN_INFIX, epoch)?
            .ok()
            .map(|r| record_name(&r)))
    }

    fn claim(&self, epoch: u64, who: &Claimant) -> Result<Claim, ArbiterError> {
        check_epoch(epoch)?;
        self.check_place()?;
        let decided = |record: String| {
            if who.owns(&record) {
                Claim::Won
            } else {
                Claim::Lost {
                    winner: record_name(&record),
                }
            }
        };
        // Already decided: a loser asking again, or this side retrying
        // after an error.
        if let Ok(record) = self.decided(CLAIM_INFIX, epoch)? {
            return Ok(decided(record));
        }
        if self.decided(BEGUN_INFIX, epoch)?.is_err() {
            return Err(ArbiterError::NotBegun { epoch });
        }
        // A later run has begun: this epoch's sides are stale. (Between
        // this check and the link another run may begin; then this claim
        // simply happened first — the link is what linearizes it.)
        let latest = self.latest_epoch()?;
        if latest > epoch {
            return Ok(Claim::Lost {
                winner: superseded(&self.holder_of(latest), latest),
            });
        }
        Ok(decided(self.test_and_set(CLAIM_INFIX, epoch, who)?))
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArbiterError {
    let path = path.to_path_buf();
    move |source| ArbiterError::Io { op, path, source }
}
