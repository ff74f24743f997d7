//! Paths: the file system on the disk at `/`, with /proc, /sys and /dev
//! generated ([`super::synth`]). There are no symbolic links, so `..` is
//! resolved by name, before the lookup.

use alloc::vec::Vec;

use linux_raw_sys::errno::{
    EBADF, EEXIST, EFBIG, EINVAL, EIO, EISDIR, ENAMETOOLONG, ENOENT, ENOSPC, ENOTDIR, ENOTEMPTY,
    EROFS,
};
use linux_raw_sys::general as g;
use lockstep_guest_linux::fs::{FsError, Kind as FsKind, ROOT, Stat};

use super::fd::{Kind, Ofd};
use super::kernel::Kernel;
use super::{Fail, Sys, synth, uaccess};

const PATH_MAX: usize = 4096;

impl From<FsError> for Fail {
    fn from(e: FsError) -> Fail {
        Fail::E(match e {
            FsError::NotFound => ENOENT,
            FsError::Exists => EEXIST,
            FsError::NotDir => ENOTDIR,
            FsError::IsDir => EISDIR,
            FsError::NotEmpty => ENOTEMPTY,
            FsError::NoSpace => ENOSPC,
            FsError::NameTooLong => ENAMETOOLONG,
            FsError::Invalid => EINVAL,
            FsError::TooBig => EFBIG,
            FsError::Io | FsError::Damaged => EIO,
        })
    }
}

/// Runs `op` on the file system and its disk, then takes the time and
/// events the disk's waits saw.
fn with_fs<T>(
    k: &mut Kernel,
    op: impl FnOnce(&mut lockstep_guest_linux::fs::Fs, &mut super::disk::BlkDev) -> Result<T, FsError>,
) -> Result<T, Fail> {
    let (Some(fs), Some(d)) = (k.fs.as_mut(), k.disk.as_mut()) else {
        return Err(ENOENT.into());
    };
    // The disk's waits set their deadlines from the current time.
    d.now = d.now.max(k.now);
    let r = op(fs, d);
    k.absorb_disk();
    Ok(r?)
}

pub fn fs_read(k: &mut Kernel, ino: u32, off: u64, buf: &mut [u8]) -> Result<usize, Fail> {
    with_fs(k, |fs, d| fs.read(d, ino, off, buf))
}

pub fn fs_write(k: &mut Kernel, ino: u32, off: u64, data: &[u8]) -> Result<usize, Fail> {
    let now = k.now;
    with_fs(k, |fs, d| fs.write(d, ino, off, data, now))
}

pub fn fs_size(k: &mut Kernel, ino: u32) -> Result<u64, Fail> {
    with_fs(k, |fs, _| fs.size(ino))
}

pub fn fs_truncate(k: &mut Kernel, ino: u32, len: u64) -> Sys {
    let now = k.now;
    with_fs(k, |fs, d| fs.truncate(d, ino, len, now)).map(|_| 0)
}

pub fn fs_sync(k: &mut Kernel) -> Result<(), Fail> {
    if k.fs.is_none() {
        return Ok(());
    }
    with_fs(k, |fs, d| fs.sync(d))
}

/// The absolute components of `path` as seen from `dirfd`.
fn components(k: &Kernel, dirfd: u64, path: &[u8]) -> Result<Vec<Vec<u8>>, Fail> {
    if path.is_empty() {
        return Err(ENOENT.into());
    }
    let base: Vec<u8> = if path[0] == b'/' {
        Vec::new()
    } else if dirfd as i32 == g::AT_FDCWD {
        k.cwd.clone()
    } else {
        let f = k.fds.get(dirfd)?;
        let o = f.borrow();
        match &o.kind {
            Kind::Dir { path, .. } => path.clone(),
            _ => return Err(ENOTDIR.into()),
        }
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in base.split(|b| *b == b'/').chain(path.split(|b| *b == b'/')) {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Vec::new();
    for c in comps {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    if p.is_empty() {
        p.push(b'/');
    }
    p
}

/// Reads the path argument.
fn user_path<'a>(addr: u64) -> Result<&'a [u8], Fail> {
    uaccess::cstr(addr, PATH_MAX)
}

/// The inode of the directory holding the last component, and that name.
fn parent(k: &Kernel, comps: &[Vec<u8>]) -> Result<(u32, Vec<u8>), Fail> {
    let fs = k.fs.as_ref().ok_or(Fail::E(ENOENT))?;
    let Some((last, dirs)) = comps.split_last() else {
        return Ok((ROOT, Vec::new()));
    };
    let mut at = ROOT;
    for d in dirs {
        at = fs.lookup(at, d)?;
    }
    Ok((at, last.clone()))
}

fn lookup(k: &Kernel, comps: &[Vec<u8>]) -> Result<u32, Fail> {
    let (dir, name) = parent(k, comps)?;
    if name.is_empty() {
        return Ok(dir);
    }
    Ok(k.fs.as_ref().ok_or(Fail::E(ENOENT))?.lookup(dir, &name)?)
}

fn writable(k: &Kernel) -> Result<(), Fail> {
    match &k.disk {
        Some(d) if !d.read_only() => Ok(()),
        _ => Err(EROFS.into()),
    }
}

pub fn openat(k: &mut Kernel, dirfd: u64, path: u64, flags: u64, mode: u64) -> Sys {
    let flags = flags as u32;
    let comps = components(k, dirfd, user_path(path)?)?;
    let cloexec = flags & g::O_CLOEXEC != 0;
    let keep = flags & (g::O_ACCMODE | g::O_NONBLOCK | g::O_APPEND);
    if let Some(kind) = synth::open(k, &comps) {
        let kind = kind?;
        return k.fds.install(Ofd::new(kind, keep), cloexec, 0);
    }
    let write = flags & g::O_ACCMODE != g::O_RDONLY;
    let (dir, name) = parent(k, &comps)?;
    let now = k.now;
    let ino = match k.fs.as_ref().ok_or(Fail::E(ENOENT))?.lookup(dir, &name) {
        Ok(_) if flags & g::O_CREAT != 0 && flags & g::O_EXCL != 0 => return Err(EEXIST.into()),
        Ok(ino) => ino,
        Err(FsError::NotFound) if flags & g::O_CREAT != 0 => {
            writable(k)?;
            let mode = (mode as u16) & !(k.umask as u16);
            with_fs(k, |fs, _| fs.create(dir, &name, FsKind::File, mode, now))?
        }
        Err(e) => return Err(e.into()),
    };
    let st = with_fs(k, |fs, _| fs.stat(ino))?;
    let kind = match st.kind {
        FsKind::Dir if write => return Err(EISDIR.into()),
        FsKind::Dir => Kind::Dir {
            ino,
            path: join(&comps),
        },
        FsKind::File if flags & g::O_DIRECTORY != 0 => return Err(ENOTDIR.into()),
        FsKind::File => {
            if write {
                writable(k)?;
            }
            if write && flags & g::O_TRUNC != 0 && st.size > 0 {
                fs_truncate(k, ino, 0)?;
            }
            Kind::File(ino)
        }
    };
    with_fs(k, |fs, _| fs.open(ino))?;
    k.fds.install(Ofd::new(kind, keep), cloexec, 0)
}

/// `struct stat` (x86-64 layout, 144 bytes).
fn stat_bytes(st: &Stat) -> [u8; 144] {
    let mut b = [0u8; 144];
    let (kind, blocks) = match st.kind {
        FsKind::Dir => (g::S_IFDIR, st.sectors),
        FsKind::File => (g::S_IFREG, st.sectors),
    };
    let put = |b: &mut [u8; 144], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut b, 0, 0x803);
    put(&mut b, 8, u64::from(st.ino));
    put(&mut b, 16, u64::from(st.nlink));
    b[24..28].copy_from_slice(&(kind | u32::from(st.mode)).to_le_bytes());
    put(&mut b, 48, st.size);
    put(&mut b, 56, 4096);
    put(&mut b, 64, blocks);
    for o in [72, 88, 104] {
        put(&mut b, o, st.mtime_ns / 1_000_000_000);
        put(&mut b, o + 8, st.mtime_ns % 1_000_000_000);
    }
    b
}

/// What `fstat` says about a descriptor that is not a file on the disk.
fn other_stat(kind: &Kind, now: u64) -> Stat {
    let (size, mode) = match kind {
        Kind::Synth(d) => (d.len() as u64, 0o444),
        _ => (0, 0o600),
    };
    Stat {
        ino: 1,
        kind: FsKind::File,
        mode,
        size,
        mtime_ns: now,
        nlink: 1,
        sectors: 0,
    }
}

fn stat_of_fd(k: &mut Kernel, fd: u64) -> Result<[u8; 144], Fail> {
    let f = k.fds.get(fd)?;
    let o = f.borrow();
    let (st, ifmt) = match &o.kind {
        Kind::File(ino) | Kind::Dir { ino, .. } => {
            let ino = *ino;
            drop(o);
            return Ok(stat_bytes(&with_fs(k, |fs, _| fs.stat(ino))?));
        }
        Kind::Socket(_) => (other_stat(&o.kind, k.now), g::S_IFSOCK),
        Kind::Pipe(_) => (other_stat(&o.kind, k.now), g::S_IFIFO),
        Kind::Synth(_) => (other_stat(&o.kind, k.now), g::S_IFREG),
        _ => (other_stat(&o.kind, k.now), g::S_IFCHR),
    };
    let mut b = stat_bytes(&st);
    b[24..28].copy_from_slice(&(ifmt | u32::from(st.mode)).to_le_bytes());
    Ok(b)
}

pub fn fstat(k: &mut Kernel, fd: u64, out: u64) -> Sys {
    let b = stat_of_fd(k, fd)?;
    uaccess::put(out, &b)?;
    Ok(0)
}

fn stat_path(k: &mut Kernel, dirfd: u64, path: u64, flags: u64) -> Result<[u8; 144], Fail> {
    let p = user_path(path)?;
    if p.is_empty() && flags & u64::from(g::AT_EMPTY_PATH) != 0 {
        return stat_of_fd(k, dirfd);
    }
    let comps = components(k, dirfd, p)?;
    if let Some(kind) = synth::open(k, &comps) {
        let kind = kind?;
        let ifmt = if matches!(kind, Kind::Synth(_)) {
            g::S_IFREG
        } else {
            g::S_IFCHR
        };
        let st = other_stat(&kind, k.now);
        let mut b = stat_bytes(&st);
        b[24..28].copy_from_slice(&(ifmt | u32::from(st.mode)).to_le_bytes());
        return Ok(b);
    }
    let ino = lookup(k, &comps)?;
    Ok(stat_bytes(&with_fs(k, |fs, _| fs.stat(ino))?))
}

pub fn fstatat(k: &mut Kernel, dirfd: u64, path: u64, out: u64, flags: u64) -> Sys {
    let b = stat_path(k, dirfd, path, flags)?;
    uaccess::put(out, &b)?;
    Ok(0)
}

/// `statx`, filled from the same facts as `stat`.
pub fn statx(k: &mut Kernel, dirfd: u64, path: u64, flags: u64, out: u64) -> Sys {
    let s = stat_path(k, dirfd, path, flags)?;
    let mut b = [0u8; 256];
    let u64_at = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap_or_default());
    b[0..4].copy_from_slice(&0x7ffu32.to_le_bytes());
    b[4..8].copy_from_slice(&4096u32.to_le_bytes());
    b[16..20].copy_from_slice(&(u64_at(16) as u32).to_le_bytes());
    b[28..30].copy_from_slice(&s[24..26]);
    b[32..40].copy_from_slice(&s[8..16]);
    b[40..48].copy_from_slice(&s[48..56]);
    b[48..56].copy_from_slice(&s[64..72]);
    for o in [64, 80, 96, 112] {
        b[o..o + 8].copy_from_slice(&s[88..96]);
        b[o + 8..o + 12].copy_from_slice(&(u64_at(96) as u32).to_le_bytes());
    }
    uaccess::put(out, &b)?;
    Ok(0)
}

pub fn faccessat(k: &mut Kernel, dirfd: u64, path: u64) -> Sys {
    stat_path(k, dirfd, path, 0).map(|_| 0)
}

pub fn getcwd(k: &mut Kernel, buf: u64, size: u64) -> Sys {
    let mut p = if k.cwd.is_empty() {
        b"/".to_vec()
    } else {
        k.cwd.clone()
    };
    p.push(0);
    if (size as usize) < p.len() {
        return Err(linux_raw_sys::errno::ERANGE.into());
    }
    uaccess::put(buf, &p)?;
    Ok(p.len() as u64)
}

fn set_cwd(k: &mut Kernel, comps: &[Vec<u8>]) -> Sys {
    let ino = lookup(k, comps)?;
    if with_fs(k, |fs, _| fs.stat(ino))?.kind != FsKind::Dir {
        return Err(ENOTDIR.into());
    }
    k.cwd = if comps.is_empty() {
        Vec::new()
    } else {
        join(comps)
    };
    Ok(0)
}

pub fn chdir(k: &mut Kernel, path: u64) -> Sys {
    let comps = components(k, g::AT_FDCWD as u64, user_path(path)?)?;
    set_cwd(k, &comps)
}

pub fn fchdir(k: &mut Kernel, fd: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let path = match &f.borrow().kind {
        Kind::Dir { path, .. } => path.clone(),
        _ => return Err(ENOTDIR.into()),
    };
    let comps = components(k, g::AT_FDCWD as u64, &path)?;
    set_cwd(k, &comps)
}

pub fn mkdirat(k: &mut Kernel, dirfd: u64, path: u64, mode: u64) -> Sys {
    let comps = components(k, dirfd, user_path(path)?)?;
    writable(k)?;
    let (dir, name) = parent(k, &comps)?;
    if name.is_empty() {
        return Err(EEXIST.into());
    }
    let (now, mode) = (k.now, (mode as u16) & !(k.umask as u16));
    with_fs(k, |fs, _| fs.create(dir, &name, FsKind::Dir, mode, now)).map(|_| 0)
}

pub fn unlinkat(k: &mut Kernel, dirfd: u64, path: u64, flags: u64) -> Sys {
    let comps = components(k, dirfd, user_path(path)?)?;
    writable(k)?;
    let (dir, name) = parent(k, &comps)?;
    if name.is_empty() {
        return Err(linux_raw_sys::errno::EBUSY.into());
    }
    let now = k.now;
    let want_dir = flags & u64::from(g::AT_REMOVEDIR) != 0;
    with_fs(k, |fs, _| fs.remove(dir, &name, want_dir, now)).map(|_| 0)
}

pub fn renameat(k: &mut Kernel, olddir: u64, old: u64, newdir: u64, new: u64) -> Sys {
    let from = components(k, olddir, user_path(old)?)?;
    let to = components(k, newdir, user_path(new)?)?;
    writable(k)?;
    let (fd, fname) = parent(k, &from)?;
    let (td, tname) = parent(k, &to)?;
    if fname.is_empty() || tname.is_empty() {
        return Err(linux_raw_sys::errno::EBUSY.into());
    }
    let now = k.now;
    with_fs(k, |fs, _| fs.rename(fd, &fname, td, &tname, now)).map(|_| 0)
}

pub fn readlinkat(k: &mut Kernel, dirfd: u64, path: u64, buf: u64, size: u64) -> Sys {
    let comps = components(k, dirfd, user_path(path)?)?;
    let exe = ["proc", "self", "exe"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect::<Vec<_>>();
    if comps == exe {
        let mut p = b"/".to_vec();
        p.extend_from_slice(&k.name);
        let n = p.len().min(size as usize);
        uaccess::put(buf, &p[..n])?;
        return Ok(n as u64);
    }
    lookup(k, &comps)?;
    Err(EINVAL.into())
}

pub fn truncate(k: &mut Kernel, path: u64, len: u64) -> Sys {
    let comps = components(k, g::AT_FDCWD as u64, user_path(path)?)?;
    writable(k)?;
    let ino = lookup(k, &comps)?;
    fs_truncate(k, ino, len)
}

pub fn utimensat(k: &mut Kernel, dirfd: u64, path: u64, _times: u64) -> Sys {
    let ino = if path == 0 {
        match k.fds.get(dirfd)?.borrow().kind {
            Kind::File(ino) | Kind::Dir { ino, .. } => ino,
            _ => return Err(EBADF.into()),
        }
    } else {
        let comps = components(k, dirfd, user_path(path)?)?;
        lookup(k, &comps)?
    };
    let now = k.now;
    with_fs(k, |fs, _| fs.touch(ino, now)).map(|_| 0)
}

pub fn getdents64(k: &mut Kernel, fd: u64, buf: u64, size: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let mut o = f.borrow_mut();
    let Kind::Dir { ino, .. } = o.kind else {
        return Err(ENOTDIR.into());
    };
    let mut entries: Vec<(Vec<u8>, u64, u8)> =
        alloc::vec![(b".".to_vec(), u64::from(ino), 4), (b"..".to_vec(), 1, 4)];
    for (name, child, kind) in with_fs(k, |fs, _| fs.readdir(ino))? {
        entries.push((
            name,
            u64::from(child),
            if kind == FsKind::Dir { 4 } else { 8 },
        ));
    }
    let mut out = Vec::new();
    let mut i = o.pos as usize;
    while let Some((name, child, t)) = entries.get(i) {
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        if out.len() + reclen > size as usize {
            break;
        }
        out.extend_from_slice(&child.to_le_bytes());
        out.extend_from_slice(&((i + 1) as u64).to_le_bytes());
        out.extend_from_slice(&(reclen as u16).to_le_bytes());
        out.push(*t);
        out.extend_from_slice(name);
        out.resize(out.len() + reclen - 19 - name.len(), 0);
        i += 1;
    }
    if out.is_empty() && i < entries.len() {
        return Err(EINVAL.into());
    }
    uaccess::put(buf, &out)?;
    o.pos = i as u64;
    Ok(out.len() as u64)
}

pub fn statfs(k: &mut Kernel, out: u64) -> Sys {
    let (total, free) =
        k.fs.as_ref()
            .map_or((0, 0), |fs| (fs.total_bytes(), fs.free_bytes()));
    let mut b = [0u8; 120];
    let put = |b: &mut [u8; 120], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut b, 0, 0x4c53_4653);
    put(&mut b, 8, 4096);
    put(&mut b, 16, total / 4096);
    put(&mut b, 24, free / 4096);
    put(&mut b, 32, free / 4096);
    put(&mut b, 40, 1 << 20);
    put(&mut b, 48, 1 << 20);
    put(&mut b, 64, 255);
    put(&mut b, 72, 4096);
    uaccess::put(out, &b)?;
    Ok(0)
}
