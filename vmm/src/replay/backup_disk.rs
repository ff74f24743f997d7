//! The paper's alternative to logging read data: the replaying side executes
//! disk reads itself, on the shared image (an FT backup) or on a copy of the
//! disk as it was when the recording began (`lockstep replay
//! --backup-reads`). Reads run when the guest issues them, in guest order
//! with the writes, as the primary's IO serialization ordered them; a read
//! whose data does not hash to what the primary read is retried until it
//! does (on a shared disk, the primary's earlier write may still be on its
//! way), for a bounded time.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use blkio::{AlignedBuf, Completion, SECTOR_SIZE};

/// How long a read is retried before the replay gives up.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// Why a backup-executed read failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupReadError {
    #[error("backup {what} of sector {sector} (+{len} bytes) failed")]
    Io {
        what: &'static str,
        sector: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "backup read of sector {sector} (+{len} bytes) never returned what the primary read ({tries} tries in {RETRY_FOR:?})"
    )]
    NeverMatched { sector: u64, len: usize, tries: u64 },
}

/// The disk a replay reads (and, on a private copy, writes) itself.
pub struct BackupDisk {
    image: File,
    /// Execute the guest's writes too (a private copy; never on a disk the
    /// primary shares).
    write_through: bool,
    reads: HashMap<u16, (u64, AlignedBuf)>,
    pub reads_done: u64,
    pub retries: u64,
}

impl BackupDisk {
    pub fn new(image: File, write_through: bool) -> Self {
        BackupDisk {
            image,
            write_through,
            reads: HashMap::new(),
            reads_done: 0,
            retries: 0,
        }
    }

    fn read_at(&self, sector: u64, buf: &mut AlignedBuf) -> Result<(), BackupReadError> {
        self.image
            .read_exact_at(buf.as_mut_slice(), sector * SECTOR_SIZE)
            .map_err(|source| BackupReadError::Io {
                what: "read",
                sector,
                len: buf.len(),
                source,
            })
    }

    /// The guest issued a read: execute it now, keep the data for its
    /// completion.
    pub fn read_issued(&mut self, id: u16, sector: u64, len: u32) -> Result<(), BackupReadError> {
        let mut buf = AlignedBuf::zeroed(len as usize);
        self.read_at(sector, &mut buf)?;
        self.reads_done += 1;
        self.reads.insert(id, (sector, buf));
        Ok(())
    }

    /// The guest issued a write.
    pub fn write_issued(&mut self, sector: u64, data: &[u8]) -> Result<(), BackupReadError> {
        if !self.write_through {
            return Ok(());
        }
        self.image
            .write_all_at(data, sector * SECTOR_SIZE)
            .map_err(|source| BackupReadError::Io {
                what: "write",
                sector,
                len: data.len(),
                source,
            })
    }

    /// The primary's read `id` completed with data hashing to `want`: the
    /// completion with our data, re-read until it matches.
    pub fn complete_read(
        &mut self,
        id: u16,
        want: u64,
    ) -> Result<Option<Completion>, BackupReadError> {
        let Some((sector, mut buf)) = self.reads.remove(&id) else {
            return Ok(None);
        };
        let deadline = Instant::now() + RETRY_FOR;
        let mut tries = 1;
        while logchan::content_hash(buf.as_slice()) != want {
            if Instant::now() > deadline {
                return Err(BackupReadError::NeverMatched {
                    sector,
                    len: buf.len(),
                    tries,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
            self.retries += 1;
            tries += 1;
            self.read_at(sector, &mut buf)?;
        }
        Ok(Some(Completion::read(id, buf)))
    }

    /// A read that failed on the primary: forget ours.
    pub fn forget(&mut self, id: u16) {
        self.reads.remove(&id);
    }
}
