//! The guest's two virtio devices behind their MMIO windows, and the
//! operations the sync call performs on them. Live runs, recordings and
//! replays all go through these functions in the same order, which is what
//! makes a replay reach the primary's exact guest memory.

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

use blkio::{BlkDevice, Completion, Request};
use lockstep_guest_abi as abi;
use netio::NetDevice;

use super::virtio_mmio::{ActivateError, VirtioDevice, VirtioMmio};

impl VirtioDevice for BlkDevice {
    fn device_type(&self) -> u32 {
        BlkDevice::device_type(self)
    }
    fn features(&self) -> u64 {
        BlkDevice::features(self)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[blkio::QUEUE_MAX_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        BlkDevice::read_config(self, offset, data)
    }
    fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let (Some(queue), 1) = (queues.pop(), got) else {
            return Err(ActivateError::QueueCount {
                device: "virtio-blk",
                want: 1,
                got,
            });
        };
        Ok(BlkDevice::activate(self, queue, mem)?)
    }
    fn reset(&mut self) {
        BlkDevice::reset(self)
    }
    fn queue_states(&self) -> Vec<QueueState> {
        self.queue_state().into_iter().collect()
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        NetDevice::device_type(self)
    }
    fn features(&self) -> u64 {
        NetDevice::features(self)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[netio::QUEUE_MAX_SIZE, netio::QUEUE_MAX_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        NetDevice::read_config(self, offset, data)
    }
    fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let (Some(tx), Some(rx), 2) = (queues.pop(), queues.pop(), got) else {
            return Err(ActivateError::QueueCount {
                device: "virtio-net",
                want: 2,
                got,
            });
        };
        Ok(NetDevice::activate(self, rx, tx, mem)?)
    }
    fn reset(&mut self) {
        NetDevice::reset(self)
    }
    fn queue_states(&self) -> Vec<QueueState> {
        NetDevice::queue_states(self)
            .map(Vec::from)
            .unwrap_or_default()
    }
}

/// Outputs taken from the guest at one sync exit.
#[derive(Default)]
pub struct Outputs {
    pub frames: Vec<Vec<u8>>,
    pub requests: Vec<Request>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.requests.is_empty()
    }
}

/// The devices, each behind its window.
pub struct Devices {
    pub net: Option<VirtioMmio<NetDevice>>,
    pub blk: Option<VirtioMmio<BlkDevice>>,
}

impl Devices {
    pub fn new(net: Option<NetDevice>, blk: Option<BlkDevice>) -> Self {
        Devices {
            net: net.map(VirtioMmio::new),
            blk: blk.map(VirtioMmio::new),
        }
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match window(addr) {
            Some((abi::MMIO_NET, off)) => self.net.as_mut().map(|d| d.read(off, data)).is_some(),
            Some((abi::MMIO_BLK, off)) => self.blk.as_mut().map(|d| d.read(off, data)).is_some(),
            _ => false,
        }
    }

    pub fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        match window(addr) {
            Some((abi::MMIO_NET, off)) => {
                self.net.as_mut().map(|d| d.write(mem, off, data)).is_some()
            }
            Some((abi::MMIO_BLK, off)) => {
                self.blk.as_mut().map(|d| d.write(mem, off, data)).is_some()
            }
            _ => false,
        }
    }

    /// Takes every new TX frame and disk request; returns the event bits for
    /// used entries published while doing so (TX frames are returned to the
    /// guest at once; malformed disk requests are failed at once).
    pub fn take_outputs(&mut self, mem: &GuestMemoryMmap, out: &mut Outputs) -> u32 {
        let mut events = 0;
        if let Some(net) = self.net.as_mut().filter(|n| n.is_active()) {
            net.device.take_tx(mem, &mut out.frames);
            if net.device.take_tx_event() {
                events |= abi::EV_NET_TX;
            }
        }
        if let Some(blk) = self.blk.as_mut().filter(|b| b.is_active()) {
            blk.device.take_requests(mem, &mut out.requests);
            if blk.device.take_used_event() {
                events |= abi::EV_BLK;
            }
        }
        events
    }

    /// Places a received frame in the guest's next RX buffer. `Ok(false)`:
    /// the guest has no buffer posted; keep the frame for a later exit.
    pub fn deliver_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        frame: &[u8],
    ) -> Result<bool, netio::NetError> {
        match self.net.as_mut().filter(|n| n.is_active()) {
            Some(net) => net.device.deliver_rx(mem, frame),
            None => Ok(false),
        }
    }

    /// Applies a disk completion (read data into the guest's buffers).
    pub fn complete_disk(
        &mut self,
        mem: &GuestMemoryMmap,
        c: &Completion,
    ) -> Result<(), blkio::BlkError> {
        match self.blk.as_mut() {
            Some(blk) => blk.device.complete(mem, c),
            None => Err(blkio::BlkError::NotActivated),
        }
    }

    /// Event bits for used entries published by deliveries/completions.
    pub fn input_events(&mut self) -> u32 {
        let mut events = 0;
        if let Some(net) = self.net.as_mut()
            && net.device.take_rx_event()
        {
            events |= abi::EV_NET_RX;
        }
        if let Some(blk) = self.blk.as_mut()
            && blk.device.take_used_event()
        {
            events |= abi::EV_BLK;
        }
        events
    }
}

fn window(addr: u64) -> Option<(u64, u64)> {
    let base = addr & !(abi::MMIO_WINDOW - 1);
    (base == abi::MMIO_NET || base == abi::MMIO_BLK).then_some((base, addr - base))
}
