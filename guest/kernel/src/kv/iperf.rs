//! The iperf3 service on port 5201: smoltcp sockets around the pure
//! protocol logic in `lockstep_guest_services::iperf`. Like the RESP and
//! HTTP services, every free slot has its own listening socket (smoltcp has
//! no SYN queue); a listener that gets a connection becomes it.

use alloc::vec;
use alloc::vec::Vec;

use lockstep_guest_services::iperf::{self, ConnId, Server};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};

use crate::say;

/// Connections at once: a control connection, the streams, and spares that
/// are told the server is busy.
const SLOTS: usize = 1 + iperf::MAX_STREAMS + 2;
/// Socket buffers: a bulk stream needs a window of a few hundred KiB to
/// fill a link whose round trip includes the VMM's exits (window scaling
/// is on above 64 KiB).
const RX_BUF: usize = 256 * 1024;
const TX_BUF: usize = 256 * 1024;

/// The iperf3 service's sockets and state.
pub struct Service {
    server: Server,
    listeners: Vec<SocketHandle>,
    conns: Vec<(SocketHandle, ConnId)>,
    /// Closed sockets still sending their last bytes and FIN.
    draining: Vec<SocketHandle>,
    next_id: ConnId,
}

/// Closing sockets kept until their peer has everything; past this the
/// oldest are aborted.
const MAX_DRAINING: usize = 32;

fn listener(sockets: &mut SocketSet<'static>) -> SocketHandle {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; RX_BUF]),
        tcp::SocketBuffer::new(vec![0u8; TX_BUF]),
    );
    // Control messages are single bytes that must not wait for Nagle.
    s.set_nagle_enabled(false);
    if s.listen(iperf::PORT).is_err() {
        panic!("listen on port {} failed", iperf::PORT);
    }
    sockets.add(s)
}

impl Service {
    pub fn new(sockets: &mut SocketSet<'static>) -> Service {
        let mut s = Service {
            server: Server::new(),
            listeners: Vec::new(),
            conns: Vec::new(),
            draining: Vec::new(),
            next_id: 0,
        };
        s.top_up(sockets);
        s
    }

    fn top_up(&mut self, sockets: &mut SocketSet<'static>) {
        while self.listeners.len() + self.conns.len() < SLOTS {
            self.listeners.push(listener(sockets));
        }
    }

    /// One pass: accept, feed received bytes, send control bytes and (in a
    /// reverse test) payload, close what is over. True if a stream could
    /// take more payload than it got this time (do not wait).
    pub fn service(&mut self, sockets: &mut SocketSet<'static>, now_ns: u64) -> bool {
        let mut i = 0;
        while i < self.listeners.len() {
            let h = self.listeners[i];
            if sockets.get::<tcp::Socket>(h).state() == State::Listen {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            self.next_id = self.next_id.wrapping_add(1);
            self.server.open(self.next_id);
            self.conns.push((h, self.next_id));
        }
        let mut more = false;
        let mut k = 0;
        while k < self.conns.len() {
            let (h, id) = self.conns[k];
            let s = sockets.get_mut::<tcp::Socket>(h);
            let server = &mut self.server;
            while s.can_recv() {
                match s.recv(|b| {
                    server.input(id, b, now_ns);
                    (b.len(), b.len())
                }) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let out = server.output(id);
            if !out.is_empty()
                && let Ok(n) = s.send_slice(out)
            {
                server.consume(id, n);
            }
            let room = server.payload_room(id);
            if room > 0 && s.can_send() {
                if let Ok(n) = s.send(|b| {
                    let n = b.len().min(room);
                    Server::fill(&mut b[..n]);
                    (n, n)
                }) {
                    server.sent(id, n);
                }
                // The ring buffer wraps: one send may stop at its end.
                more |= server.payload_room(id) > 0 && s.send_queue() < s.send_capacity();
            }
            let gone = !s.is_open() || s.state() == State::Listen;
            if gone || server.should_close(id) {
                if gone {
                    s.abort();
                } else {
                    s.close();
                }
                server.closed(id);
                self.conns.swap_remove(k);
                self.draining.push(h);
                continue;
            }
            k += 1;
        }
        self.reap(sockets);
        if let Some(r) = self.server.take_report() {
            let mbit = r.bytes.saturating_mul(8_000) / r.duration_ns.max(1);
            say!(
                "iperf: {} {} bytes on {} stream(s) in {} ms (~{} Mbit/s)",
                if r.reverse { "sent" } else { "received" },
                r.bytes,
                r.streams,
                r.duration_ns / 1_000_000,
                mbit
            );
        }
        self.top_up(sockets);
        more
    }

    /// Removes closed sockets once their peer has everything (CLOSED or
    /// TIME-WAIT); discards what they still receive.
    fn reap(&mut self, sockets: &mut SocketSet<'static>) {
        let excess = self.draining.len().saturating_sub(MAX_DRAINING);
        for (n, h) in self.draining.iter().enumerate() {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            while let Ok(k) = s.recv(|b| (b.len(), b.len())) {
                if k == 0 {
                    break;
                }
            }
            if n < excess {
                s.abort();
            }
        }
        self.draining.retain(|h| {
            let st = sockets.get::<tcp::Socket>(*h).state();
            if matches!(st, State::Closed | State::TimeWait) {
                sockets.remove(*h);
                false
            } else {
                true
            }
        });
    }
}
