//! `file:PATH`: the test-and-set is the creation of `PATH.epoch-N` with
//! `O_CREAT|O_EXCL` in a directory on storage both hosts share (the
//! default arbiter). Exclusive creation is atomic across processes and
//! hosts on local file systems and on NFSv3 or later, so exactly one
//! claimant of an epoch gets the file; everyone else gets `EEXIST` and reads
//! the winner's name from it. `PATH.begun-N` records that run N started.
//!
//! A record is the side's name and a newline, written and fsynced after the
//! create (and the directory fsynced, so the create itself survives a
//! crash of the storage). A reader that finds no newline yet is looking at
//! a winner between its create and its write, and waits briefly.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Arbiter, ArbiterError, Claim, check_epoch, check_name, superseded};

/// How long a reader waits for a record that was created but not written
/// yet. The writer only has a write and an fsync left to do; on NFS the
/// data becomes visible to other hosts at that fsync.
const RECORD_WAIT: Duration = Duration::from_secs(5);
const RECORD_POLL: Duration = Duration::from_millis(5);
/// A record is a name (at most 255 bytes) and a newline; anything longer
/// was not written by lockstep.
const RECORD_MAX: u64 = 4096;

const CLAIM_INFIX: &str = ".epoch-";
const BEGUN_INFIX: &str = ".begun-";

pub struct FileArbiter {
    uri: String,
    /// `PATH` of the URI: records are `PATH.epoch-N` and `PATH.begun-N`.
    path: PathBuf,
    dir: PathBuf,
    base: String,
    /// Records this process created whose write or fsync failed: a retry
    /// finishes them instead of reading them as someone else's.
    unfinished: Mutex<HashSet<PathBuf>>,
}

/// What a record file holds.
enum Record {
    Absent,
    Named(String),
    /// Created but still empty (or half written) after [`RECORD_WAIT`]: its
    /// creator died between create and write, or its storage stalls.
    Unwritten,
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
            unfinished: Mutex::new(HashSet::new()),
        })
    }

    /// The file whose exclusive creation wins `epoch`.
    pub fn claim_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{}{CLAIM_INFIX}{epoch}", self.base))
    }

    /// The file that records who began `epoch`.
    pub fn begun_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{}{BEGUN_INFIX}{epoch}", self.base))
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

    /// Creates `path` holding `who` unless it exists. True if this call (or
    /// an earlier failed call of this process) created it and the record is
    /// now durable.
    fn create_record(&self, path: &Path, who: &str) -> Result<bool, ArbiterError> {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(file) => {
                self.remember_unfinished(path, true);
                self.finish_record(file, path, who)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if !self.is_unfinished(path) {
                    return Ok(false);
                }
                // Ours from a call whose write or fsync failed: finish it.
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("reopen own arbiter record", path))?;
                self.finish_record(file, path, who)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ArbiterError::NoDirectory {
                dir: self.dir.clone(),
            }),
            Err(e) => Err(io_err("create arbiter record", path)(e)),
        }
    }

    fn finish_record(&self, file: File, path: &Path, who: &str) -> Result<(), ArbiterError> {
        let line = format!("{who}\n");
        file.write_all_at(line.as_bytes(), 0)
            .map_err(io_err("write arbiter record", path))?;
        file.sync_all()
            .map_err(io_err("fsync arbiter record", path))?;
        // The create is a directory entry: it is durable once the directory
        // is fsynced, not the file.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync arbiter directory", &self.dir))?;
        self.remember_unfinished(path, false);
        Ok(())
    }

    fn remember_unfinished(&self, path: &Path, unfinished: bool) {
        // A poisoned lock only means another thread panicked while holding
        // it; the set itself is still consistent.
        let mut set = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        if unfinished {
            set.insert(path.to_path_buf());
        } else {
            set.remove(path);
        }
    }

    fn is_unfinished(&self, path: &Path) -> bool {
        let set = self.unfinished.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(path)
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
            if let Some(name) = text.strip_suffix('\n') {
                return Ok(Record::Named(name.to_string()));
            }
            if Instant::now() >= deadline {
                return Ok(Record::Unwritten);
            }
            std::thread::sleep(RECORD_POLL);
        }
    }

    /// Who began or claimed `epoch`, for a message.
    fn holder_of(&self, epoch: u64) -> String {
        for path in [self.begun_path(epoch), self.claim_path(epoch)] {
            if let Ok(Record::Named(name)) = self.read_record(&path) {
                return name;
            }
        }
        "another side".to_string()
    }

    /// The epoch a record's file name carries, if it is one of ours.
    fn epoch_of(&self, file_name: &str) -> Option<u64> {
        let rest = file_name.strip_prefix(self.base.as_str())?;
        let digits = rest
            .strip_prefix(CLAIM_INFIX)
            .or_else(|| rest.strip_prefix(BEGUN_INFIX))?;
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

    fn begin(&self, epoch: u64, who: &str) -> Result<(), ArbiterError> {
        check_epoch(epoch)?;
        check_name(who)?;
        self.check_place()?;
        let path = self.begun_path(epoch);
        if self.is_unfinished(&path) {
            // Ours, from a call whose write or fsync failed: finish it.
            self.create_record(&path, who)?;
            return Ok(());
        }
        match self.read_record(&path)? {
            Record::Named(name) if name == who => return Ok(()),
            Record::Named(by) => return Err(ArbiterError::EpochTaken { epoch, by }),
            Record::Unwritten => {
                return Err(ArbiterError::EpochTaken {
                    epoch,
                    by: "an unknown side".into(),
                });
            }
            Record::Absent => {}
        }
        let latest = self.latest_epoch()?;
        if latest > epoch {
            return Err(ArbiterError::Stale { epoch, latest });
        }
        if self.create_record(&path, who)? {
            return Ok(());
        }
        match self.read_record(&path)? {
            Record::Named(name) if name == who => Ok(()),
            Record::Named(by) => Err(ArbiterError::EpochTaken { epoch, by }),
            Record::Unwritten | Record::Absent => Err(ArbiterError::EpochTaken {
                epoch,
                by: "an unknown side".into(),
            }),
        }
    }

    fn claim(&self, epoch: u64, who: &str) -> Result<Claim, ArbiterError> {
        check_epoch(epoch)?;
        check_name(who)?;
        self.check_place()?;
        let path = self.claim_path(epoch);
        let decided = |record: Record| match record {
            Record::Named(name) if name == who => Some(Claim::Won),
            Record::Named(winner) => Some(Claim::Lost { winner }),
            Record::Unwritten => Some(Claim::Lost {
                winner: format!("an unknown side (its claim {} is empty)", path.display()),
            }),
            Record::Absent => None,
        };
        if self.is_unfinished(&path) {
            // This side created the claim, but its write or fsync failed:
            // the create won; make the record durable before saying so.
            self.create_record(&path, who)?;
            return Ok(Claim::Won);
        }
        // Already decided: a loser asking again, or this side retrying
        // after an error.
        if let Some(c) = decided(self.read_record(&path)?) {
            return Ok(c);
        }
        // A later run has begun: this epoch's sides are stale. (Between
        // this check and the create another run may begin; then this claim
        // simply happened first — the create is what linearizes it.)
        let latest = self.latest_epoch()?;
        if latest > epoch {
            return Ok(Claim::Lost {
                winner: superseded(&self.holder_of(latest), latest),
            });
        }
        if self.create_record(&path, who)? {
            return Ok(Claim::Won);
        }
        Ok(
            decided(self.read_record(&path)?).unwrap_or_else(|| Claim::Lost {
                winner: format!(
                    "an unknown side (its claim {} vanished: was the arbiter directory cleaned?)",
                    path.display()
                ),
            }),
        )
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ArbiterError {
    let path = path.to_path_buf();
    move |source| ArbiterError::Io { op, path, source }
}
