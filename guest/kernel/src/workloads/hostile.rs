//! `workload=hostile`: a guest that misuses its devices the way a buggy or
//! hostile driver can, for the record/replay symmetry tests. It drives the
//! virtio queues itself (no driver): it posts RX buffers whose descriptors
//! point outside guest memory, so every frame the host delivers meets a
//! broken chain, and it resets the virtio-blk device while a read is in
//! flight, so the read's completion arrives for a device that no longer
//! knows it. Then it waits in sync calls for `duration_ms` and exits 0.
//! Whatever the host does with these, a replay must do the same.

use core::ptr::{addr_of_mut, write_volatile};

use lockstep_guest_abi::EV_STOP;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use crate::{devices, ports, say};

const QUEUE_SIZE: u16 = 8;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// `VIRTIO_F_VERSION_1`: the only feature accepted.
const VERSION_1: u64 = 1 << 32;
/// An address no guest memory has.
const NOWHERE: u64 = 0xffff_ffff_0000;

/// One split virtqueue: descriptors, then the available ring, then (on a
/// page of its own) the used ring.
#[repr(C, align(4096))]
struct Queue {
    desc: [[u64; 2]; QUEUE_SIZE as usize],
    avail: [u16; 3 + QUEUE_SIZE as usize],
    _pad: [u8; 4096 - 16 * QUEUE_SIZE as usize - 2 * (3 + QUEUE_SIZE as usize)],
    used: [u8; 4096],
}

const EMPTY: Queue = Queue {
    desc: [[0; 2]; QUEUE_SIZE as usize],
    avail: [0; 3 + QUEUE_SIZE as usize],
    _pad: [0; 4096 - 16 * QUEUE_SIZE as usize - 2 * (3 + QUEUE_SIZE as usize)],
    used: [0; 4096],
};

/// Net RX, net TX, blk: touched only by this single-threaded workload.
static mut QUEUES: [Queue; 3] = [EMPTY, EMPTY, EMPTY];
/// A virtio-blk read of sector 0: the header, the data, the status.
static mut BLK_HEADER: [u32; 4] = [0, 0, 0, 0];
static mut BLK_DATA: [u8; 512] = [0; 512];
static mut BLK_STATUS: u8 = 0xff;

/// Writes descriptor `i` of queue `q`: `addr`, `len`, `flags`, `next`.
///
/// # Safety
/// Only this workload's thread touches `QUEUES`.
unsafe fn set_desc(q: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    // SAFETY: the caller has the only access; volatile, because the host
    // reads the ring at the next exit, which the compiler cannot see.
    unsafe {
        let d = addr_of_mut!(QUEUES[q].desc[i]);
        let second = u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48;
        write_volatile(d, [addr, second]);
    }
}

/// Makes the first `n` descriptors of queue `q` available, in order.
///
/// # Safety
/// As [`set_desc`].
unsafe fn make_available(q: usize, heads: &[u16]) {
    // SAFETY: as above.
    unsafe {
        let avail = addr_of_mut!(QUEUES[q].avail);
        for (slot, head) in heads.iter().enumerate() {
            write_volatile(addr_of_mut!((*avail)[2 + slot]), *head);
        }
        write_volatile(addr_of_mut!((*avail)[1]), heads.len() as u16);
    }
}

/// Negotiates VERSION_1 only and gives the device queues `qs`.
fn start(t: &mut MmioTransport<'static>, qs: &[usize]) {
    t.set_status(DeviceStatus::empty());
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let features = t.read_device_features() & VERSION_1;
    t.write_driver_features(features);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    for (i, q) in qs.iter().enumerate() {
        // SAFETY: only the addresses are taken; identity-mapped guest RAM.
        let (desc, avail, used) = unsafe {
            (
                addr_of_mut!(QUEUES[*q].desc) as u64,
                addr_of_mut!(QUEUES[*q].avail) as u64,
                addr_of_mut!(QUEUES[*q].used) as u64,
            )
        };
        t.queue_set(i as u16, u32::from(QUEUE_SIZE), desc, avail, used);
    }
    t.set_status(
        DeviceStatus::ACKNOWLEDGE
            | DeviceStatus::DRIVER
            | DeviceStatus::FEATURES_OK
            | DeviceStatus::DRIVER_OK,
    );
}

pub fn run(net_mmio: u64, blk_mmio: u64, duration_ms: u64, start_ns: u64) -> ! {
    if net_mmio != 0 {
        match devices::open(net_mmio, DeviceType::Network) {
            Ok(mut t) => {
                start(&mut t, &[0, 1]);
                // SAFETY: this thread is the only user of the queues.
                unsafe {
                    for i in 0..4 {
                        set_desc(0, i, NOWHERE, 1526, DESC_F_WRITE, 0);
                    }
                    make_available(0, &[0, 1, 2, 3]);
                }
                // Dropping a virtio-drivers transport resets its device; this
                // one must stay up for the rest of the run.
                core::mem::forget(t);
                say!("hostile: 4 RX buffers outside guest memory");
            }
            Err(e) => say!("hostile: no net ({e})"),
        }
    }
    if blk_mmio != 0 {
        match devices::open(blk_mmio, DeviceType::Block) {
            Ok(mut t) => {
                start(&mut t, &[2]);
                // SAFETY: as above; the buffers are static and stay put.
                unsafe {
                    let (h, d, s) = (
                        addr_of_mut!(BLK_HEADER) as u64,
                        addr_of_mut!(BLK_DATA) as u64,
                        addr_of_mut!(BLK_STATUS) as u64,
                    );
                    set_desc(2, 0, h, 16, DESC_F_NEXT, 1);
                    set_desc(2, 1, d, 512, DESC_F_WRITE | DESC_F_NEXT, 2);
                    set_desc(2, 2, s, 1, DESC_F_WRITE, 0);
                    make_available(2, &[0]);
                }
                // The host takes the read at this exit; the reset follows
                // before its completion can.
                ports::sync(false, 0);
                t.set_status(DeviceStatus::empty());
                core::mem::forget(t);
                say!("hostile: virtio-blk reset with a read in flight");
            }
            Err(e) => say!("hostile: no disk ({e})"),
        }
    }
    let end = start_ns.saturating_add(duration_ms.saturating_mul(1_000_000));
    let mut now = start_ns;
    let mut calls = 0u64;
    while now < end {
        let r = ports::sync(true, end.min(now.saturating_add(10_000_000)));
        calls += 1;
        now = now.max(r.now_ns);
        if r.events & EV_STOP != 0 {
            break;
        }
    }
    say!("hostile: done after {calls} sync calls");
    ports::exit(0)
}
