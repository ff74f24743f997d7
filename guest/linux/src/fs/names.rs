//! The namespace: lookups, creating, removing and renaming names, and the
//! life of an inode (its links and its openers).

use alloc::vec::Vec;

use super::layout::BLOCK;
use super::meta::{Inode, valid_name};
use super::{Fs, FsError, Kind, NAME_MAX, ROOT, Stat};

impl Fs {
    /// The inode `name` names in directory `dir`.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<u32, FsError> {
        match name {
            b"" | b"." => return self.dir(dir).map(|_| dir),
            b".." => {
                return self
                    .dir(dir)
                    .map(|_| self.parents.get(&dir).copied().unwrap_or(ROOT));
            }
            _ => {}
        }
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.dir(dir)?
            .entries
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    pub fn stat(&self, ino: u32) -> Result<Stat, FsError> {
        let i = self.inode(ino)?;
        let nlink = match i.kind {
            Kind::File => i.links,
            Kind::Dir => 2 + self.parents.values().filter(|p| **p == ino).count() as u32,
        };
        Ok(Stat {
            ino,
            kind: i.kind,
            mode: i.mode,
            size: i.size,
            mtime_ns: i.mtime_ns,
            nlink,
            sectors: i.blocks.iter().filter(|b| **b != 0).count() as u64 * (BLOCK as u64 / 512),
        })
    }

    /// Creates `name` in `dir`.
    pub fn create(
        &mut self,
        dir: u32,
        name: &[u8],
        kind: Kind,
        mode: u16,
        now_ns: u64,
    ) -> Result<u32, FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if !valid_name(name) {
            return Err(FsError::Invalid);
        }
        if self.dir(dir)?.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).ok_or(FsError::NoSpace)?;
        let mut i = Inode::new(kind, mode & 0o7777, now_ns);
        i.links = 1;
        self.inodes.insert(ino, i);
        if kind == Kind::Dir {
            self.parents.insert(ino, dir);
        }
        self.entry_change(dir, now_ns, |d| {
            d.entries.insert(name.to_vec(), ino);
        });
        Ok(ino)
    }

    fn entry_change(&mut self, dir: u32, now_ns: u64, f: impl FnOnce(&mut Inode)) {
        if let Some(d) = self.inodes.get_mut(&dir) {
            f(d);
            d.mtime_ns = now_ns;
        }
        self.meta_dirty = true;
    }

    /// Removes a file's name (`dir_ok`: or an empty directory's).
    pub fn remove(
        &mut self,
        dir: u32,
        name: &[u8],
        want_dir: bool,
        now_ns: u64,
    ) -> Result<(), FsError> {
        let ino = self.lookup(dir, name)?;
        if !valid_name(name) {
            return Err(FsError::Invalid);
        }
        let i = self.inode(ino)?;
        match (i.kind, want_dir) {
            (Kind::Dir, false) => return Err(FsError::IsDir),
            (Kind::File, true) => return Err(FsError::NotDir),
            (Kind::Dir, true) if !i.entries.is_empty() => return Err(FsError::NotEmpty),
            _ => {}
        }
        self.entry_change(dir, now_ns, |d| {
            d.entries.remove(name);
        });
        self.parents.remove(&ino);
        self.unlink_inode(ino);
        Ok(())
    }

    fn unlink_inode(&mut self, ino: u32) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.links = i.links.saturating_sub(1);
        }
        self.maybe_free(ino);
    }

    /// Drops an inode with no name and no opener, and its blocks.
    fn maybe_free(&mut self, ino: u32) {
        if self
            .inodes
            .get(&ino)
            .is_some_and(|i| i.links == 0 && i.opens == 0)
        {
            if let Some(i) = self.inodes.remove(&ino) {
                for b in i.blocks {
                    self.space.release_later(b);
                }
            }
            self.drop_cached(ino, 0);
            self.meta_dirty = true;
        }
    }

    /// `rename(2)`: replaces a file (or an empty directory) at the target.
    pub fn rename(
        &mut self,
        from_dir: u32,
        from: &[u8],
        to_dir: u32,
        to: &[u8],
        now_ns: u64,
    ) -> Result<(), FsError> {
        let ino = self.lookup(from_dir, from)?;
        if !valid_name(from) || !valid_name(to) {
            return Err(FsError::Invalid);
        }
        self.dir(to_dir)?;
        let kind = self.inode(ino)?.kind;
        if kind == Kind::Dir {
            // A directory cannot move below itself.
            let mut at = to_dir;
            loop {
                if at == ino {
                    return Err(FsError::Invalid);
                }
                match self.parents.get(&at) {
                    Some(p) if *p != at => at = *p,
                    _ => break,
                }
            }
        }
        if let Ok(old) = self.lookup(to_dir, to) {
            if old == ino {
                return Ok(());
            }
            let o = self.inode(old)?;
            match (kind, o.kind) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if !o.entries.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
            self.parents.remove(&old);
            self.unlink_inode(old);
        }
        self.entry_change(from_dir, now_ns, |d| {
            d.entries.remove(from);
        });
        self.entry_change(to_dir, now_ns, |d| {
            d.entries.insert(to.to_vec(), ino);
        });
        if kind == Kind::Dir {
            self.parents.insert(ino, to_dir);
        }
        Ok(())
    }

    /// A directory's entries in name order: (name, inode, kind).
    pub fn readdir(&self, dir: u32) -> Result<Vec<(Vec<u8>, u32, Kind)>, FsError> {
        let d = self.dir(dir)?;
        Ok(d.entries
            .iter()
            .filter_map(|(n, c)| Some((n.clone(), *c, self.inodes.get(c)?.kind)))
            .collect())
    }

    /// An open file description now refers to `ino`.
    pub fn open(&mut self, ino: u32) -> Result<(), FsError> {
        let i = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        i.opens = i.opens.saturating_add(1);
        Ok(())
    }

    /// The last descriptor of an open file description is closed.
    pub fn close(&mut self, ino: u32) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.opens = i.opens.saturating_sub(1);
        }
        self.maybe_free(ino);
    }

    /// Sets the modification time (`utimensat`).
    pub fn touch(&mut self, ino: u32, mtime_ns: u64) -> Result<(), FsError> {
        let i = self.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        i.mtime_ns = mtime_ns;
        Ok(())
    }
}
