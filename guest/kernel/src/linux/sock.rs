//! TCP sockets on the guest's smoltcp stack (IPv4; IPv6 and UNIX sockets
//! are `EAFNOSUPPORT`, which redis tolerates for its optional `::*`).
//!
//! smoltcp has no SYN queue: a listening socket *becomes* the connection.
//! So `listen` keeps a pool of listening sockets on the port (up to the
//! backlog, at most [`MAX_POOL`]); one that leaves LISTEN joins the accept
//! queue, and the pool is topped up whenever the app looks at the listener
//! (`accept`, `epoll_wait`). Frames leave and arrive only at sync calls.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use linux_raw_sys::errno::{
    EAFNOSUPPORT, EAGAIN, EALREADY, ECONNREFUSED, EINPROGRESS, EINVAL, EISCONN, ENOTCONN, ENOTSOCK,
    EPIPE, EPROTONOSUPPORT,
};
use linux_raw_sys::general as g;
use linux_raw_sys::net as n;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

use super::fd::{Kind, Ofd};
use super::kernel::Kernel;
pub use super::netstack::NetStack;
use super::{Call, Fail, Sys, time, uaccess};

/// Most listening sockets one port keeps ready.
pub const MAX_POOL: usize = 128;
pub(super) const SOCK_STREAM: u64 = 1;
pub(super) const IPPROTO_TCP: u32 = n::IPPROTO_TCP as u32;

/// A socket descriptor's state.
pub enum Socket {
    Fresh {
        port: u16,
        nodelay: bool,
    },
    Listening {
        port: u16,
        target: usize,
        pool: Vec<SocketHandle>,
        queue: VecDeque<SocketHandle>,
        nodelay: bool,
    },
    Conn {
        h: SocketHandle,
    },
    Closed,
}

pub(super) fn net(k: &mut Kernel) -> Result<&mut NetStack, Fail> {
    k.net
        .as_mut()
        .ok_or(Fail::E(linux_raw_sys::errno::ENETDOWN))
}

/// Runs `f` on the socket behind `fd`.
pub(super) fn with<T>(
    k: &mut Kernel,
    fd: u64,
    f: impl FnOnce(&mut Kernel, &mut Socket, bool) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let file = k.fds.get(fd)?;
    let mut o = file.try_borrow_mut().map_err(|_| Fail::E(EINVAL))?;
    let nb = o.nonblocking();
    match &mut o.kind {
        Kind::Socket(s) => f(k, s, nb),
        _ => Err(ENOTSOCK.into()),
    }
}

pub fn socket(k: &mut Kernel, domain: u64, ty: u64, proto: u64) -> Sys {
    if domain != u64::from(n::AF_INET) {
        return Err(EAFNOSUPPORT.into());
    }
    if ty & 0xf != SOCK_STREAM || (proto != 0 && proto != 6) {
        return Err(EPROTONOSUPPORT.into());
    }
    net(k)?;
    let flags = g::O_RDWR
        | if ty & u64::from(g::O_NONBLOCK) != 0 {
            g::O_NONBLOCK
        } else {
            0
        };
    let cloexec = ty & u64::from(g::O_CLOEXEC) != 0;
    k.fds.install(
        Ofd::new(
            Kind::Socket(Socket::Fresh {
                port: 0,
                nodelay: false,
            }),
            flags,
        ),
        cloexec,
        0,
    )
}

/// A `sockaddr_in`: (address, port).
fn read_addr(addr: u64, len: u64) -> Result<(Ipv4Address, u16), Fail> {
    if len < 8 {
        return Err(EINVAL.into());
    }
    let b = uaccess::slice(addr, 8)?;
    if u16::from_le_bytes([b[0], b[1]]) != n::AF_INET as u16 {
        return Err(EAFNOSUPPORT.into());
    }
    Ok((
        Ipv4Address::new(b[4], b[5], b[6], b[7]),
        u16::from_be_bytes([b[2], b[3]]),
    ))
}

fn write_addr(ep: Option<IpEndpoint>, addr: u64, lenp: u64) -> Result<(), Fail> {
    if addr == 0 {
        return Ok(());
    }
    let room = uaccess::get_u32(lenp)? as usize;
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(n::AF_INET as u16).to_le_bytes());
    if let Some(ep) = ep {
        b[2..4].copy_from_slice(&ep.port.to_be_bytes());
        let IpAddress::Ipv4(a) = ep.addr;
        b[4..8].copy_from_slice(&a.octets());
    }
    uaccess::put(addr, &b[..room.min(16)])?;
    uaccess::put_u32(lenp, 16)
}

pub fn bind(k: &mut Kernel, fd: u64, addr: u64, len: u64) -> Sys {
    let (_, p) = read_addr(addr, len)?;
    with(k, fd, |k, s, _| match s {
        Socket::Fresh { port, .. } => {
            *port = if p == 0 { next_port(net(k)?) } else { p };
            Ok(0)
        }
        _ => Err(EINVAL.into()),
    })
}

fn next_port(n: &mut NetStack) -> u16 {
    n.next_port = if n.next_port >= 65000 {
        49152
    } else {
        n.next_port + 1
    };
    n.next_port
}

pub fn listen(k: &mut Kernel, fd: u64, backlog: u64) -> Sys {
    with(k, fd, |k, s, _| {
        let (port, nodelay) = match s {
            Socket::Fresh { port, nodelay } => (*port, *nodelay),
            Socket::Listening { .. } => return Ok(0),
            _ => return Err(EINVAL.into()),
        };
        let port = if port == 0 { next_port(net(k)?) } else { port };
        *s = Socket::Listening {
            port,
            target: (backlog as i32).clamp(1, MAX_POOL as i32) as usize,
            pool: Vec::new(),
            queue: VecDeque::new(),
            nodelay,
        };
        refresh(net(k)?, s)?;
        Ok(0)
    })
}

/// Moves pool sockets that got a connection to the accept queue, drops
/// queued ones that died, and tops the pool up.
fn refresh(n: &mut NetStack, s: &mut Socket) -> Result<(), Fail> {
    let Socket::Listening {
        port,
        target,
        pool,
        queue,
        nodelay,
    } = s
    else {
        return Ok(());
    };
    let mut i = 0;
    while i < pool.len() {
        if n.tcp(pool[i]).state() == State::Listen {
            i += 1;
        } else {
            queue.push_back(pool.swap_remove(i));
        }
    }
    queue.retain(|h| {
        let st = n.sockets.get::<tcp::Socket>(*h).state();
        // A reset handshake goes back to LISTEN in smoltcp: that one is gone.
        if matches!(st, State::Closed | State::Listen | State::TimeWait) {
            n.sockets.remove(*h);
            false
        } else {
            true
        }
    });
    while pool.len() < *target {
        let h = n.new_socket();
        let t = n.tcp(h);
        t.set_nagle_enabled(!*nodelay);
        if t.listen(*port).is_err() {
            n.sockets.remove(h);
            return Err(EINVAL.into());
        }
        pool.push(h);
    }
    Ok(())
}

fn acceptable(st: State) -> bool {
    matches!(st, State::Established | State::CloseWait)
}

pub fn accept(k: &mut Kernel, fd: u64, addr: u64, lenp: u64, flags: u64, c: &Call) -> Sys {
    let h = with(k, fd, |k, s, nb| {
        let n = net(k)?;
        refresh(n, s)?;
        let Socket::Listening { queue, .. } = s else {
            return Err(EINVAL.into());
        };
        match queue
            .iter()
            .position(|h| acceptable(n.sockets.get::<tcp::Socket>(*h).state()))
        {
            Some(i) => queue.remove(i).ok_or(Fail::E(EAGAIN)),
            None if nb => Err(EAGAIN.into()),
            None => Err(time::block(time::deadline(k, c, None))),
        }
    })?;
    let peer = net(k)?.tcp(h).remote_endpoint();
    let nb = if flags & u64::from(g::O_NONBLOCK) != 0 {
        g::O_NONBLOCK
    } else {
        0
    };
    let fd = k.fds.install(
        Ofd::new(Kind::Socket(Socket::Conn { h }), g::O_RDWR | nb),
        flags & u64::from(g::O_CLOEXEC) != 0,
        0,
    )?;
    k.stats.accepted += 1;
    write_addr(peer, addr, lenp)?;
    Ok(fd)
}

pub fn connect(k: &mut Kernel, fd: u64, addr: u64, len: u64, c: &Call) -> Sys {
    let (ip, port) = read_addr(addr, len)?;
    with(k, fd, |k, s, nb| {
        let n = net(k)?;
        if let Socket::Conn { h } = s {
            return match n.tcp(*h).state() {
                State::Established | State::CloseWait if c.deadline.is_some() => Ok(0),
                State::Established | State::CloseWait => Err(EISCONN.into()),
                State::Closed => Err(ECONNREFUSED.into()),
                _ if nb => Err(EALREADY.into()),
                _ => Err(time::block(time::deadline(k, c, None))),
            };
        }
        let Socket::Fresh {
            port: local,
            nodelay,
        } = *s
        else {
            return Err(EINVAL.into());
        };
        let local = if local == 0 { next_port(n) } else { local };
        let h = n.new_socket();
        n.tcp(h).set_nagle_enabled(!nodelay);
        let ctx = n.iface.context();
        if n.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(ctx, (ip, port), local)
            .is_err()
        {
            n.sockets.remove(h);
            return Err(ECONNREFUSED.into());
        }
        *s = Socket::Conn { h };
        if nb {
            Err(EINPROGRESS.into())
        } else {
            Err(time::block(time::deadline(k, c, None)))
        }
    })
}

/// Reads what the connection has; `EAGAIN` if nothing yet, 0 at its end.
pub fn recv(k: &mut Kernel, s: &mut Socket, buf: &mut [u8]) -> Result<usize, Fail> {
    let Socket::Conn { h } = s else {
        return Err(ENOTCONN.into());
    };
    let t = net(k)?.tcp(*h);
    if t.can_recv() {
        let n = t.recv_slice(buf).unwrap_or(0);
        k.stats.bytes_in += n as u64;
        return Ok(n);
    }
    if !t.may_recv() && t.state() != State::SynSent && t.state() != State::SynReceived {
        return Ok(0);
    }
    Err(EAGAIN.into())
}

/// Queues what fits of `data`; `EAGAIN` if nothing fits, `EPIPE` once the
/// connection can no longer send.
pub fn send(k: &mut Kernel, s: &mut Socket, data: &[u8]) -> Result<usize, Fail> {
    let Socket::Conn { h } = s else {
        return Err(ENOTCONN.into());
    };
    let t = net(k)?.tcp(*h);
    if matches!(t.state(), State::SynSent | State::SynReceived) {
        return Err(EAGAIN.into());
    }
    if !t.may_send() {
        return Err(EPIPE.into());
    }
    if !t.can_send() {
        return Err(EAGAIN.into());
    }
    let n = t.send_slice(data).unwrap_or(0);
    k.stats.bytes_out += n as u64;
    Ok(n)
}

/// Readiness (EPOLL* bits).
pub fn ready(k: &mut Kernel, s: &mut Socket) -> u32 {
    let Some(n) = k.net.as_mut() else {
        return g::EPOLLHUP;
    };
    match s {
        Socket::Fresh { .. } | Socket::Closed => g::EPOLLOUT | g::EPOLLHUP,
        Socket::Listening { .. } => {
            let _ = refresh(n, s);
            let Socket::Listening { queue, .. } = s else {
                return 0;
            };
            if queue
                .iter()
                .any(|h| acceptable(n.sockets.get::<tcp::Socket>(*h).state()))
            {
                g::EPOLLIN
            } else {
                0
            }
        }
        Socket::Conn { h } => {
            let t = n.tcp(*h);
            let st = t.state();
            if matches!(st, State::SynSent | State::SynReceived) {
                return 0;
            }
            let mut m = 0;
            if t.can_recv() || !t.may_recv() {
                m |= g::EPOLLIN | g::EPOLLRDNORM;
            }
            if !t.may_recv() {
                m |= g::EPOLLRDHUP;
            }
            if t.can_send() {
                m |= g::EPOLLOUT | g::EPOLLWRNORM;
            }
            if st == State::Closed || st == State::TimeWait {
                m |= g::EPOLLHUP;
            }
            m
        }
    }
}

/// Bytes waiting to be read (FIONREAD).
pub fn pending(k: &mut Kernel, s: &Socket) -> u32 {
    match (s, k.net.as_mut()) {
        (Socket::Conn { h }, Some(n)) => n.tcp(*h).recv_queue() as u32,
        _ => 0,
    }
}

/// The last descriptor closed: a connection finishes in the background.
pub fn close(k: &mut Kernel, s: &mut Socket) {
    let Some(n) = k.net.as_mut() else { return };
    match core::mem::replace(s, Socket::Closed) {
        Socket::Conn { h } => {
            n.tcp(h).close();
            n.draining.push(h);
        }
        Socket::Listening { pool, queue, .. } => {
            for h in pool.into_iter().chain(queue) {
                n.tcp(h).abort();
                n.draining.push(h);
            }
        }
        _ => {}
    }
}

pub fn shutdown(k: &mut Kernel, fd: u64, how: u64) -> Sys {
    with(k, fd, |k, s, _| match s {
        Socket::Conn { h } => {
            if how != u64::from(n::SHUT_RD) {
                net(k)?.tcp(*h).close();
            }
            Ok(0)
        }
        _ => Err(ENOTCONN.into()),
    })
}

pub fn name(k: &mut Kernel, fd: u64, addr: u64, lenp: u64, peer: bool) -> Sys {
    let ep = with(k, fd, |k, s, _| {
        Ok(match s {
            Socket::Conn { h } => {
                let t = net(k)?.tcp(*h);
                if peer {
                    t.remote_endpoint()
                } else {
                    t.local_endpoint()
                }
            }
            _ if peer => return Err(ENOTCONN.into()),
            Socket::Fresh { port, .. } | Socket::Listening { port, .. } => Some(IpEndpoint::new(
                IpAddress::Ipv4(Ipv4Address::UNSPECIFIED),
                *port,
            )),
            Socket::Closed => None,
        })
    })?;
    write_addr(ep, addr, lenp)?;
    Ok(0)
}
