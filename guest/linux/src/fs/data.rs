//! File contents: the block cache, reads, writes, truncation and `sync`.
//!
//! Disk blocks are allocated when a block is first written (so a full disk
//! fails the `write`, not a later `fsync`), next to the file's previous
//! block so files stay contiguous. Bytes past a file's size in its last
//! block are always zero, in the cache and on disk, so growing a file
//! shows zeros.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use lockstep_guest_services::crc32c::crc32c;

use super::layout::BLOCK;
use super::meta::{Kind, MAX_FILE_BLOCKS};
use super::{BlockDev, Fs, FsError};

/// Consecutive disk blocks to write: the first block and the bytes.
pub(super) type Run = (u64, Vec<u8>);

/// Blocks read at once when a read misses the cache.
const READ_AHEAD: usize = 32;

/// One cached block of a file.
pub(super) struct Cached {
    data: Box<[u8]>,
    dirty: bool,
}

impl Fs {
    fn file(&self, ino: u32) -> Result<&super::Inode, FsError> {
        let i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        Ok(i)
    }

    /// The size of file `ino`.
    pub fn size(&self, ino: u32) -> Result<u64, FsError> {
        Ok(self.file(ino)?.size)
    }

    fn insert(&mut self, key: (u32, u32), data: Box<[u8]>, dirty: bool) {
        if self.cache.insert(key, Cached { data, dirty }).is_none() {
            self.order.push_back(key);
        }
    }

    /// Loads the run of uncached, mapped blocks starting at `fb`.
    fn load_run(&mut self, dev: &mut impl BlockDev, ino: u32, fb: u32) -> Result<(), FsError> {
        let i = self.file(ino)?;
        let first = i.blocks.get(fb as usize).copied().unwrap_or(0);
        if first == 0 {
            return Ok(());
        }
        let mut n = 1;
        while n < READ_AHEAD
            && i.blocks.get(fb as usize + n).copied() == Some(first + n as u32)
            && !self.cache.contains_key(&(ino, fb + n as u32))
        {
            n += 1;
        }
        let mut buf = vec![0u8; n * BLOCK];
        dev.read(u64::from(first), &mut buf)?;
        self.stats.blocks_read += n as u64;
        for (k, chunk) in buf.chunks_exact(BLOCK).enumerate() {
            self.insert((ino, fb + k as u32), chunk.into(), false);
        }
        Ok(())
    }

    /// Reads from `off`; returns the bytes read (0 at or past the end).
    pub fn read(
        &mut self,
        dev: &mut impl BlockDev,
        ino: u32,
        off: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        let size = self.file(ino)?.size;
        if off >= size {
            return Ok(0);
        }
        let n = buf.len().min((size - off) as usize);
        let mut done = 0;
        while done < n {
            let pos = off + done as u64;
            let fb = (pos / BLOCK as u64) as u32;
            let within = (pos % BLOCK as u64) as usize;
            let len = (BLOCK - within).min(n - done);
            if !self.cache.contains_key(&(ino, fb)) {
                self.load_run(dev, ino, fb)?;
            }
            let out = &mut buf[done..done + len];
            match self.cache.get(&(ino, fb)) {
                Some(c) => out.copy_from_slice(&c.data[within..within + len]),
                None => out.fill(0),
            }
            done += len;
        }
        self.evict(dev)?;
        Ok(n)
    }

    /// The cached block `fb` of `ino`, loaded (`load`) or zero, with a disk
    /// block allocated for it.
    fn block_for_write(
        &mut self,
        dev: &mut impl BlockDev,
        ino: u32,
        fb: u32,
        load: bool,
    ) -> Result<&mut Cached, FsError> {
        let mapped = self
            .file(ino)?
            .blocks
            .get(fb as usize)
            .copied()
            .unwrap_or(0);
        if !self.cache.contains_key(&(ino, fb)) {
            if load && mapped != 0 {
                self.load_run(dev, ino, fb)?;
            } else {
                self.insert((ino, fb), vec![0u8; BLOCK].into(), false);
            }
        }
        // A block the newest commit verifies is not overwritten in place
        // (a crash before the next commit would fail that verification and
        // lose the commit): it moves, and the old copy is freed by the next
        // commit, which no longer names it.
        let moving = mapped != 0 && self.verified.contains(&mapped);
        if mapped == 0 || moving {
            let i = self.inodes.get(&ino).ok_or(FsError::NotFound)?;
            let hint = i.blocks[..(fb as usize).min(i.blocks.len())]
                .iter()
                .rev()
                .find(|b| **b != 0)
                .map_or(u64::from(mapped), |b| u64::from(*b) + 1);
            let b = self.space.alloc(hint).ok_or(FsError::NoSpace)?;
            if moving {
                self.verified.remove(&mapped);
                self.space.release_later(mapped);
            }
            let i = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            if i.blocks.len() <= fb as usize {
                i.blocks.resize(fb as usize + 1, 0);
            }
            i.blocks[fb as usize] = b;
            self.meta_dirty = true;
        }
        self.cache.get_mut(&(ino, fb)).ok_or(FsError::Io)
    }

    /// Writes `data` at `off`; returns the bytes written (fewer only when
    /// the disk filled up after some were).
    pub fn write(
        &mut self,
        dev: &mut impl BlockDev,
        ino: u32,
        off: u64,
        data: &[u8],
        now_ns: u64,
    ) -> Result<usize, FsError> {
        let size = self.file(ino)?.size;
        let end = off.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        if end > MAX_FILE_BLOCKS * BLOCK as u64 {
            return Err(FsError::TooBig);
        }
        let mut done = 0;
        while done < data.len() {
            let pos = off + done as u64;
            let fb = (pos / BLOCK as u64) as u32;
            let within = (pos % BLOCK as u64) as usize;
            let len = (BLOCK - within).min(data.len() - done);
            let whole = within == 0 && (len == BLOCK || pos + len as u64 >= size);
            let c = match self.block_for_write(dev, ino, fb, !whole) {
                Ok(c) => c,
                Err(FsError::NoSpace) if done > 0 => break,
                Err(e) => return Err(e),
            };
            c.data[within..within + len].copy_from_slice(&data[done..done + len]);
            c.dirty = true;
            done += len;
        }
        let new_end = off + done as u64;
        if let Some(i) = self.inodes.get_mut(&ino) {
            if new_end > i.size {
                i.size = new_end;
                self.meta_dirty = true;
            }
            i.mtime_ns = now_ns;
        }
        self.evict(dev)?;
        Ok(done)
    }

    /// Sets the size of `ino`, freeing blocks past it or leaving a hole.
    pub fn truncate(
        &mut self,
        dev: &mut impl BlockDev,
        ino: u32,
        size: u64,
        now_ns: u64,
    ) -> Result<(), FsError> {
        let old = self.file(ino)?.size;
        if size > MAX_FILE_BLOCKS * BLOCK as u64 {
            return Err(FsError::TooBig);
        }
        let keep = size.div_ceil(BLOCK as u64) as usize;
        if size < old {
            let tail = (size % BLOCK as u64) as usize;
            if tail != 0 {
                let c = self.block_for_write(dev, ino, (size / BLOCK as u64) as u32, true)?;
                c.data[tail..].fill(0);
                c.dirty = true;
            }
            let i = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            let freed: Vec<u32> = i.blocks.drain(keep.min(i.blocks.len())..).collect();
            for b in freed {
                self.space.release_later(b);
            }
            self.drop_cached(ino, keep as u32);
        }
        let i = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        i.blocks.resize(keep, 0);
        i.size = size;
        i.mtime_ns = now_ns;
        self.meta_dirty = true;
        Ok(())
    }

    /// Forgets cached blocks of `ino` from file block `from` on.
    pub(super) fn drop_cached(&mut self, ino: u32, from: u32) {
        let doomed: Vec<(u32, u32)> = self
            .cache
            .range((ino, from)..=(ino, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            self.cache.remove(&k);
        }
    }

    /// Every dirty block, merged into runs of consecutive disk blocks,
    /// and the cache keys they came from.
    fn dirty_runs(&self) -> (Vec<Run>, Vec<(u32, u32)>) {
        let mut runs: Vec<Run> = Vec::new();
        let mut keys = Vec::new();
        for (&(ino, fb), c) in self.cache.iter().filter(|(_, c)| c.dirty) {
            let Some(&b) = self
                .inodes
                .get(&ino)
                .and_then(|i| i.blocks.get(fb as usize))
            else {
                continue;
            };
            if b == 0 {
                continue;
            }
            let b = u64::from(b);
            match runs.last_mut() {
                Some((start, d)) if *start + (d.len() / BLOCK) as u64 == b => {
                    d.extend_from_slice(&c.data)
                }
                _ => runs.push((b, c.data.to_vec())),
            }
            keys.push((ino, fb));
        }
        (runs, keys)
    }

    fn mark_clean(&mut self, keys: Vec<(u32, u32)>) {
        self.stats.blocks_written += keys.len() as u64;
        for k in keys {
            if let Some(c) = self.cache.get_mut(&k) {
                c.dirty = false;
            }
        }
    }

    /// Writes every dirty block and waits for them (no commit).
    fn write_dirty(&mut self, dev: &mut impl BlockDev) -> Result<(), FsError> {
        let (runs, keys) = self.dirty_runs();
        if runs.is_empty() {
            return Ok(());
        }
        let writes: Vec<(u64, &[u8])> = runs.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        dev.write(&writes)?;
        self.mark_clean(keys);
        Ok(())
    }

    /// Makes everything durable (fsync, fdatasync, syncfs, sync). With a
    /// metadata change, data and metadata go in one round of writes: the
    /// metadata carries a CRC of every data block of the round, and mount
    /// takes the newest commit only if they all match (else the previous
    /// one, whose data was durable before this round began).
    pub fn sync(&mut self, dev: &mut impl BlockDev) -> Result<(), FsError> {
        self.stats.syncs += 1;
        if !self.meta_dirty {
            return self.write_dirty(dev);
        }
        let (runs, keys) = self.dirty_runs();
        let verify: Vec<(u32, u32)> = runs
            .iter()
            .flat_map(|(b, d)| {
                d.chunks(BLOCK)
                    .enumerate()
                    .map(move |(k, c)| ((*b + k as u64) as u32, crc32c(c)))
            })
            .collect();
        if verify.len() > super::MAX_VERIFY {
            self.write_dirty(dev)?;
            return self.commit(dev, &[], &[]);
        }
        self.commit(dev, &runs, &verify)?;
        self.mark_clean(keys);
        Ok(())
    }

    /// Whether `sync` would write anything.
    pub fn dirty(&self) -> bool {
        self.meta_dirty || self.cache.values().any(|c| c.dirty)
    }

    /// Keeps the cache within its budget: dirty blocks are written (not
    /// committed) and the oldest clean blocks dropped.
    fn evict(&mut self, dev: &mut impl BlockDev) -> Result<(), FsError> {
        if self.cache.len() <= self.cache_budget {
            return Ok(());
        }
        if self.cache.values().any(|c| c.dirty) {
            self.write_dirty(dev)?;
        }
        let target = self.cache_budget * 3 / 4;
        while self.cache.len() > target {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            self.cache.remove(&k);
        }
        // Keys of blocks dropped earlier may remain; keep the queue bounded.
        if self.order.len() > 2 * self.cache_budget {
            self.order.retain(|k| self.cache.contains_key(k));
        }
        Ok(())
    }
}
