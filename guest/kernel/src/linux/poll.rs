//! epoll, poll and select over one readiness function. Readiness changes
//! only at system calls and sync calls, so a wait that finds nothing
//! blocks the thread (or returns 0 for a zero timeout, counted as an idle
//! poll) and is evaluated again after the next events.

use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::RefCell;

use linux_raw_sys::errno::{EBADF, EEXIST, EINVAL, ENOENT, EPERM};
use linux_raw_sys::general as g;

use super::fd::{Kind, Ofd};
use super::kernel::Kernel;
use super::{Call, Fail, Sys, sock, time, uaccess};

/// Most events one `epoll_wait` returns.
const MAX_EVENTS: u64 = 1 << 16;

struct Reg {
    file: Weak<RefCell<Ofd>>,
    events: u32,
    data: u64,
    /// Ready bits reported last (EPOLLET reports only new ones).
    last: u32,
    /// EPOLLONESHOT fired; re-armed by EPOLL_CTL_MOD.
    disarmed: bool,
}

#[derive(Default)]
pub struct Epoll {
    regs: BTreeMap<u64, Reg>,
    /// Where the last scan stopped, so a full batch does not starve the
    /// descriptors after it.
    cursor: u64,
}

/// EPOLL* readiness of a description.
pub fn readiness(k: &mut Kernel, o: &mut Ofd) -> u32 {
    match &mut o.kind {
        Kind::Socket(s) => sock::ready(k, s),
        Kind::Pipe(p) => p.ready(),
        Kind::EventFd(e) => e.ready(),
        Kind::Epoll(_) => 0,
        Kind::Stdin => g::EPOLLIN | g::EPOLLOUT,
        _ => g::EPOLLIN | g::EPOLLOUT | g::EPOLLRDNORM | g::EPOLLWRNORM,
    }
}

/// Bytes a read would return now (FIONREAD).
pub fn readable_bytes(k: &mut Kernel, o: &mut Ofd) -> u32 {
    match &mut o.kind {
        Kind::Socket(s) => sock::pending(k, s),
        Kind::Pipe(p) => p.len() as u32,
        Kind::Synth(d) => d.len().saturating_sub(o.pos as usize) as u32,
        Kind::File(ino) => {
            let ino = *ino;
            let size = super::path::fs_size(k, ino).unwrap_or(0);
            size.saturating_sub(o.pos).min(u64::from(u32::MAX)) as u32
        }
        _ => 0,
    }
}

/// The result of a wait that found nothing.
fn nothing(k: &mut Kernel, c: &Call, timeout: Option<u64>) -> Sys {
    match time::deadline(k, c, timeout) {
        Some(d) if k.now >= d => {
            if timeout == Some(0) {
                k.idle_poll();
            }
            Ok(0)
        }
        d => Err(time::block(d)),
    }
}

pub fn epoll_create(k: &mut Kernel, arg: u64, nr: u64) -> Sys {
    let cloexec = if nr == u64::from(g::__NR_epoll_create) {
        if arg as i32 <= 0 {
            return Err(EINVAL.into());
        }
        false
    } else {
        if arg & !u64::from(g::O_CLOEXEC) != 0 {
            return Err(EINVAL.into());
        }
        arg != 0
    };
    k.fds.install(
        Ofd::new(Kind::Epoll(Epoll::default()), g::O_RDWR),
        cloexec,
        0,
    )
}

pub fn epoll_ctl(k: &mut Kernel, epfd: u64, op: u64, fd: u64, ev: u64) -> Sys {
    let ep = k.fds.get(epfd)?;
    let target = k.fds.get(fd)?;
    if Rc::ptr_eq(&ep, &target) {
        return Err(EINVAL.into());
    }
    if matches!(target.borrow().kind, Kind::File(_) | Kind::Dir { .. }) {
        return Err(EPERM.into());
    }
    let (events, data) = if op == u64::from(g::EPOLL_CTL_DEL) {
        (0, 0)
    } else {
        let b = uaccess::slice(ev, 12)?;
        (
            u32::from_le_bytes(b[..4].try_into().map_err(|_| Fail::E(EINVAL))?),
            u64::from_le_bytes(b[4..].try_into().map_err(|_| Fail::E(EINVAL))?),
        )
    };
    let mut o = ep.borrow_mut();
    let Kind::Epoll(e) = &mut o.kind else {
        return Err(EINVAL.into());
    };
    match op as u32 {
        g::EPOLL_CTL_ADD => {
            if e.regs.get(&fd).is_some_and(|r| r.file.strong_count() > 0) {
                return Err(EEXIST.into());
            }
            let file = Rc::downgrade(&target);
            e.regs.insert(
                fd,
                Reg {
                    file,
                    events,
                    data,
                    last: 0,
                    disarmed: false,
                },
            );
        }
        g::EPOLL_CTL_MOD => {
            let r = e.regs.get_mut(&fd).ok_or(Fail::E(ENOENT))?;
            (r.events, r.data, r.last, r.disarmed) = (events, data, 0, false);
        }
        g::EPOLL_CTL_DEL => {
            e.regs.remove(&fd).ok_or(Fail::E(ENOENT))?;
        }
        _ => return Err(EINVAL.into()),
    }
    Ok(0)
}

pub fn epoll_wait(
    k: &mut Kernel,
    epfd: u64,
    out: u64,
    max: u64,
    timeout: Option<u64>,
    c: &Call,
) -> Sys {
    let max = max as i32;
    if max <= 0 || max as u64 > MAX_EVENTS {
        return Err(EINVAL.into());
    }
    uaccess::check(out, max as u64 * 12)?;
    let ep = k.fds.get(epfd)?;
    let mut o = ep.borrow_mut();
    let Kind::Epoll(e) = &mut o.kind else {
        return Err(EINVAL.into());
    };
    e.regs.retain(|_, r| r.file.strong_count() > 0);
    let order: Vec<u64> = e
        .regs
        .range(e.cursor..)
        .chain(e.regs.range(..e.cursor))
        .map(|(fd, _)| *fd)
        .collect();
    let mut found: Vec<u8> = Vec::new();
    let mut n = 0;
    for fd in order {
        if n == max {
            e.cursor = fd;
            break;
        }
        let Some(r) = e.regs.get_mut(&fd) else {
            continue;
        };
        let Some(file) = r.file.upgrade() else {
            continue;
        };
        if r.disarmed {
            continue;
        }
        let Ok(mut f) = file.try_borrow_mut() else {
            continue;
        };
        let ready = readiness(k, &mut f);
        let mut want = ready & (r.events | g::EPOLLERR | g::EPOLLHUP);
        if r.events & g::EPOLLET != 0 {
            let edge = want & !r.last;
            r.last = want;
            want = edge;
        }
        if want == 0 {
            continue;
        }
        if r.events & g::EPOLLONESHOT != 0 {
            r.disarmed = true;
        }
        found.extend_from_slice(&want.to_le_bytes());
        found.extend_from_slice(&r.data.to_le_bytes());
        n += 1;
    }
    drop(o);
    if n == 0 {
        return nothing(k, c, timeout);
    }
    uaccess::put(out, &found)?;
    k.stats.events += n as u64;
    Ok(n as u64)
}

pub fn poll(k: &mut Kernel, fds: u64, nfds: u64, timeout: Option<u64>, c: &Call) -> Sys {
    if nfds > 1 << 16 {
        return Err(EINVAL.into());
    }
    let raw = uaccess::slice_mut(fds, nfds as usize * 8)?;
    let mut n = 0;
    let mut out = raw.to_vec();
    for p in out.chunks_exact_mut(8) {
        let fd = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let events = u32::from(u16::from_le_bytes([p[4], p[5]]));
        let rev = if fd < 0 {
            0
        } else {
            match k.fds.get(fd as u64) {
                Err(_) => g::POLLNVAL,
                Ok(f) => match f.try_borrow_mut() {
                    Ok(mut o) => readiness(k, &mut o) & (events | g::POLLERR | g::POLLHUP),
                    Err(_) => 0,
                },
            }
        };
        p[6..8].copy_from_slice(&(rev as u16).to_le_bytes());
        n += u64::from(rev != 0);
    }
    if n == 0 {
        nothing(k, c, timeout)?;
    }
    raw.copy_from_slice(&out);
    Ok(n)
}

fn bits(addr: u64, nfds: usize) -> Result<Option<Vec<u64>>, Fail> {
    if addr == 0 {
        return Ok(None);
    }
    let b = uaccess::slice(addr, nfds.div_ceil(64) * 8)?;
    Ok(Some(
        b.chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
            .collect(),
    ))
}

pub fn select(
    k: &mut Kernel,
    nfds: u64,
    r: u64,
    w: u64,
    x: u64,
    timeout: Option<u64>,
    c: &Call,
) -> Sys {
    if nfds > 1024 {
        return Err(EINVAL.into());
    }
    let nfds = nfds as usize;
    let sets = [bits(r, nfds)?, bits(w, nfds)?, bits(x, nfds)?];
    let want = [
        g::EPOLLIN | g::EPOLLHUP | g::EPOLLERR,
        g::EPOLLOUT | g::EPOLLERR,
        g::EPOLLPRI,
    ];
    let mut result: [Vec<u64>; 3] = core::array::from_fn(|_| alloc::vec![0u64; nfds.div_ceil(64)]);
    let mut n = 0;
    for fd in 0..nfds {
        let asked: Vec<usize> = (0..3)
            .filter(|i| {
                sets[*i]
                    .as_ref()
                    .is_some_and(|s| s[fd / 64] >> (fd % 64) & 1 != 0)
            })
            .collect();
        if asked.is_empty() {
            continue;
        }
        let f = k.fds.get(fd as u64).map_err(|_| Fail::E(EBADF))?;
        let ready = match f.try_borrow_mut() {
            Ok(mut o) => readiness(k, &mut o),
            Err(_) => 0,
        };
        for i in asked {
            if ready & want[i] != 0 {
                result[i][fd / 64] |= 1 << (fd % 64);
                n += 1;
            }
        }
    }
    if n == 0 {
        nothing(k, c, timeout)?;
    }
    for (addr, words) in [r, w, x].into_iter().zip(&result) {
        if addr != 0 {
            let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
            uaccess::put(addr, &bytes)?;
        }
    }
    Ok(n)
}
