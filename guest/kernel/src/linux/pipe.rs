//! Pipes and eventfds: in-memory, between the app's own threads (there is
//! no other process). A read of an empty pipe waits for a writer or sees
//! end of file once every write end is closed; a write with no reader left
//! is `EPIPE` (SIGPIPE is never delivered).

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use core::cell::RefCell;

use linux_raw_sys::errno::{EAGAIN, EINVAL, EPIPE};
use linux_raw_sys::general as g;

use super::fd::{Kind, Ofd};
use super::kernel::Kernel;
use super::{Sys, uaccess};

/// Bytes a pipe holds.
pub const CAPACITY: usize = 64 * 1024;

#[derive(Default)]
struct Buf {
    data: VecDeque<u8>,
    readers: usize,
    writers: usize,
}

pub struct PipeEnd {
    buf: Rc<RefCell<Buf>>,
    write: bool,
    open: bool,
}

impl PipeEnd {
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, super::Fail> {
        if self.write {
            return Err(linux_raw_sys::errno::EBADF.into());
        }
        let mut b = self.buf.borrow_mut();
        if b.data.is_empty() {
            return if b.writers == 0 {
                Ok(0)
            } else {
                Err(EAGAIN.into())
            };
        }
        let n = out.len().min(b.data.len());
        for (o, v) in out.iter_mut().zip(b.data.drain(..n)) {
            *o = v;
        }
        Ok(n)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<usize, super::Fail> {
        if !self.write {
            return Err(linux_raw_sys::errno::EBADF.into());
        }
        let mut b = self.buf.borrow_mut();
        if b.readers == 0 {
            return Err(EPIPE.into());
        }
        let n = data.len().min(CAPACITY - b.data.len());
        if n == 0 && !data.is_empty() {
            return Err(EAGAIN.into());
        }
        b.data.extend(&data[..n]);
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.buf.borrow().data.len()
    }

    pub fn ready(&self) -> u32 {
        let b = self.buf.borrow();
        match self.write {
            false if !b.data.is_empty() => g::EPOLLIN | g::EPOLLRDNORM,
            false if b.writers == 0 => g::EPOLLIN | g::EPOLLHUP,
            false => 0,
            true if b.readers == 0 => g::EPOLLOUT | g::EPOLLERR,
            true if b.data.len() < CAPACITY => g::EPOLLOUT | g::EPOLLWRNORM,
            true => 0,
        }
    }

    pub fn close(&mut self) {
        if !core::mem::replace(&mut self.open, false) {
            return;
        }
        let mut b = self.buf.borrow_mut();
        if self.write {
            b.writers -= 1;
        } else {
            b.readers -= 1;
        }
    }
}

pub fn pipe(k: &mut Kernel, fds: u64, flags: u64) -> Sys {
    uaccess::check(fds, 8)?;
    let allowed = u64::from(g::O_NONBLOCK | g::O_CLOEXEC | g::O_DIRECT);
    if flags & !allowed != 0 {
        return Err(EINVAL.into());
    }
    let buf = Rc::new(RefCell::new(Buf {
        data: VecDeque::new(),
        readers: 1,
        writers: 1,
    }));
    let nb = flags as u32 & g::O_NONBLOCK;
    let cloexec = flags & u64::from(g::O_CLOEXEC) != 0;
    let end = |write| {
        Kind::Pipe(PipeEnd {
            buf: buf.clone(),
            write,
            open: true,
        })
    };
    let r = k
        .fds
        .install(Ofd::new(end(false), g::O_RDONLY | nb), cloexec, 0)?;
    let w = match k
        .fds
        .install(Ofd::new(end(true), g::O_WRONLY | nb), cloexec, 0)
    {
        Ok(w) => w,
        Err(e) => {
            let f = k.fds.take(r)?;
            super::files::release(k, f);
            return Err(e);
        }
    };
    uaccess::put_u32(fds, r as u32)?;
    uaccess::put_u32(fds + 4, w as u32)?;
    Ok(0)
}

/// An eventfd counter.
pub struct EventFd {
    count: u64,
    semaphore: bool,
}

impl EventFd {
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, super::Fail> {
        if out.len() < 8 {
            return Err(EINVAL.into());
        }
        if self.count == 0 {
            return Err(EAGAIN.into());
        }
        let v = if self.semaphore { 1 } else { self.count };
        self.count -= v;
        out[..8].copy_from_slice(&v.to_le_bytes());
        Ok(8)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<usize, super::Fail> {
        let v = data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .filter(|v| *v != u64::MAX)
            .ok_or(super::Fail::E(EINVAL))?;
        if self.count.checked_add(v).is_none_or(|s| s == u64::MAX) {
            return Err(EAGAIN.into());
        }
        self.count += v;
        Ok(8)
    }

    pub fn ready(&self) -> u32 {
        let mut m = g::EPOLLOUT;
        if self.count > 0 {
            m |= g::EPOLLIN;
        }
        m
    }
}

pub fn eventfd(k: &mut Kernel, init: u64, flags: u64) -> Sys {
    const EFD_SEMAPHORE: u64 = 1;
    let nb = flags as u32 & g::O_NONBLOCK;
    let kind = Kind::EventFd(EventFd {
        count: init & 0xffff_ffff,
        semaphore: flags & EFD_SEMAPHORE != 0,
    });
    k.fds.install(
        Ofd::new(kind, g::O_RDWR | nb),
        flags & u64::from(g::O_CLOEXEC) != 0,
        0,
    )
}
