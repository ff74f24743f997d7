//! The live sync call: inputs come from the host (the I/O thread), time from
//! the host clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use lockstep_guest_abi as abi;

use crate::devices::clock::VirtualClock;
use crate::machine::{SyncError, SyncIo, SyncOutcome, SyncRequest};

use super::shared::{VmShared, wait_until};

/// How long a waiting vCPU spins before it parks.
const WAIT_SPIN: Duration = Duration::from_micros(20);

/// Serves sync calls from live devices.
pub struct LiveIo {
    pub clock: VirtualClock,
    pub shared: Arc<VmShared>,
}

impl LiveIo {
    pub fn new(shared: Arc<VmShared>) -> Self {
        LiveIo {
            clock: VirtualClock::new(),
            shared,
        }
    }
}

impl SyncIo for LiveIo {
    fn sync(&mut self, _mem: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, SyncError> {
        let mut events = 0;
        let mut waited = false;
        if req.wait() && events == 0 && !self.shared.stop_requested() {
            let host_deadline = Instant::now() + self.clock.until(req.deadline_ns);
            let shared = &self.shared;
            waited = true;
            wait_until(host_deadline, WAIT_SPIN, || shared.stop_requested());
        }
        let now_ns = self.clock.now();
        if req.wait() && now_ns >= req.deadline_ns {
            events |= abi::EV_TIMER;
        }
        if self.shared.stop_requested() {
            events |= abi::EV_STOP;
        }
        Ok(SyncOutcome {
            events,
            now_ns,
            waited,
        })
    }

    fn mmio_read(&mut self, _mem: &GuestMemoryMmap, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }

    fn mmio_write(&mut self, _mem: &GuestMemoryMmap, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}
