//! Opening the virtio-mmio windows the VMM announced in BootParams. MMIO
//! register accesses are exits; they happen here at init only.

use core::ptr::NonNull;

use lockstep_guest_abi::MMIO_WINDOW;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

/// The transport of the window at `addr`, if it holds a device of `kind`.
pub fn open(addr: u64, kind: DeviceType) -> Result<MmioTransport<'static>, &'static str> {
    let header = NonNull::new(addr as *mut VirtIOHeader).ok_or("no window")?;
    // SAFETY: the VMM maps a virtio-mmio window of MMIO_WINDOW bytes at this
    // address for the guest's lifetime (BootParams), and it is opened once.
    let t = unsafe { MmioTransport::new(header, MMIO_WINDOW as usize) }
        .map_err(|_| "not a virtio-mmio device")?;
    if t.device_type() != kind {
        return Err("unexpected virtio device type");
    }
    Ok(t)
}
