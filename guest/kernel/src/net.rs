//! A smoltcp `Device` over `VirtIONetRaw`.
//!
//! RX: every descriptor of the receive queue holds a posted 2 KiB buffer;
//! a received buffer goes back to the spare list when smoltcp has consumed
//! it and is re-posted by `refill`. TX: buffers come from a pool and stay
//! with their descriptor until `reap` sees the device's used entry. Nothing
//! here reads a virtio-mmio register: the device suppresses notifications
//! and only looks at the rings at sync calls.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::cmdline::Settings;
use crate::devices;
use crate::hal::GuestHal;

/// smoltcp's time for the guest's virtual time in nanoseconds.
pub fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

/// The guest's IP interface on `dev`: its address and default route from
/// the command line, smoltcp's randomness from the boot seed.
pub fn interface(dev: &mut Net, s: &Settings, seed: u64, now_ns: u64) -> Interface {
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(dev.mac())));
    cfg.random_seed = seed;
    let mut iface = Interface::new(cfg, dev, instant(now_ns));
    iface.update_ip_addrs(|a| {
        let _ = a.push(s.cidr());
    });
    if let Some(gw) = s.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    iface
}

/// Descriptors per queue (the device must offer at least this many).
pub const QUEUE_SIZE: usize = 256;
/// One frame plus the 12-byte virtio-net header, rounded up.
const BUF_SIZE: usize = 2048;
/// Ethernet frame without FCS at MTU 1500.
const MAX_FRAME: usize = 1514;

type Raw = VirtIONetRaw<GuestHal, MmioTransport<'static>, QUEUE_SIZE>;

struct Inner {
    raw: Raw,
    /// Posted RX buffers by descriptor token.
    rx: Vec<Option<Box<[u8]>>>,
    rx_spare: Vec<Box<[u8]>>,
    /// TX buffers in flight by token, with the length handed to the device.
    tx: Vec<Option<(Box<[u8]>, usize)>>,
    tx_spare: Vec<Box<[u8]>>,
}

/// The network device.
pub struct Net {
    inner: RefCell<Inner>,
    mac: [u8; 6],
}

impl Net {
    /// Initializes the device in the window at `mmio` and posts RX buffers.
    pub fn open(mmio: u64) -> Result<Net, &'static str> {
        let t = devices::open(mmio, DeviceType::Network)?;
        let raw = Raw::new(t).map_err(|_| "virtio-net init failed (queue size below 256?)")?;
        let mac = raw.mac_address();
        let mut inner = Inner {
            raw,
            rx: (0..QUEUE_SIZE).map(|_| None).collect(),
            rx_spare: (0..QUEUE_SIZE)
                .map(|_| vec![0u8; BUF_SIZE].into_boxed_slice())
                .collect(),
            tx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_spare: Vec::new(),
        };
        inner.refill();
        Ok(Net {
            inner: RefCell::new(inner),
            mac,
        })
    }

    /// The MAC address from the device's config space.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Takes back TX buffers the device has used and re-posts RX buffers.
    pub fn maintain(&mut self) {
        let inner = self.inner.get_mut();
        inner.reap_tx();
        inner.refill();
    }

    /// Frames waiting in the RX used ring.
    pub fn rx_pending(&self) -> bool {
        self.inner.borrow().raw.poll_receive().is_some()
    }
}

impl Inner {
    fn refill(&mut self) {
        while let Some(mut buf) = self.rx_spare.pop() {
            // SAFETY: the buffer is kept in `rx` by its token, untouched,
            // until `poll_receive` returns that token and it is completed.
            match unsafe { self.raw.receive_begin(&mut buf) } {
                Ok(tok) if usize::from(tok) < QUEUE_SIZE => self.rx[usize::from(tok)] = Some(buf),
                _ => {
                    self.rx_spare.push(buf);
                    break;
                }
            }
        }
    }

    fn reap_tx(&mut self) {
        while let Some(tok) = self.raw.poll_transmit() {
            let Some((buf, len)) = self.tx.get_mut(usize::from(tok)).and_then(Option::take) else {
                panic!("virtio-net: used TX token {tok} unknown");
            };
            // SAFETY: the same buffer and length that transmit_begin got.
            if unsafe { self.raw.transmit_complete(tok, &buf[..len]) }.is_err() {
                panic!("virtio-net: TX completion out of order");
            }
            self.tx_spare.push(buf);
        }
    }
}

/// A received frame.
pub struct RxToken<'a> {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
    net: &'a RefCell<Inner>,
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    net: &'a RefCell<Inner>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buf[self.start..self.start + self.len]);
        self.net.borrow_mut().rx_spare.push(self.buf);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (mut buf, hdr) = {
            let mut n = self.net.borrow_mut();
            let mut buf = n
                .tx_spare
                .pop()
                .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice());
            let hdr = n.raw.fill_buffer_header(&mut buf).unwrap_or(12);
            (buf, hdr)
        };
        let len = len.min(BUF_SIZE - hdr);
        let r = f(&mut buf[hdr..hdr + len]);
        let total = hdr + len;
        let mut n = self.net.borrow_mut();
        // SAFETY: the buffer is parked in `tx` by its token and not touched
        // until `reap_tx` sees the token used.
        match unsafe { n.raw.transmit_begin(&buf[..total]) } {
            Ok(tok) if usize::from(tok) < QUEUE_SIZE => {
                n.tx[usize::from(tok)] = Some((buf, total));
            }
            // No descriptor: the frame is dropped (TCP resends it).
            _ => n.tx_spare.push(buf),
        }
        r
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let inner = self.inner.get_mut();
        if !inner.raw.can_send() {
            // No TX descriptor for a reply: leave the frame for later.
            return None;
        }
        let tok = inner.raw.poll_receive()?;
        let Some(mut buf) = inner.rx.get_mut(usize::from(tok)).and_then(Option::take) else {
            panic!("virtio-net: used RX token {tok} unknown");
        };
        // SAFETY: the same buffer that receive_begin got for this token.
        let (start, len) = match unsafe { inner.raw.receive_complete(tok, &mut buf) } {
            Ok(v) => v,
            Err(_) => {
                // A runt (shorter than the header): recycle the buffer.
                inner.rx_spare.push(buf);
                return None;
            }
        };
        let len = len.min(BUF_SIZE - start);
        let net = &self.inner;
        Some((
            RxToken {
                buf,
                start,
                len,
                net,
            },
            TxToken { net },
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxToken<'_>> {
        if !self.inner.get_mut().raw.can_send() {
            return None;
        }
        Some(TxToken { net: &self.inner })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MAX_FRAME;
        c
    }
}
