//! TCP connection management for the RESP and HTTP services.
//!
//! smoltcp sockets accept one connection each and smoltcp has no SYN queue,
//! so each port keeps one listening socket per free client slot plus a few
//! spares; a listener that gets a connection becomes that connection's
//! socket and a fresh listener is opened when a slot frees up. Sockets are
//! created and removed as connections come and go, so a socket in
//! TIME-WAIT never blocks a new client. Connections beyond a service's
//! limit land on the spares, are told the limit (Redis's `-ERR max number
//! of clients reached`, HTTP 503) and closed; SYNs beyond the spares in one
//! loop iteration are refused (RST).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use lockstep_guest_services::limits::{HTTP_PORT, MAX_HTTP_CLIENTS, MAX_RESP_CLIENTS, RESP_PORT};
use lockstep_guest_services::session::Progress;
use lockstep_guest_services::{Engine, HttpSession, RespSession};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};

/// Listening sockets beyond the free client slots: clients that connect
/// while the service is full are accepted (up to this many per loop
/// iteration) and told so, instead of being reset. Every free client slot
/// has its own listener, because clients connect in bursts
/// (redis-benchmark opens all of its connections at once) and smoltcp has
/// no SYN queue: a SYN that finds no listener is answered with RST.
const RESP_SPARE: usize = 16;
const HTTP_SPARE: usize = 8;
/// Socket buffers: a pipeline of 16 requests (redis-benchmark -P 16) fits
/// many times over; large values stream through.
const RX_BUF: usize = 16 * 1024;
const TX_BUF: usize = 32 * 1024;
/// Closed sockets kept until they leave TIME-WAIT; past this the oldest
/// are aborted.
const MAX_DRAINING: usize = 1024;
/// Bytes a closing connection may still send (and we discard, so the client
/// can finish its write and read our last reply) before it is reset.
const MAX_DISCARD: usize = 4 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Resp,
    Http,
}

enum Session {
    Resp(RespSession),
    Http(HttpSession),
}

impl Session {
    fn input_room(&self) -> usize {
        match self {
            Session::Resp(s) => s.input_room(),
            Session::Http(s) => s.input_room(),
        }
    }
    fn push_input(&mut self, d: &[u8]) {
        match self {
            Session::Resp(s) => s.push_input(d),
            Session::Http(s) => s.push_input(d),
        }
    }
    fn memory(&self) -> usize {
        match self {
            Session::Resp(s) => s.memory(),
            Session::Http(s) => s.memory(),
        }
    }
    fn evict(&mut self) {
        match self {
            Session::Resp(s) => s.evict(),
            Session::Http(s) => s.evict(),
        }
    }
    fn process(&mut self, e: &mut Engine) -> Progress {
        match self {
            Session::Resp(s) => s.process(e),
            Session::Http(s) => s.process(e),
        }
    }
    fn sendable(&mut self, durable: u64) -> &[u8] {
        match self {
            Session::Resp(s) => s.sendable(durable),
            Session::Http(s) => s.sendable(durable),
        }
    }
    fn consume(&mut self, n: usize) {
        match self {
            Session::Resp(s) => s.consume(n),
            Session::Http(s) => s.consume(n),
        }
    }
    fn finished(&self) -> bool {
        match self {
            Session::Resp(s) => s.finished(),
            Session::Http(s) => s.finished(),
        }
    }
    fn output_pending(&self) -> usize {
        match self {
            Session::Resp(s) => s.output_pending(),
            Session::Http(s) => s.output_pending(),
        }
    }
}

struct Conn {
    handle: SocketHandle,
    proto: Proto,
    /// Counted against the service's client limit.
    admitted: bool,
    session: Session,
}

/// What one service pass found.
#[derive(Clone, Copy, Default)]
pub struct Turn {
    /// Some session stopped at its per-turn budget: do not wait.
    pub more: bool,
}

/// All listeners and connections.
pub struct Server {
    listeners: Vec<(SocketHandle, Proto)>,
    conns: Vec<Conn>,
    /// Sockets whose session is over: (handle, bytes discarded since).
    draining: Vec<(SocketHandle, usize)>,
    resp_clients: usize,
    http_clients: usize,
    /// Memory all connections together may hold (buffered requests and
    /// unsent replies); past it the biggest is closed. Each connection's
    /// own limits are generous (a 4 MiB request), so hostile clients could
    /// otherwise exhaust the guest's heap together.
    memory_budget: usize,
}

fn port(p: Proto) -> u16 {
    match p {
        Proto::Resp => RESP_PORT,
        Proto::Http => HTTP_PORT,
    }
}

fn listener(sockets: &mut SocketSet<'static>, p: Proto) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; RX_BUF]),
        tcp::SocketBuffer::new(vec![0u8; TX_BUF]),
    );
    // Request/response traffic: no Nagle delay, no delayed ACKs (a reply
    // carries the ACK anyway).
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    if s.listen(port(p)).is_err() {
        panic!("listen on port {} failed", port(p));
    }
    sockets.add(s)
}

impl Server {
    /// Opens the listening sockets; the connections may hold at most
    /// `memory_budget` bytes together.
    pub fn new(sockets: &mut SocketSet<'static>, memory_budget: usize) -> Self {
        let mut s = Server {
            listeners: Vec::new(),
            conns: Vec::new(),
            draining: Vec::new(),
            resp_clients: 0,
            http_clients: 0,
            memory_budget,
        };
        s.top_up(sockets);
        s
    }

    /// Keeps one listener per free client slot plus the spares.
    fn top_up(&mut self, sockets: &mut SocketSet<'static>) {
        for (p, want) in [
            (
                Proto::Resp,
                MAX_RESP_CLIENTS - self.resp_clients + RESP_SPARE,
            ),
            (
                Proto::Http,
                MAX_HTTP_CLIENTS - self.http_clients + HTTP_SPARE,
            ),
        ] {
            let have = self.listeners.iter().filter(|l| l.1 == p).count();
            for _ in have..want {
                self.listeners.push((listener(sockets, p), p));
            }
        }
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Turns listeners that received a connection into sessions.
    fn accept(&mut self, e: &mut Engine, sockets: &mut SocketSet<'static>) {
        let mut i = 0;
        while i < self.listeners.len() {
            let (h, p) = self.listeners[i];
            let s = sockets.get_mut::<tcp::Socket>(h);
            if s.state() == State::Listen {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            let addr = s
                .remote_endpoint()
                .map(|ep| format!("{ep}").into_bytes())
                .unwrap_or_default();
            let laddr = s
                .local_endpoint()
                .map(|ep| format!("{ep}").into_bytes())
                .unwrap_or_default();
            let (session, admitted) = match p {
                Proto::Resp if self.resp_clients < MAX_RESP_CLIENTS => {
                    self.resp_clients += 1;
                    e.stats.total_connections += 1;
                    (Session::Resp(RespSession::new(e, addr, laddr)), true)
                }
                Proto::Resp => {
                    e.stats.rejected_connections += 1;
                    (Session::Resp(RespSession::refused(e)), false)
                }
                Proto::Http if self.http_clients < MAX_HTTP_CLIENTS => {
                    self.http_clients += 1;
                    (Session::Http(HttpSession::new()), true)
                }
                Proto::Http => {
                    e.stats.rejected_connections += 1;
                    (Session::Http(HttpSession::refused()), false)
                }
            };
            self.conns.push(Conn {
                handle: h,
                proto: p,
                admitted,
                session,
            });
        }
        self.top_up(sockets);
        e.stats.connected_clients = self.resp_clients as u64;
        e.stats.http_clients = self.http_clients as u64;
    }

    fn release(&mut self, c: &Conn) {
        if c.admitted {
            match c.proto {
                Proto::Resp => self.resp_clients -= 1,
                Proto::Http => self.http_clients -= 1,
            }
        }
    }

    /// One pass over every connection: take input (unless `accepting` is
    /// false: the guest is stopping), execute, send what may leave, close
    /// what is done.
    pub fn service(
        &mut self,
        e: &mut Engine,
        sockets: &mut SocketSet<'static>,
        accepting: bool,
    ) -> Turn {
        let mut turn = Turn::default();
        if accepting {
            self.accept(e, sockets);
        }
        let mut i = 0;
        while i < self.conns.len() {
            let c = &mut self.conns[i];
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            let mut progress = Progress::default();
            if accepting {
                while s.can_recv() {
                    let room = c.session.input_room();
                    if room == 0 {
                        break;
                    }
                    let session = &mut c.session;
                    let got = s.recv(|b| {
                        let n = b.len().min(room);
                        session.push_input(&b[..n]);
                        (n, n)
                    });
                    if got.unwrap_or(0) == 0 {
                        break;
                    }
                }
                progress = c.session.process(e);
                turn.more |= progress.more;
            }
            let durable = e.durable();
            let out = c.session.sendable(durable);
            if !out.is_empty()
                && s.can_send()
                && let Ok(n) = s.send_slice(out)
            {
                c.session.consume(n);
            }
            // Close: the session is done; or the peer finished sending and
            // everything it asked for has been answered; or the socket died.
            let peer_fin = matches!(
                s.state(),
                State::CloseWait | State::LastAck | State::Closing | State::TimeWait
            );
            let peer_done = peer_fin && !progress.more && c.session.output_pending() == 0;
            // A handshake reset by the peer puts smoltcp's socket back into
            // LISTEN: that connection is gone too.
            let reset = s.state() == State::Listen;
            let dead = !s.is_open() || reset;
            if c.session.finished() || peer_done || dead {
                if reset {
                    s.abort();
                } else if !dead {
                    s.close();
                }
                let c = self.conns.swap_remove(i);
                self.release(&c);
                self.draining.push((c.handle, 0));
                continue;
            }
            i += 1;
        }
        self.enforce_budget();
        self.reap(sockets);
        if accepting {
            self.top_up(sockets);
        }
        e.stats.connected_clients = self.resp_clients as u64;
        e.stats.http_clients = self.http_clients as u64;
        turn
    }

    /// Closes the connections holding the most memory until all together
    /// fit the budget again.
    fn enforce_budget(&mut self) {
        let mut total: usize = self.conns.iter().map(|c| c.session.memory()).sum();
        while total > self.memory_budget {
            let Some(biggest) = self.conns.iter_mut().max_by_key(|c| c.session.memory()) else {
                break;
            };
            let freed = biggest.session.memory();
            biggest.session.evict();
            total = total.saturating_sub(freed);
            if freed == 0 {
                break;
            }
        }
    }

    /// Discards what closed connections still receive (a client blocked
    /// writing a rejected request could otherwise never read our error and
    /// FIN), removes sockets that reached CLOSED, and resets those that
    /// send too much or linger when too many do.
    fn reap(&mut self, sockets: &mut SocketSet<'static>) {
        let excess = self.draining.len().saturating_sub(MAX_DRAINING);
        for (n, (h, discarded)) in self.draining.iter_mut().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            while s.can_recv() {
                match s.recv(|b| (b.len(), b.len())) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => *discarded += k,
                }
            }
            if n < excess || *discarded > MAX_DISCARD {
                s.abort();
            }
        }
        self.draining.retain(|(h, _)| {
            if sockets.get::<tcp::Socket>(*h).state() == State::Closed {
                sockets.remove(*h);
                false
            } else {
                true
            }
        });
    }
}
