//! The virtio-net device model. It runs on the vCPU thread, only while the
//! VMM handles an exit. The guest never kicks and takes no interrupts: the
//! VMM calls `take_tx` and `deliver_rx` at its sync calls. Every change to
//! guest memory is a function of guest memory, the order of calls and the
//! frames passed in, so a backup replaying the logged frames at the same
//! exits ends with identical memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use crate::NetError;
use crate::frame::{
    HDR_F_NEEDS_CSUM, MAX_FRAME_LEN, MIN_FRAME_LEN, MIN_RX_BUFFER, NET_HDR_LEN, rx_header,
};
use virtq::{Segment, WarnLimiter};

/// virtio device type of a network device.
pub const DEVICE_TYPE_NET: u32 = 1;
/// Largest queue the device accepts (the transport's `QueueMaxSize`).
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Buffers per chain the device walks before calling the chain malformed.
const MAX_CHAIN_BUFFERS: usize = 64;

const VIRTIO_F_VERSION_1: u32 = 32;
const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
const VIRTIO_NET_F_MAC: u32 = 5;
const VIRTIO_NET_F_STATUS: u32 = 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Counters the VMM can read at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames taken from the TX queue.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// TX frames dropped for their size (runt or over `MAX_FRAME_LEN`).
    pub tx_dropped: u64,
    /// TX chains dropped as malformed (broken chain, writable buffers,
    /// offload requests that were not negotiated).
    pub tx_malformed: u64,
    /// Frames placed into RX buffers.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames `deliver_rx` refused (too large, broken ring).
    pub rx_dropped: u64,
    /// RX chains returned unused as malformed (broken, read-only, too small).
    pub rx_malformed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TxChain,
    TxWritable,
    TxSize,
    TxOffload,
    RxChain,
    RxReadOnly,
    RxSmall,
    Ring,
}

/// The virtio-net device model.
#[derive(Debug)]
pub struct NetDevice {
    mac: [u8; 6],
    rx: Option<Queue>,
    tx: Option<Queue>,
    stats: NetStats,
    warn: WarnLimiter,
    rx_event: bool,
    tx_event: bool,
    segs: Vec<Segment>,
}

impl NetDevice {
    /// A device with this MAC address, not activated yet.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            rx: None,
            tx: None,
            stats: NetStats::default(),
            warn: WarnLimiter::new(Kind::Ring as usize + 1),
            rx_event: false,
            tx_event: false,
            segs: Vec::with_capacity(MAX_CHAIN_BUFFERS),
        }
    }

    /// `VIRTIO_ID_NET`.
    pub fn device_type(&self) -> u32 {
        DEVICE_TYPE_NET
    }

    /// Number of queues (RX, TX).
    pub fn num_queues(&self) -> usize {
        2
    }

    /// Largest queue size the transport may offer.
    pub fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    /// Offered features: no offloads and no MRG_RXBUF, so every frame is a
    /// plain Ethernet frame in one chain, which keeps replay simple.
    pub fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Reads configuration space (`mac`, `status` = LINK_UP); bytes outside
    /// it read as 0.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        virtq::read_config(&c, offset, data);
    }

    /// Configuration space is read-only here (no CTRL_MAC_ADDR); writes are
    /// ignored and logged.
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "virtio-net: ignoring config write"
        );
    }

    /// Starts the device on its two queues (configured and marked ready by
    /// the transport) and tells the driver not to notify.
    pub fn activate<M: GuestMemory>(
        &mut self,
        mut rx: Queue,
        mut tx: Queue,
        mem: &M,
    ) -> Result<(), NetError> {
        if self.rx.is_some() {
            return Err(NetError::AlreadyActive);
        }
        for (q, name) in [(&mut rx, "RX"), (&mut tx, "TX")] {
            if !q.ready() {
                return Err(NetError::QueueNotReady(name));
            }
            if !q.is_valid(mem) {
                return Err(NetError::QueueInvalid(name));
            }
            q.set_event_idx(false);
            q.disable_notification(mem)
                .map_err(|_| NetError::QueueInvalid(name))?;
        }
        self.rx = Some(rx);
        self.tx = Some(tx);
        Ok(())
    }

    /// Back to the pre-activation state.
    pub fn reset(&mut self) {
        self.rx = None;
        self.tx = None;
        self.rx_event = false;
        self.tx_event = false;
    }

    /// True between `activate` and `reset`.
    pub fn is_active(&self) -> bool {
        self.rx.is_some()
    }

    /// The active queues' states (RX, TX), for a live clone
    /// (docs/join.md).
    pub fn queue_states(&self) -> Option<[virtio_queue::QueueState; 2]> {
        Some([self.rx.as_ref()?.state(), self.tx.as_ref()?.state()])
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// True if RX used entries were published since the last call (the VMM
    /// sets `EV_NET_RX`).
    pub fn take_rx_event(&mut self) -> bool {
        std::mem::take(&mut self.rx_event)
    }

    /// True if TX used entries were published since the last call (the VMM
    /// sets `EV_NET_TX`).
    pub fn take_tx_event(&mut self) -> bool {
        std::mem::take(&mut self.tx_event)
    }

    fn note(&mut self, kind: Kind, head: u16, detail: &dyn std::fmt::Display) {
        match kind {
            Kind::TxChain | Kind::TxWritable | Kind::TxOffload => self.stats.tx_malformed += 1,
            Kind::TxSize => self.stats.tx_dropped += 1,
            Kind::RxChain | Kind::RxReadOnly | Kind::RxSmall => self.stats.rx_malformed += 1,
            Kind::Ring => {}
        }
        if let Some(n) = self.warn.hit(kind as usize) {
            tracing::warn!(head, ?kind, count = n, "virtio-net: {detail}");
        }
    }

    /// Publishes a used entry on RX (`rx` true) or TX.
    fn add_used<M: GuestMemory>(&mut self, mem: &M, rx: bool, head: u16, len: u32) {
        let q = if rx {
            self.rx.as_mut()
        } else {
            self.tx.as_mut()
        };
        let Some(q) = q else { return };
        if head >= q.size() {
            return; // an impossible head has no used entry to give back
        }
        match q.add_used(mem, head, len) {
            Ok(()) if rx => self.rx_event = true,
            Ok(()) => self.tx_event = true,
            Err(e) => tracing::warn!(head, "virtio-net: cannot add used entry: {e}"),
        }
    }

    /// Pops every TX chain: strips the virtio-net header, copies the frame
    /// into `out`, and returns the chain to the guest at once (the frame is
    /// a host copy now). Malformed or oversized chains are returned too,
    /// and counted. Returns the number of frames added to `out`.
    pub fn take_tx<M: GuestMemory>(&mut self, mem: &M, out: &mut Vec<Vec<u8>>) -> usize {
        let before = out.len();
        while let Some(tx) = self.tx.as_mut() {
            let head = match virtq::pop_head(tx, mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.note(Kind::Ring, 0, &format_args!("TX ring: {e}"));
                    break;
                }
            };
            let (table, size) = (GuestAddress(tx.desc_table()), tx.size());
            let mut segs = std::mem::take(&mut self.segs);
            if let Some(frame) = self.tx_frame(mem, table, size, head, &mut segs) {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.len() as u64;
                out.push(frame);
            }
            self.segs = segs;
            self.add_used(mem, false, head, 0);
        }
        out.len() - before
    }

    fn tx_frame<M: GuestMemory>(
        &mut self,
        mem: &M,
        table: GuestAddress,
        size: u16,
        head: u16,
        segs: &mut Vec<Segment>,
    ) -> Option<Vec<u8>> {
        if let Err(e) = virtq::walk_chain(mem, table, size, head, MAX_CHAIN_BUFFERS, segs) {
            self.note(Kind::TxChain, head, &format_args!("TX chain: {e}"));
            return None;
        }
        if segs.iter().any(|s| s.writable) {
            self.note(
                Kind::TxWritable,
                head,
                &"TX chain has device-writable buffers",
            );
            return None;
        }
        let total = virtq::total_len(segs);
        let frame_len = total.saturating_sub(NET_HDR_LEN as u64);
        if total < (NET_HDR_LEN + MIN_FRAME_LEN) as u64 || frame_len > MAX_FRAME_LEN as u64 {
            self.note(
                Kind::TxSize,
                head,
                &format_args!("TX frame of {frame_len} bytes dropped"),
            );
            return None;
        }
        let mut hdr = [0u8; NET_HDR_LEN];
        if !virtq::read_from_segments(mem, segs, 0, &mut hdr) {
            self.note(Kind::TxChain, head, &"TX header unreadable");
            return None;
        }
        // flags (NEEDS_CSUM) and gso_type ask for offloads we did not offer.
        if hdr[0] & HDR_F_NEEDS_CSUM != 0 || hdr[1] != 0 {
            self.note(Kind::TxOffload, head, &"TX header asks for an offload");
            return None;
        }
        // Bounded by MAX_FRAME_LEN just above.
        let mut frame = vec![0u8; frame_len as usize];
        if !virtq::read_from_segments(mem, segs, NET_HDR_LEN as u64, &mut frame) {
            self.note(Kind::TxChain, head, &"TX frame unreadable");
            return None;
        }
        Some(frame)
    }

    /// True if the guest has posted at least one RX chain.
    pub fn rx_buffers_available<M: GuestMemory>(&self, mem: &M) -> bool {
        self.rx
            .as_ref()
            .is_some_and(|q| virtq::pending(q, mem).is_ok_and(|n| n > 0))
    }

    /// Places `frame` (behind a zeroed header with `num_buffers` = 1) into the
    /// next RX chain and publishes it.
    ///
    /// * `Ok(true)`: delivered.
    /// * `Ok(false)`: no RX buffer posted; keep the frame and retry at a
    ///   later exit.
    /// * `Err(_)`: the frame cannot be delivered (too large for the device
    ///   or for the guest's buffer, broken ring) and is dropped.
    ///
    /// Malformed RX chains (broken, with device-readable buffers, smaller
    /// than `MIN_RX_BUFFER`) are returned with length 0 and the next chain
    /// is tried. `Ok(false)` means guest memory was not touched: if
    /// malformed chains were returned and no good one followed, the result
    /// is `Err(MalformedBuffers)` (the attempt changed the guest, and a
    /// replay must make it too), and the frame is dropped.
    pub fn deliver_rx<M: GuestMemory>(&mut self, mem: &M, frame: &[u8]) -> Result<bool, NetError> {
        if self.rx.is_none() {
            return Err(NetError::NotActivated);
        }
        if frame.len() > MAX_FRAME_LEN {
            self.stats.rx_dropped += 1;
            return Err(NetError::FrameTooLarge {
                len: frame.len(),
                room: MAX_FRAME_LEN,
            });
        }
        let mut malformed = 0u32;
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Err(NetError::NotActivated);
            };
            let head = match virtq::pop_head(rx, mem) {
                Ok(Some(h)) => h,
                Ok(None) if malformed > 0 => {
                    self.stats.rx_dropped += 1;
                    return Err(NetError::MalformedBuffers(malformed));
                }
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.stats.rx_dropped += 1;
                    self.note(Kind::Ring, 0, &format_args!("RX ring: {e}"));
                    return Err(NetError::RxRing(e));
                }
            };
            let (table, size) = (GuestAddress(rx.desc_table()), rx.size());
            let mut segs = std::mem::take(&mut self.segs);
            let r = self.rx_into(mem, table, size, head, &mut segs, frame);
            self.segs = segs;
            match r {
                RxOutcome::Delivered => return Ok(true),
                RxOutcome::Malformed => malformed = malformed.saturating_add(1),
                RxOutcome::TooSmall(room) => {
                    // A valid buffer, just not big enough for this one frame:
                    // leave it for the next frame.
                    if let Some(rx) = self.rx.as_mut() {
                        virtq::unpop_head(rx);
                    }
                    self.stats.rx_dropped += 1;
                    return Err(NetError::FrameTooLarge {
                        len: frame.len(),
                        room,
                    });
                }
            }
        }
    }

    fn rx_into<M: GuestMemory>(
        &mut self,
        mem: &M,
        table: GuestAddress,
        size: u16,
        head: u16,
        segs: &mut Vec<Segment>,
        frame: &[u8],
    ) -> RxOutcome {
        let malformed = |this: &mut Self, kind, why: &dyn std::fmt::Display| {
            this.note(kind, head, why);
            this.add_used(mem, true, head, 0);
            RxOutcome::Malformed
        };
        if let Err(e) = virtq::walk_chain(mem, table, size, head, MAX_CHAIN_BUFFERS, segs) {
            return malformed(self, Kind::RxChain, &format_args!("RX chain: {e}"));
        }
        if segs.iter().any(|s| !s.writable) {
            return malformed(
                self,
                Kind::RxReadOnly,
                &"RX chain has device-readable buffers",
            );
        }
        let room = virtq::total_len(segs);
        if room < MIN_RX_BUFFER {
            return malformed(
                self,
                Kind::RxSmall,
                &format_args!("RX chain of {room} bytes"),
            );
        }
        let needed = (NET_HDR_LEN + frame.len()) as u64;
        if room < needed {
            return RxOutcome::TooSmall((room - NET_HDR_LEN as u64) as usize);
        }
        if !virtq::write_to_segments(mem, segs, 0, &rx_header())
            || !virtq::write_to_segments(mem, segs, NET_HDR_LEN as u64, frame)
        {
            return malformed(self, Kind::RxChain, &"RX buffer not writable");
        }
        // needed <= NET_HDR_LEN + MAX_FRAME_LEN: fits u32.
        self.add_used(mem, true, head, needed as u32);
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        RxOutcome::Delivered
    }
}

enum RxOutcome {
    Delivered,
    Malformed,
    TooSmall(usize),
}
