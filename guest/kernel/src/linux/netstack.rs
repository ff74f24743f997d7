//! The guest's network stack for the personality: the virtio-net device,
//! smoltcp's interface and every socket. It moves frames only around sync
//! calls: what the app sent leaves at the next one, what arrived is taken
//! right after it.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;

use crate::cmdline::Settings;
use crate::net::{self, Net, instant};

/// Receive and send buffer of each connection.
pub const RX_BUF: usize = 32 * 1024;
pub const TX_BUF: usize = 32 * 1024;

/// The interface, its device and every socket.
pub struct NetStack {
    dev: Net,
    pub(super) iface: Interface,
    pub(super) sockets: SocketSet<'static>,
    /// Closed by the app, still finishing (FIN, TIME-WAIT).
    pub(super) draining: Vec<SocketHandle>,
    pub(super) next_port: u16,
}

impl NetStack {
    pub fn new(mut dev: Net, s: &Settings, seed: u64, now: u64) -> NetStack {
        let iface = net::interface(&mut dev, s, seed, now);
        NetStack {
            dev,
            iface,
            sockets: SocketSet::new(vec![]),
            draining: Vec::new(),
            next_port: 49152 + (seed % 8192) as u16,
        }
    }

    fn poll(&mut self, now: u64) {
        self.dev.maintain();
        self.iface
            .poll(instant(now), &mut self.dev, &mut self.sockets);
        self.dev.maintain();
    }

    pub fn before_sync(&mut self, now: u64) {
        self.poll(now);
    }

    pub fn after_sync(&mut self, now: u64) {
        self.poll(now);
        let sockets = &mut self.sockets;
        self.draining.retain(|h| {
            if sockets.get::<tcp::Socket>(*h).state() == State::Closed {
                sockets.remove(*h);
                false
            } else {
                true
            }
        });
    }

    pub fn rx_pending(&self) -> bool {
        self.dev.rx_pending()
    }

    /// How soon smoltcp has timers to run (retransmits, delayed ACKs).
    pub fn poll_delay_ns(&mut self, now: u64) -> Option<u64> {
        self.iface
            .poll_delay(instant(now), &self.sockets)
            .map(|d: Duration| d.total_micros().saturating_mul(1000))
    }

    pub(super) fn new_socket(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; RX_BUF]),
            tcp::SocketBuffer::new(vec![0u8; TX_BUF]),
        );
        s.set_ack_delay(None);
        self.sockets.add(s)
    }

    pub(super) fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}
