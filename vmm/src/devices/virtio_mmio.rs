//! The virtio-mmio (version 2) transport: the register window each device
//! exposes to the guest. It negotiates features, collects queue
//! configuration, and hands ready queues to the device model at DRIVER_OK.
//! Devices never interrupt and ask not to be notified (docs/guest-abi.md):
//! the guest's sync call is the only point where queues are processed.

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c53_5450; // "LSTP"

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

/// Why a device did not start when the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("driver OK without a complete, valid queue setup")]
    IncompleteSetup,
    #[error("{device} needs {want} queue(s), the driver set up {got}")]
    QueueCount {
        device: &'static str,
        want: usize,
        got: usize,
    },
    #[error(transparent)]
    Blk(#[from] blkio::BlkError),
    #[error(transparent)]
    Net(#[from] netio::NetError),
}

/// The part of a device model the transport needs.
pub trait VirtioDevice {
    fn device_type(&self) -> u32;
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Takes the queues once the driver is ready; an error marks the device
    /// as needing a reset (the guest sees DEVICE_NEEDS_RESET).
    fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    fn reset(&mut self);
    /// The states of the queues an active device runs on, in the order
    /// `activate` takes them (a live clone; docs/join.md).
    fn queue_states(&self) -> Vec<QueueState>;
}

/// A transport's registers and queues, as a live clone carries them
/// (`snapshot::devices`). When `active`, `queues` are the device's running
/// queues; otherwise the transport's queues being set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub active: bool,
    pub bad_accesses: u64,
    pub queues: Vec<QueueState>,
}

/// Why a saved transport cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{got} queues saved; the device has {want}")]
    QueueCount { want: usize, got: usize },
    #[error("a saved queue is not valid")]
    Queue(#[source] virtio_queue::Error),
    #[error("activating the device on the saved queues")]
    Activate(#[source] ActivateError),
}

/// One virtio-mmio register window around a device model.
pub struct VirtioMmio<D> {
    pub device: D,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
    active: bool,
    /// Guest mistakes (bad register, bad size), counted for `status`.
    pub bad_accesses: u64,
}

impl<D: VirtioDevice> VirtioMmio<D> {
    pub fn new(device: D) -> Self {
        let queues = new_queues(&device);
        VirtioMmio {
            device,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
            active: false,
            bad_accesses: 0,
        }
    }

    /// Whether the device has been activated by the driver.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(&self.device);
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.active = false;
    }

    /// The transport's state (a live clone at an exit boundary).
    pub fn save(&self) -> TransportState {
        TransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            active: self.active,
            bad_accesses: self.bad_accesses,
            queues: if self.active {
                self.device.queue_states()
            } else {
                self.queues.iter().map(|q| q.state()).collect()
            },
        }
    }

    /// Puts a fresh transport (the joiner's) in the saved state; an active
    /// device is activated on the saved queues, which checks every ring
    /// address against `mem` (already restored) once more.
    pub fn restore(
        &mut self,
        mem: &GuestMemoryMmap,
        st: &TransportState,
    ) -> Result<(), RestoreError> {
        let want = self.device.queue_max_sizes().len();
        if st.queues.len() != want {
            return Err(RestoreError::QueueCount {
                want,
                got: st.queues.len(),
            });
        }
        let queues = st
            .queues
            .iter()
            .map(|q| Queue::try_from(*q))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RestoreError::Queue)?;
        self.reset();
        self.status = st.status;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.queue_sel = st.queue_sel;
        self.config_generation = st.config_generation;
        self.bad_accesses = st.bad_accesses;
        if st.active {
            self.device
                .activate(mem, st.driver_features, queues)
                .map_err(RestoreError::Activate)?;
            self.active = true;
        } else {
            self.queues = queues;
        }
        Ok(())
    }

    /// A read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            self.bad_accesses += 1;
            data.fill(0);
            return;
        }
        let value = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| q.max_size() as u32),
            0x044 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| q.ready() as u32),
            0x060 => 0, // no interrupts, ever
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => {
                self.bad_accesses += 1;
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write of `data` at `offset` into the window.
    pub fn write(&mut self, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            // Config space of net and blk is read-only for the driver.
            self.bad_accesses += 1;
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.bad_accesses += 1;
            return;
        };
        let value = u32::from_le_bytes(bytes);
        // Queue and feature setup is only legal before DRIVER_OK.
        let setup = !self.active && self.status & STATUS_FAILED == 0;
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 if setup && self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | value as u64
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | ((value as u64) << 32)
                    }
                    _ => self.bad_accesses += 1,
                }
            }
            0x024 => self.driver_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 if setup => match self.selected_queue() {
                Some(q) => q.set_size(value as u16),
                None => self.bad_accesses += 1,
            },
            0x044 if setup => match self.selected_queue() {
                Some(q) => q.set_ready(value == 1),
                None => self.bad_accesses += 1,
            },
            0x050 => {} // notifications are suppressed; a stray kick is harmless
            0x064 => {} // nothing to acknowledge
            0x070 => self.write_status(mem, value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if setup => {
                let (low, high) = if offset.is_multiple_of(8) {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                match (offset & !7, self.selected_queue()) {
                    (0x080, Some(q)) => q.set_desc_table_address(low, high),
                    (0x090, Some(q)) => q.set_avail_ring_address(low, high),
                    (0x0a0, Some(q)) => q.set_used_ring_address(low, high),
                    _ => self.bad_accesses += 1,
                }
            }
            _ => self.bad_accesses += 1,
        }
    }

    fn write_status(&mut self, mem: &GuestMemoryMmap, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let new_bits = value & !self.status;
        if value & self.status != self.status {
            // Clearing bits other than by a full reset is not allowed.
            self.bad_accesses += 1;
            return;
        }
        let mut value = value;
        if new_bits & STATUS_FEATURES_OK != 0 {
            let unsupported = self.driver_features & !self.device.features();
            if unsupported != 0 {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                value &= !STATUS_FEATURES_OK;
            }
        }
        if new_bits & STATUS_DRIVER_OK != 0 && !self.active {
            let required = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
            let queues = std::mem::replace(&mut self.queues, new_queues(&self.device));
            let usable = value & required == required && queues.iter().all(|q| q.is_valid(mem));
            let result = if usable {
                self.device.activate(mem, self.driver_features, queues)
            } else {
                Err(ActivateError::IncompleteSetup)
            };
            match result {
                Ok(()) => self.active = true,
                Err(why) => {
                    tracing::warn!(
                        device = self.device.device_type(),
                        "virtio activation failed: {why}"
                    );
                    value |= STATUS_NEEDS_RESET;
                }
            }
        }
        self.status = value;
    }
}

fn new_queues<D: VirtioDevice>(device: &D) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|max| Queue::new(*max).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Dummy {
        activated: Option<(u64, usize)>,
        resets: u32,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            1 << 32 | 1 << 5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn activate(
            &mut self,
            _: &GuestMemoryMmap,
            features: u64,
            queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            self.activated = Some((features, queues.len()));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn queue_states(&self) -> Vec<QueueState> {
            Vec::new()
        }
    }

    fn reg(t: &mut VirtioMmio<Dummy>, offset: u64) -> u32 {
        let mut b = [0; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn set(t: &mut VirtioMmio<Dummy>, mem: &GuestMemoryMmap, offset: u64, v: u32) {
        t.write(mem, offset, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut VirtioMmio<Dummy>, mem: &GuestMemoryMmap, idx: u32, base: u32) {
        set(t, mem, 0x030, idx);
        set(t, mem, 0x038, 16);
        set(t, mem, 0x080, base);
        set(t, mem, 0x090, base + 0x100);
        set(t, mem, 0x0a0, base + 0x200);
        set(t, mem, 0x044, 1);
    }

    #[test]
    fn a_driver_brings_the_device_up() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut t = VirtioMmio::new(Dummy::default());
        assert_eq!(reg(&mut t, 0), MAGIC);
        assert_eq!(reg(&mut t, 4), 2);
        assert_eq!(reg(&mut t, 8), 42);
        set(&mut t, &mem, 0x014, 1);
        assert_eq!(reg(&mut t, 0x010), 1);
        set(&mut t, &mem, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        set(&mut t, &mem, 0x024, 1);
        set(&mut t, &mem, 0x020, 1);
        set(
            &mut t,
            &mem,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(reg(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t, &mem, 0, 0x1000);
        setup_queue(&mut t, &mem, 1, 0x2000);
        set(&mut t, &mem, 0x070, 0xf);
        assert!(t.is_active());
        assert_eq!(t.device.activated, Some((1 << 32, 2)));
        assert_eq!(reg(&mut t, 0x070), 0xf);
        set(&mut t, &mem, 0x070, 0);
        assert!(!t.is_active());
        assert_eq!(t.device.resets, 1);
    }

    #[test]
    fn unsupported_features_and_bad_setups_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut t = VirtioMmio::new(Dummy::default());
        set(&mut t, &mem, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        set(&mut t, &mem, 0x020, 1 << 7);
        set(
            &mut t,
            &mem,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(reg(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
        // Queues pointing outside memory: activation fails, the device asks for a reset.
        set(&mut t, &mem, 0x070, 0);
        set(
            &mut t,
            &mem,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        setup_queue(&mut t, &mem, 0, 0xfff_0000);
        set(&mut t, &mem, 0x070, 0xf);
        assert!(!t.is_active());
        assert_ne!(reg(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
        // Odd sizes and unknown registers are counted, never fatal.
        let mut two = [0u8; 2];
        t.read(0x070, &mut two);
        t.write(&mem, 0x0f0, &[1]);
        assert!(t.bad_accesses >= 2);
    }
}
