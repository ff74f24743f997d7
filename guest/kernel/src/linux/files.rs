//! Reading, writing and controlling descriptors, whatever they refer to.
//! A call on a socket or pipe that would block returns `EAGAIN` with
//! O_NONBLOCK and otherwise blocks the thread until it can go on.

use alloc::vec;
use alloc::vec::Vec;

use linux_raw_sys::errno::{EAGAIN, EBADF, EINVAL, EISDIR, ENODEV, ENOTTY, EOPNOTSUPP, ESPIPE};
use linux_raw_sys::general as g;

use super::fd::{File, Kind, Ofd};
use super::kernel::Kernel;
use super::{Call, Fail, Sys, path, pipe, sock, time, uaccess};

/// Largest single transfer (bytes); Linux caps at about 2 GiB.
const MAX_IO: u64 = 1 << 30;

/// Turns "would block" into a block for a blocking descriptor.
fn blocking<T>(r: Result<T, Fail>, nonblock: bool, k: &Kernel, c: &Call) -> Result<T, Fail> {
    match r {
        Err(Fail::E(EAGAIN)) if !nonblock => Err(time::block(time::deadline(k, c, None))),
        r => r,
    }
}

/// Reads into `buf` from the description's position (sockets and pipes
/// have none).
fn read_into(k: &mut Kernel, o: &mut Ofd, buf: &mut [u8]) -> Result<usize, Fail> {
    let n = match &mut o.kind {
        Kind::Stdin | Kind::Console | Kind::Null => 0,
        Kind::Zero => {
            buf.fill(0);
            buf.len()
        }
        Kind::Random => {
            k.rng.fill(buf);
            buf.len()
        }
        Kind::Synth(data) => {
            let start = (o.pos as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            o.pos += n as u64;
            n
        }
        Kind::File(ino) => {
            let n = path::fs_read(k, *ino, o.pos, buf)?;
            o.pos += n as u64;
            n
        }
        Kind::Dir { .. } => return Err(EISDIR.into()),
        Kind::Socket(s) => sock::recv(k, s, buf)?,
        Kind::Pipe(p) => p.read(buf)?,
        Kind::EventFd(e) => e.read(buf)?,
        Kind::Epoll(_) => return Err(EINVAL.into()),
    };
    Ok(n)
}

/// Writes `data` at the description's position (or appends).
fn write_from(k: &mut Kernel, o: &mut Ofd, data: &[u8]) -> Result<usize, Fail> {
    if o.flags & g::O_ACCMODE == g::O_RDONLY && matches!(o.kind, Kind::File(_)) {
        return Err(EBADF.into());
    }
    Ok(match &mut o.kind {
        Kind::Stdin | Kind::Console => {
            k.console_write(data);
            data.len()
        }
        Kind::Null | Kind::Zero | Kind::Random => data.len(),
        Kind::Synth(_) => return Err(EBADF.into()),
        Kind::File(ino) => {
            let ino = *ino;
            if o.flags & g::O_APPEND != 0 {
                o.pos = path::fs_size(k, ino)?;
            }
            let n = path::fs_write(k, ino, o.pos, data)?;
            o.pos += n as u64;
            n
        }
        Kind::Dir { .. } => return Err(EISDIR.into()),
        Kind::Socket(s) => sock::send(k, s, data)?,
        Kind::Pipe(p) => p.write(data)?,
        Kind::EventFd(e) => e.write(data)?,
        Kind::Epoll(_) => return Err(EINVAL.into()),
    })
}

pub fn read(k: &mut Kernel, fd: u64, buf: u64, len: u64, c: &Call) -> Sys {
    let f = k.fds.get(fd)?;
    let out = uaccess::slice_mut(buf, len.min(MAX_IO) as usize)?;
    let mut o = f.borrow_mut();
    let nb = o.nonblocking();
    let r = read_into(k, &mut o, out);
    blocking(r, nb, k, c).map(|n| n as u64)
}

pub fn write(k: &mut Kernel, fd: u64, buf: u64, len: u64, c: &Call) -> Sys {
    let f = k.fds.get(fd)?;
    let data = uaccess::slice(buf, len.min(MAX_IO) as usize)?;
    let mut o = f.borrow_mut();
    let nb = o.nonblocking();
    let r = write_from(k, &mut o, data);
    blocking(r, nb, k, c).map(|n| n as u64)
}

pub fn readv(k: &mut Kernel, fd: u64, iov: u64, cnt: u64, c: &Call) -> Sys {
    let iovs = uaccess::iovecs(iov, cnt)?;
    let total = iovs.iter().map(|v| v.1).sum::<usize>().min(MAX_IO as usize);
    let mut tmp = vec![0u8; total];
    let f = k.fds.get(fd)?;
    let mut o = f.borrow_mut();
    let nb = o.nonblocking();
    let r = read_into(k, &mut o, &mut tmp);
    let n = blocking(r, nb, k, c)?;
    scatter(&iovs, &tmp[..n])?;
    Ok(n as u64)
}

fn scatter(iovs: &[(u64, usize)], mut data: &[u8]) -> Result<(), Fail> {
    for &(base, len) in iovs {
        let n = len.min(data.len());
        uaccess::put(base, &data[..n])?;
        data = &data[n..];
    }
    Ok(())
}

fn gather(iovs: &[(u64, usize)]) -> Result<Vec<u8>, Fail> {
    let mut v = Vec::new();
    for &(base, len) in iovs {
        v.extend_from_slice(uaccess::slice(base, len)?);
    }
    Ok(v)
}

pub fn writev(k: &mut Kernel, fd: u64, iov: u64, cnt: u64, c: &Call) -> Sys {
    let data = gather(&uaccess::iovecs(iov, cnt)?)?;
    let f = k.fds.get(fd)?;
    let mut o = f.borrow_mut();
    let nb = o.nonblocking();
    let r = write_from(k, &mut o, &data);
    blocking(r, nb, k, c).map(|n| n as u64)
}

/// Runs `op` on a regular file at `off`, leaving its position alone.
fn at(
    k: &mut Kernel,
    fd: u64,
    op: impl FnOnce(&mut Kernel, &mut Ofd) -> Result<usize, Fail>,
) -> Sys {
    let f = k.fds.get(fd)?;
    let mut o = f.borrow_mut();
    if !matches!(o.kind, Kind::File(_) | Kind::Synth(_)) {
        return Err(ESPIPE.into());
    }
    let saved = (o.pos, o.flags);
    o.flags &= !g::O_APPEND;
    let r = op(k, &mut o);
    (o.pos, o.flags) = saved;
    r.map(|n| n as u64)
}

pub fn pread(k: &mut Kernel, fd: u64, buf: u64, len: u64, off: u64) -> Sys {
    let out = uaccess::slice_mut(buf, len.min(MAX_IO) as usize)?;
    at(k, fd, |k, o| {
        o.pos = off;
        read_into(k, o, out)
    })
}

pub fn pwrite(k: &mut Kernel, fd: u64, buf: u64, len: u64, off: u64) -> Sys {
    let data = uaccess::slice(buf, len.min(MAX_IO) as usize)?;
    at(k, fd, |k, o| {
        o.pos = off;
        write_from(k, o, data)
    })
}

pub fn preadv(k: &mut Kernel, fd: u64, iov: u64, cnt: u64, off: u64) -> Sys {
    let iovs = uaccess::iovecs(iov, cnt)?;
    let mut tmp = vec![0u8; iovs.iter().map(|v| v.1).sum::<usize>().min(MAX_IO as usize)];
    let n = at(k, fd, |k, o| {
        o.pos = off;
        read_into(k, o, &mut tmp)
    })?;
    scatter(&iovs, &tmp[..n as usize])?;
    Ok(n)
}

pub fn pwritev(k: &mut Kernel, fd: u64, iov: u64, cnt: u64, off: u64) -> Sys {
    let data = gather(&uaccess::iovecs(iov, cnt)?)?;
    at(k, fd, |k, o| {
        o.pos = off;
        write_from(k, o, &data)
    })
}

/// Gives back what a description holds once nothing refers to it.
pub fn release(k: &mut Kernel, f: File) {
    if alloc::rc::Rc::strong_count(&f) > 1 {
        return;
    }
    let mut o = f.borrow_mut();
    match &mut o.kind {
        Kind::File(ino) | Kind::Dir { ino, .. } => {
            if let Some(fs) = k.fs.as_mut() {
                fs.close(*ino);
            }
        }
        Kind::Socket(s) => sock::close(k, s),
        Kind::Pipe(p) => p.close(),
        _ => {}
    }
}

pub fn close(k: &mut Kernel, fd: u64) -> Sys {
    let f = k.fds.take(fd)?;
    release(k, f);
    Ok(0)
}

pub fn lseek(k: &mut Kernel, fd: u64, off: u64, whence: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let mut o = f.borrow_mut();
    let end = match &o.kind {
        Kind::File(ino) => path::fs_size(k, *ino)?,
        Kind::Synth(d) => d.len() as u64,
        Kind::Dir { .. } | Kind::Null | Kind::Zero | Kind::Random => 0,
        _ => return Err(ESPIPE.into()),
    };
    let base = match whence as u32 {
        g::SEEK_SET => 0,
        g::SEEK_CUR => o.pos,
        g::SEEK_END => end,
        g::SEEK_DATA if off < end => 0,
        g::SEEK_HOLE if off < end => return Ok(end),
        _ => return Err(EINVAL.into()),
    };
    let pos = (base as i64)
        .checked_add(off as i64)
        .filter(|p| *p >= 0)
        .ok_or(Fail::E(EINVAL))?;
    o.pos = pos as u64;
    Ok(pos as u64)
}

pub fn dup(k: &mut Kernel, fd: u64, min: u64, cloexec: bool) -> Sys {
    let f = k.fds.get(fd)?;
    k.fds
        .install(f, cloexec, min.min(super::fd::MAX_FDS as u64) as usize)
}

pub fn dup2(k: &mut Kernel, fd: u64, to: u64, flags: u64) -> Sys {
    let f = k.fds.get(fd)?;
    if to >= super::fd::MAX_FDS as u64 {
        return Err(EBADF.into());
    }
    if fd == to {
        return if flags != 0 {
            Err(EINVAL.into())
        } else {
            Ok(to)
        };
    }
    let cloexec = flags & u64::from(g::O_CLOEXEC) != 0;
    if let Some(old) = k.fds.put(to as usize, f, cloexec) {
        release(k, old);
    }
    Ok(to)
}

pub fn fcntl(k: &mut Kernel, fd: u64, cmd: u64, arg: u64) -> Sys {
    let f = k.fds.get(fd)?;
    match cmd as u32 {
        g::F_DUPFD => dup(k, fd, arg, false),
        g::F_DUPFD_CLOEXEC => dup(k, fd, arg, true),
        g::F_GETFD => Ok(u64::from(k.fds.cloexec(fd)?)),
        g::F_SETFD => {
            k.fds.set_cloexec(fd, arg & u64::from(g::FD_CLOEXEC) != 0)?;
            Ok(0)
        }
        g::F_GETFL => Ok(u64::from(f.borrow().flags)),
        g::F_SETFL => {
            let mut o = f.borrow_mut();
            let keep = g::O_NONBLOCK | g::O_APPEND;
            o.flags = (o.flags & !keep) | (arg as u32 & keep);
            Ok(0)
        }
        g::F_GETLK | g::F_OFD_GETLK => {
            // struct flock: l_type first; nobody else holds a lock.
            uaccess::put(arg, &(g::F_UNLCK as u16).to_le_bytes())?;
            Ok(0)
        }
        g::F_SETLK | g::F_SETLKW | g::F_OFD_SETLK | g::F_OFD_SETLKW => Ok(0),
        g::F_GETPIPE_SZ => Ok(pipe::CAPACITY as u64),
        g::F_SETPIPE_SZ | g::F_SETOWN | g::F_SETSIG => Ok(0),
        g::F_GETOWN | g::F_GETSIG => Ok(0),
        _ => Err(EINVAL.into()),
    }
}

pub fn ioctl(k: &mut Kernel, fd: u64, req: u64, arg: u64) -> Sys {
    let f = k.fds.get(fd)?;
    match req as u32 {
        linux_raw_sys::ioctl::FIONBIO => {
            let on = uaccess::get_u32(arg)? != 0;
            let mut o = f.borrow_mut();
            if on {
                o.flags |= g::O_NONBLOCK;
            } else {
                o.flags &= !g::O_NONBLOCK;
            }
            Ok(0)
        }
        linux_raw_sys::ioctl::FIONREAD => {
            let n = super::poll::readable_bytes(k, &mut f.borrow_mut());
            uaccess::put_u32(arg, n)?;
            Ok(0)
        }
        linux_raw_sys::ioctl::FIOCLEX => k.fds.set_cloexec(fd, true).map(|_| 0),
        linux_raw_sys::ioctl::FIONCLEX => k.fds.set_cloexec(fd, false).map(|_| 0),
        _ => Err(ENOTTY.into()),
    }
}

pub fn fsync(k: &mut Kernel, fd: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let is_file = matches!(f.borrow().kind, Kind::File(_) | Kind::Dir { .. });
    if !is_file {
        return Err(EINVAL.into());
    }
    sync_all(k)
}

pub fn sync_all(k: &mut Kernel) -> Sys {
    path::fs_sync(k)?;
    Ok(0)
}

pub fn ftruncate(k: &mut Kernel, fd: u64, len: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let o = f.borrow();
    match o.kind {
        Kind::File(ino) if o.flags & g::O_ACCMODE != g::O_RDONLY => path::fs_truncate(k, ino, len),
        Kind::File(_) => Err(EBADF.into()),
        _ => Err(EINVAL.into()),
    }
}

pub fn fallocate(k: &mut Kernel, fd: u64, mode: u64, off: u64, len: u64) -> Sys {
    let f = k.fds.get(fd)?;
    let Kind::File(ino) = f.borrow().kind else {
        return Err(ENODEV.into());
    };
    if mode != 0 {
        return Err(EOPNOTSUPP.into());
    }
    let end = off.checked_add(len).ok_or(Fail::E(EINVAL))?;
    if end > path::fs_size(k, ino)? {
        path::fs_truncate(k, ino, end)?;
    }
    Ok(0)
}

pub fn sendfile(k: &mut Kernel, out: u64, inp: u64, offp: u64, count: u64) -> Sys {
    let fin = k.fds.get(inp)?;
    let fout = k.fds.get(out)?;
    let mut buf = vec![0u8; count.min(1 << 20) as usize];
    let mut i = fin.borrow_mut();
    let start = if offp != 0 {
        uaccess::get_u64(offp)?
    } else {
        i.pos
    };
    let saved = i.pos;
    i.pos = start;
    let n = read_into(k, &mut i, &mut buf)?;
    let mut o = fout.try_borrow_mut().map_err(|_| Fail::E(EINVAL))?;
    let sent = write_from(k, &mut o, &buf[..n])?;
    if offp != 0 {
        i.pos = saved;
        uaccess::put_u64(offp, start + sent as u64)?;
    } else {
        i.pos = start + sent as u64;
    }
    Ok(sent as u64)
}

/// `mmap` of a file: a private copy of its bytes (writes are not shared).
pub fn map_file(k: &mut Kernel, len: u64, fd: u64, off: u64) -> Sys {
    let f = k.fds.get(fd)?;
    if !matches!(f.borrow().kind, Kind::File(_) | Kind::Synth(_)) {
        return Err(ENODEV.into());
    }
    let addr = k
        .space
        .map(len, &mut super::mem::Heap)
        .map_err(|_| Fail::E(linux_raw_sys::errno::ENOMEM))?;
    let out = uaccess::slice_mut(addr, len as usize)?;
    let mut o = f.borrow_mut();
    let saved = o.pos;
    o.pos = off;
    let r = read_into(k, &mut o, out);
    o.pos = saved;
    r?;
    Ok(addr)
}
