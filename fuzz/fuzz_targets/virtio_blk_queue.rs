//! Fuzz the virtio-blk device model: bytes become a descriptor table, an
//! avail ring and guest memory contents; the device takes requests and
//! completes them (with right, wrong and unknown completions). It must never
//! panic, and every request it hands out must be well-formed.
#![no_main]

mod common;

use blkio::{AlignedBuf, BlkConfig, BlkDevice, Completion, RequestOp, SECTOR_SIZE};
use common::{Input, MEM, publish, write_desc};
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    let size = 1u16 << (inp.byte() % 6); // 1..=32
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), size);
    let Ok(queue) = mock.create_queue::<Queue>() else {
        return;
    };
    let avail = mock.avail_addr().0;
    let capacity = u64::from(inp.u16());
    let read_only = inp.byte() & 1 == 1;
    let mut dev = BlkDevice::new(BlkConfig {
        capacity_sectors: capacity,
        read_only,
        serial: [7; 20],
    });
    if dev.activate(queue, &mem).is_err() {
        return;
    }
    for i in 0..size {
        write_desc(&mem, 0, i, &mut inp);
    }
    // A few indirect-table candidates and request headers in data memory.
    for i in 0..8 {
        write_desc(&mem, 0x2000, i, &mut inp);
    }
    let mut hdr = [0u8; 16];
    for slot in 0..4u64 {
        hdr[0] = inp.byte() % 10;
        hdr[8..10].copy_from_slice(&inp.u16().to_le_bytes());
        let _ = mem.write_slice(&hdr, GuestAddress(0x3000 + slot * 0x100));
    }
    let mut reqs = Vec::new();
    for round in 0..3 {
        publish(&mem, avail, size, &mut inp);
        reqs.clear();
        dev.take_requests(&mem, &mut reqs);
        for r in &reqs {
            match &r.op {
                RequestOp::Read { sector, len } => {
                    assert!(*len > 0 && u64::from(*len) % SECTOR_SIZE == 0);
                    assert!(sector + u64::from(*len) / SECTOR_SIZE <= capacity);
                }
                RequestOp::Write { sector, data } => {
                    assert!(!read_only);
                    assert!(!data.is_empty() && data.len() as u64 % SECTOR_SIZE == 0);
                    assert!(sector + data.len() as u64 / SECTOR_SIZE <= capacity);
                }
                RequestOp::Flush => {}
            }
            let choice = inp.byte();
            if choice < 16 && round < 2 {
                continue; // leave it in flight: later heads may collide with it
            }
            let c = match (&r.op, choice % 4) {
                (RequestOp::Read { len, .. }, 0 | 1) => {
                    Completion::read(r.id, AlignedBuf::zeroed(*len as usize))
                }
                (_, 2) => Completion::read(r.id, AlignedBuf::zeroed(usize::from(inp.u16()))),
                (_, 3) => Completion::error(inp.u16(), inp.byte()),
                _ => Completion::ok(r.id),
            };
            let _ = dev.complete(&mem, &c);
        }
    }
    let _ = dev.take_used_event();
    dev.reset();
});
