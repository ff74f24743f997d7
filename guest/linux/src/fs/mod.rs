//! The personality's file system on the virtio disk: small, durable,
//! deterministic (`docs/linux-personality.md`).
//!
//! Files live in a block cache; `sync` (fsync, fdatasync) writes every
//! dirty block first and then, if any inode, block map or directory
//! changed, the whole metadata to the other of two slots ([`layout`]). The
//! disk is write-through (a completed write is durable), so waiting for the
//! data writes before writing the metadata orders them: a crash leaves
//! either the old commit with its blocks intact or the new one with all of
//! its data. An append followed by `fdatasync` is therefore durable with
//! its new size before the call returns, which is what redis's
//! `appendfsync always` relies on before it replies.
//!
//! The caller owns the I/O (a [`BlockDev`] that blocks until done) and the
//! clock (`now_ns` arguments): this crate stays pure and testable.

mod data;
pub mod layout;
pub mod meta;
mod names;
mod space;
#[cfg(test)]
mod tests;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use layout::{BLOCK, FIRST_DATA, MIN_BLOCKS, Super};
use meta::Inode;
pub use meta::{Kind, NAME_MAX, ROOT};
use space::Space;

/// Most data blocks one commit writes together with its metadata (more go
/// first, in a round of their own).
const MAX_VERIFY: usize = 4096;

/// Data blocks of a commit's round and their CRC-32Cs.
type Verify = Vec<(u32, u32)>;

/// A payload's verification list (block, CRC) and the inode table after it.
fn split_verify(payload: &[u8]) -> Option<(Verify, &[u8])> {
    let n = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let list = payload.get(4..4 + n.checked_mul(8)?)?;
    let verify = list
        .chunks_exact(8)
        .map(|c| {
            let w = |o: usize| u32::from_le_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
            (w(0), w(4))
        })
        .collect();
    Some((verify, &payload[4 + n * 8..]))
}

/// A block device in units of [`BLOCK`] bytes, relative to the file
/// system's start. Both calls return when the I/O is complete (writes:
/// durable).
pub trait BlockDev {
    fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), IoError>;
    fn write(&mut self, writes: &[(u64, &[u8])]) -> Result<(), IoError>;
}

/// The device failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError;

/// What a file-system call can fail with (the personality maps these to
/// errno values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    NoSpace,
    NameTooLong,
    Invalid,
    TooBig,
    Io,
    /// Mount found neither a blank disk nor a valid commit.
    Damaged,
}

impl From<IoError> for FsError {
    fn from(_: IoError) -> FsError {
        FsError::Io
    }
}

/// What `stat` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub ino: u32,
    pub kind: Kind,
    pub mode: u16,
    pub size: u64,
    pub mtime_ns: u64,
    pub nlink: u32,
    /// 512-byte sectors allocated.
    pub sectors: u64,
}

/// How mount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub formatted: bool,
    pub inodes: usize,
    pub free_blocks: u64,
    pub seq: u64,
}

/// Counters for the report at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub syncs: u64,
    pub commits: u64,
    pub blocks_written: u64,
    pub blocks_read: u64,
}

/// A mounted file system.
pub struct Fs {
    blocks: u64,
    inodes: BTreeMap<u32, Inode>,
    /// Parent of each directory (in memory; rebuilt at mount).
    parents: BTreeMap<u32, u32>,
    next_ino: u32,
    seq: u64,
    /// Slot holding the newest commit.
    slot: usize,
    space: Space,
    meta_dirty: bool,
    cache: BTreeMap<(u32, u32), data::Cached>,
    order: VecDeque<(u32, u32)>,
    cache_budget: usize,
    /// Data blocks whose CRC the newest commit carries.
    verified: BTreeSet<u32>,
    pub stats: FsStats,
}

impl Fs {
    /// Mounts the file system in `blocks` blocks of `dev`, formatting a
    /// disk that holds none; keeps at most `cache_bytes` of file data cached.
    pub fn mount(
        dev: &mut impl BlockDev,
        blocks: u64,
        cache_bytes: usize,
        now_ns: u64,
    ) -> Result<(Fs, Mounted), FsError> {
        let blocks = blocks.min(u64::from(u32::MAX));
        if blocks < MIN_BLOCKS {
            return Err(FsError::NoSpace);
        }
        let mut b0 = vec![0u8; BLOCK];
        dev.read(0, &mut b0)?;
        let mut fs = Fs {
            blocks,
            inodes: BTreeMap::new(),
            parents: BTreeMap::new(),
            next_ino: ROOT + 1,
            seq: 0,
            slot: 1,
            space: Space::new(FIRST_DATA, blocks),
            meta_dirty: true,
            cache: BTreeMap::new(),
            order: VecDeque::new(),
            cache_budget: (cache_bytes / BLOCK).max(16),
            verified: BTreeSet::new(),
            stats: FsStats::default(),
        };
        let formatted = match Super::decode(&b0) {
            None => {
                let mut root = Inode::new(Kind::Dir, 0o755, now_ns);
                root.links = 1;
                fs.inodes.insert(ROOT, root);
                fs.commit(dev, &[], &[])?;
                dev.write(&[(0, &Super { blocks }.encode())])?;
                true
            }
            Some(s) if s.blocks > blocks => return Err(FsError::Damaged),
            Some(s) => {
                fs.blocks = s.blocks;
                fs.space = Space::new(FIRST_DATA, s.blocks);
                fs.load_commit(dev)?;
                false
            }
        };
        let m = Mounted {
            formatted,
            inodes: fs.inodes.len(),
            free_blocks: fs.space.free(),
            seq: fs.seq,
        };
        Ok((fs, m))
    }

    /// Reads both slots and takes the newest valid commit.
    fn load_commit(&mut self, dev: &mut impl BlockDev) -> Result<(), FsError> {
        let mut valid: Vec<(u64, usize, Vec<u8>)> = Vec::new();
        for slot in 0..2 {
            let start = layout::slot_start(slot);
            let mut first = vec![0u8; BLOCK];
            dev.read(start, &mut first)?;
            let Some((seq, len)) = layout::meta_header(&first) else {
                continue;
            };
            let mut rec = vec![0u8; layout::meta_blocks_for(len) * BLOCK];
            dev.read(start, &mut rec)?;
            if layout::meta_payload(&rec).is_some() {
                valid.push((seq, slot, rec));
            }
        }
        valid.sort_by_key(|v| core::cmp::Reverse(v.0));
        // The newest commit counts only if the data written with it is all
        // there; the one before needs no check (its round was complete
        // before the newer one began).
        let mut chosen = None;
        for (i, (seq, slot, rec)) in valid.iter().enumerate() {
            let payload = layout::meta_payload(rec).ok_or(FsError::Damaged)?;
            let (verify, rest) = split_verify(payload).ok_or(FsError::Damaged)?;
            if i == 0 && !self.verify(dev, &verify)? {
                continue;
            }
            if i == 0 {
                self.verified = verify.iter().map(|v| v.0).collect();
            }
            chosen = Some((*seq, *slot, rest));
            break;
        }
        let (seq, slot, payload) = chosen.ok_or(FsError::Damaged)?;
        let (next_ino, mut inodes) =
            meta::decode(payload, FIRST_DATA, self.blocks).ok_or(FsError::Damaged)?;
        for i in inodes.values() {
            for &b in i.blocks.iter().filter(|b| **b != 0) {
                if !self.space.claim(b) {
                    return Err(FsError::Damaged);
                }
            }
        }
        // Entries naming missing inodes are dropped; links and parents are
        // counted from what remains.
        let valid: BTreeSet<u32> = inodes.keys().copied().collect();
        let mut parents = BTreeMap::new();
        let mut links: BTreeMap<u32, u32> = BTreeMap::new();
        links.insert(ROOT, 1);
        for (ino, i) in inodes.iter_mut() {
            i.entries.retain(|_, c| valid.contains(c));
            for child in i.entries.values() {
                *links.entry(*child).or_default() += 1;
                parents.insert(*child, *ino);
            }
        }
        for (ino, i) in inodes.iter_mut() {
            i.links = links.get(ino).copied().unwrap_or(0);
        }
        parents.retain(|c, _| inodes.get(c).is_some_and(|i| i.kind == Kind::Dir));
        self.inodes = inodes;
        self.parents = parents;
        self.next_ino = next_ino;
        self.seq = seq;
        self.slot = slot;
        self.meta_dirty = false;
        Ok(())
    }

    /// Writes the metadata to the other slot, together with `runs` of data
    /// whose blocks `verify` names with their CRCs; the blocks it no longer
    /// names become free once all of it is durable.
    fn commit(
        &mut self,
        dev: &mut impl BlockDev,
        runs: &[data::Run],
        verify: &[(u32, u32)],
    ) -> Result<(), FsError> {
        let mut payload = Vec::with_capacity(4 + verify.len() * 8);
        payload.extend_from_slice(&(verify.len() as u32).to_le_bytes());
        for (b, crc) in verify {
            payload.extend_from_slice(&b.to_le_bytes());
            payload.extend_from_slice(&crc.to_le_bytes());
        }
        payload.extend_from_slice(&meta::encode(self.next_ino, &self.inodes));
        let seq = self.seq + 1;
        let rec = layout::encode_meta(seq, &payload).ok_or(FsError::NoSpace)?;
        let slot = 1 - self.slot;
        let mut writes: Vec<(u64, &[u8])> = vec![(layout::slot_start(slot), &rec)];
        writes.extend(runs.iter().map(|(b, d)| (*b, d.as_slice())));
        dev.write(&writes)?;
        self.stats.commits += 1;
        self.stats.blocks_written += (rec.len() / BLOCK) as u64;
        self.seq = seq;
        self.slot = slot;
        self.meta_dirty = false;
        self.space.committed();
        self.verified = verify.iter().map(|v| v.0).collect();
        Ok(())
    }

    /// Whether every (block, CRC) of a commit's round reads back.
    fn verify(&self, dev: &mut impl BlockDev, verify: &[(u32, u32)]) -> Result<bool, FsError> {
        let mut buf = vec![0u8; BLOCK];
        for (b, crc) in verify {
            if u64::from(*b) >= self.blocks {
                return Ok(false);
            }
            dev.read(u64::from(*b), &mut buf)?;
            if lockstep_guest_services::crc32c::crc32c(&buf) != *crc {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn inode(&self, ino: u32) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: u32) -> Result<&Inode, FsError> {
        let i = self.inode(ino)?;
        if i.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(i)
    }

    /// Free data bytes (for `statfs`).
    pub fn free_bytes(&self) -> u64 {
        self.space.free() * BLOCK as u64
    }

    /// Total data bytes (for `statfs`).
    pub fn total_bytes(&self) -> u64 {
        self.blocks.saturating_sub(FIRST_DATA) * BLOCK as u64
    }
}
