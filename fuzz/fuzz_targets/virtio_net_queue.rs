//! Fuzz the virtio-net device model: bytes become descriptor tables and
//! avail rings for RX and TX, guest memory contents, and received frames;
//! the device takes TX frames and delivers RX frames. It must never panic,
//! and every frame it hands out must be within the Ethernet limits.
#![no_main]

mod common;

use common::{Input, MEM, publish, write_desc};
use libfuzzer_sys::fuzz_target;
use netio::{MAX_FRAME_LEN, MIN_FRAME_LEN, NetDevice};
use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    let size = 1u16 << (inp.byte() % 6);
    let rx_mock = MockSplitQueue::create(&mem, GuestAddress(0), size);
    let tx_mock = MockSplitQueue::create(&mem, GuestAddress(0x1000), size);
    let (Ok(rxq), Ok(txq)) = (
        rx_mock.create_queue::<Queue>(),
        tx_mock.create_queue::<Queue>(),
    ) else {
        return;
    };
    let (rx_avail, tx_avail) = (rx_mock.avail_addr().0, tx_mock.avail_addr().0);
    let mut dev = NetDevice::new([2, 0, 0, 0, 0, 1]);
    if dev.activate(rxq, txq, &mem).is_err() {
        return;
    }
    for i in 0..size {
        write_desc(&mem, 0, i, &mut inp);
        write_desc(&mem, 0x1000, i, &mut inp);
    }
    for i in 0..8 {
        write_desc(&mem, 0x2000, i, &mut inp);
    }
    // Some TX headers asking for offloads, some not.
    for slot in 0..4u64 {
        let _ = mem.write_slice(
            &[inp.byte() & 1, inp.byte() % 2],
            GuestAddress(0x3000 + slot * 0x100),
        );
    }
    let mut out = Vec::new();
    for _ in 0..3 {
        publish(&mem, tx_avail, size, &mut inp);
        publish(&mem, rx_avail, size, &mut inp);
        out.clear();
        dev.take_tx(&mem, &mut out);
        for f in &out {
            assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
        }
        let _ = dev.rx_buffers_available(&mem);
        for _ in 0..inp.byte() % 4 {
            let frame = vec![0xA5; usize::from(inp.u16()) % 2000];
            let _ = dev.deliver_rx(&mem, &frame);
        }
    }
    let _ = (dev.take_rx_event(), dev.take_tx_event());
    dev.reset();
});
