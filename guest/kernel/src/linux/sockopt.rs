//! Socket options and the message calls (`sendto`, `recvfrom`,
//! `sendmsg`, `recvmsg`) on top of [`super::sock`].

use alloc::vec;
use alloc::vec::Vec;

use linux_raw_sys::errno::{EAGAIN, ECONNREFUSED, EINVAL, ENOTCONN};
use linux_raw_sys::net as n;
use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

use super::kernel::Kernel;
use super::netstack::{RX_BUF, TX_BUF};
use super::sock::{IPPROTO_TCP, SOCK_STREAM, Socket, name, net, recv, send, with};
use super::{Call, Fail, Sys, time, uaccess};

pub fn setsockopt(k: &mut Kernel, fd: u64, level: u64, opt: u64, val: u64, len: u64) -> Sys {
    let v = if len >= 4 {
        uaccess::get_u32(val)? != 0
    } else {
        false
    };
    with(k, fd, |k, s, _| {
        match (level as u32, opt as u32) {
            (IPPROTO_TCP, n::TCP_NODELAY) => match s {
                Socket::Conn { h } => net(k)?.tcp(*h).set_nagle_enabled(!v),
                Socket::Fresh { nodelay, .. } | Socket::Listening { nodelay, .. } => *nodelay = v,
                Socket::Closed => {}
            },
            (n::SOL_SOCKET, n::SO_KEEPALIVE) => {
                if let Socket::Conn { h } = s {
                    let ka = v.then(|| Duration::from_secs(75));
                    net(k)?.tcp(*h).set_keep_alive(ka);
                }
            }
            _ => {}
        }
        Ok(0)
    })
}

pub fn getsockopt(k: &mut Kernel, fd: u64, level: u64, opt: u64, val: u64, lenp: u64) -> Sys {
    let v: u32 = with(k, fd, |k, s, _| {
        Ok(match (level as u32, opt as u32) {
            (n::SOL_SOCKET, n::SO_ERROR) => match s {
                Socket::Conn { h } if net(k)?.tcp(*h).state() == State::Closed => ECONNREFUSED,
                _ => 0,
            },
            (n::SOL_SOCKET, n::SO_TYPE) => SOCK_STREAM as u32,
            (n::SOL_SOCKET, n::SO_RCVBUF) => RX_BUF as u32,
            (n::SOL_SOCKET, n::SO_SNDBUF) => TX_BUF as u32,
            (n::SOL_SOCKET, n::SO_ACCEPTCONN) => u32::from(matches!(s, Socket::Listening { .. })),
            (IPPROTO_TCP, n::TCP_NODELAY) => match s {
                Socket::Conn { h } => u32::from(!net(k)?.tcp(*h).nagle_enabled()),
                Socket::Fresh { nodelay, .. } | Socket::Listening { nodelay, .. } => {
                    u32::from(*nodelay)
                }
                Socket::Closed => 0,
            },
            _ => 0,
        })
    })?;
    if uaccess::get_u32(lenp)? < 4 {
        return Err(EINVAL.into());
    }
    uaccess::put_u32(val, v)?;
    uaccess::put_u32(lenp, 4)?;
    Ok(0)
}

const MSG_PEEK: u64 = 2;
const MSG_DONTWAIT: u64 = 0x40;

/// `recvfrom`/`recvmsg` on one buffer, honouring MSG_DONTWAIT and MSG_PEEK.
fn recv_flags(
    k: &mut Kernel,
    fd: u64,
    buf: &mut [u8],
    flags: u64,
    c: &Call,
) -> Result<usize, Fail> {
    with(k, fd, |k, s, nb| {
        let r = if flags & MSG_PEEK != 0 {
            match s {
                Socket::Conn { h } => {
                    let t = net(k)?.tcp(*h);
                    match t.peek_slice(buf) {
                        Ok(0) if t.may_recv() => Err(EAGAIN.into()),
                        Ok(n) => Ok(n),
                        Err(_) => Ok(0),
                    }
                }
                _ => Err(ENOTCONN.into()),
            }
        } else {
            recv(k, s, buf)
        };
        match r {
            Err(Fail::E(EAGAIN)) if !nb && flags & MSG_DONTWAIT == 0 => {
                Err(time::block(time::deadline(k, c, None)))
            }
            r => r,
        }
    })
}

fn send_flags(k: &mut Kernel, fd: u64, data: &[u8], flags: u64, c: &Call) -> Result<usize, Fail> {
    with(k, fd, |k, s, nb| match send(k, s, data) {
        Err(Fail::E(EAGAIN)) if !nb && flags & MSG_DONTWAIT == 0 => {
            Err(time::block(time::deadline(k, c, None)))
        }
        r => r,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn recvfrom(
    k: &mut Kernel,
    fd: u64,
    buf: u64,
    len: u64,
    flags: u64,
    addr: u64,
    lenp: u64,
    c: &Call,
) -> Sys {
    let out = uaccess::slice_mut(buf, len.min(1 << 30) as usize)?;
    let n = recv_flags(k, fd, out, flags, c)?;
    if addr != 0 {
        name(k, fd, addr, lenp, true)?;
    }
    Ok(n as u64)
}

pub fn sendto(k: &mut Kernel, fd: u64, buf: u64, len: u64, flags: u64, c: &Call) -> Sys {
    let data = uaccess::slice(buf, len.min(1 << 30) as usize)?;
    send_flags(k, fd, data, flags, c).map(|n| n as u64)
}

/// `struct msghdr`'s iovec array.
fn msg_iov(msg: u64) -> Result<Vec<(u64, usize)>, Fail> {
    let m = uaccess::slice(msg, 56)?;
    let iov = u64::from_le_bytes(m[16..24].try_into().map_err(|_| Fail::E(EINVAL))?);
    let cnt = u64::from_le_bytes(m[24..32].try_into().map_err(|_| Fail::E(EINVAL))?);
    uaccess::iovecs(iov, cnt)
}

pub fn recvmsg(k: &mut Kernel, fd: u64, msg: u64, flags: u64, c: &Call) -> Sys {
    let iovs = msg_iov(msg)?;
    let mut tmp = vec![0u8; iovs.iter().map(|v| v.1).sum::<usize>().min(1 << 30)];
    let n = recv_flags(k, fd, &mut tmp, flags, c)?;
    let mut rest = &tmp[..n];
    for (base, len) in iovs {
        let m = len.min(rest.len());
        uaccess::put(base, &rest[..m])?;
        rest = &rest[m..];
    }
    // No name, no control data, no flags.
    uaccess::put_u32(msg + 8, 0)?;
    uaccess::put_u64(msg + 40, 0)?;
    uaccess::put_u32(msg + 48, 0)?;
    Ok(n as u64)
}

pub fn sendmsg(k: &mut Kernel, fd: u64, msg: u64, flags: u64, c: &Call) -> Sys {
    let mut data = Vec::new();
    for (base, len) in msg_iov(msg)? {
        data.extend_from_slice(uaccess::slice(base, len)?);
    }
    send_flags(k, fd, &data, flags, c).map(|n| n as u64)
}
