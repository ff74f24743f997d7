//! virtio-net device model against a real `GuestMemoryMmap` and queues laid
//! out by `virtio_queue::mock::MockSplitQueue`.

#[path = "../../blkio/tests/common/ring.rs"]
mod ring;

use netio::{MAX_FRAME_LEN, NetDevice, NetError};
use ring::{F_INDIRECT, F_NEXT, F_WRITE, Mem, Ring, memory, read_bytes, write_bytes, write_desc};

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x1000;
const TXBUF: u64 = 0x1_0000;
const RXBUF: u64 = 0x4_0000;
const INDIRECT: u64 = 0x8000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct T {
    mem: Mem,
    rx: Ring,
    tx: Ring,
    dev: NetDevice,
}

fn setup_in(mem: Mem) -> T {
    let (rx, rxq) = Ring::new(&mem, RX_BASE, QSIZE);
    let (tx, txq) = Ring::new(&mem, TX_BASE, QSIZE);
    let mut dev = NetDevice::new(MAC);
    dev.activate(rxq, txq, &mem).expect("activate");
    T { mem, rx, tx, dev }
}

fn setup() -> T {
    setup_in(memory(MEM))
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Posts a TX chain at descriptors `first..`: header and frame in one buffer.
fn post_tx(t: &T, first: u16, f: &[u8]) {
    let at = TXBUF + u64::from(first) * 0x800;
    write_bytes(&t.mem, at, &[0u8; 12]);
    write_bytes(&t.mem, at + 12, f);
    t.tx.chain(&t.mem, first, &[(at, 12 + f.len() as u32, false)]);
    t.tx.publish(&t.mem, first);
}

/// Posts an RX chain of one writable buffer of `len` bytes at descriptor `i`.
fn post_rx(t: &T, i: u16, len: u32) -> u64 {
    let at = RXBUF + u64::from(i) * 0x1000;
    write_bytes(&t.mem, at, &vec![0xEE; len as usize]);
    t.rx.chain(&t.mem, i, &[(at, len, true)]);
    t.rx.publish(&t.mem, i);
    at
}

fn take_tx(t: &mut T) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    t.dev.take_tx(&t.mem, &mut v);
    v
}

/// A good TX frame and a good RX frame still work.
fn assert_usable(t: &mut T) {
    let (tx0, rx0) = (t.tx.used_idx(&t.mem), t.rx.used_idx(&t.mem));
    let f = frame(60, 1);
    post_tx(t, 15, &f);
    assert_eq!(take_tx(t), vec![f.clone()]);
    assert_eq!(t.tx.used_entry(&t.mem, tx0), (15, 0));
    let at = post_rx(t, 15, 2048);
    assert!(t.dev.deliver_rx(&t.mem, &f).expect("deliver"));
    assert_eq!(read_bytes(&t.mem, at + 12, 60), f);
    assert_eq!(t.rx.used_entry(&t.mem, rx0), (15, 72));
}

#[test]
fn config_and_features() {
    let t = setup();
    let mut c = [0u8; 8];
    t.dev.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "LINK_UP");
    let mut past = [0xFF; 4];
    t.dev.read_config(6, &mut past);
    assert_eq!(past, [1, 0, 0, 0]);
    let f = t.dev.features();
    assert_ne!(f & (1 << 32), 0);
    assert_ne!(f & (1 << 5), 0);
    assert_ne!(f & (1 << 16), 0);
    assert_eq!(f & (1 << 15), 0, "no MRG_RXBUF");
    assert_eq!(f & (1 << 0), 0, "no CSUM");
    assert_eq!(t.rx.used_flags(&t.mem), 1, "RX: NO_NOTIFY");
    assert_eq!(t.tx.used_flags(&t.mem), 1, "TX: NO_NOTIFY");
}

#[test]
fn tx_frames_are_copied_out_and_returned() {
    let mut t = setup();
    let a = frame(60, 1);
    let b = frame(MAX_FRAME_LEN, 2);
    post_tx(&t, 0, &a);
    // Header in its own buffer, frame split over two more.
    write_bytes(&t.mem, TXBUF + 0x4000, &[0u8; 12]);
    write_bytes(&t.mem, TXBUF + 0x5000, &b[..1000]);
    write_bytes(&t.mem, TXBUF + 0x6000, &b[1000..]);
    t.tx.chain(
        &t.mem,
        1,
        &[
            (TXBUF + 0x4000, 12, false),
            (TXBUF + 0x5000, 1000, false),
            (TXBUF + 0x6000, b.len() as u32 - 1000, false),
        ],
    );
    t.tx.publish(&t.mem, 1);
    // Indirect.
    write_bytes(&t.mem, TXBUF + 0x7000, &[0u8; 12]);
    write_bytes(&t.mem, TXBUF + 0x7000 + 12, &a);
    write_desc(&t.mem, INDIRECT, 0, TXBUF + 0x7000, 72, 0, 0);
    t.tx.set_desc(&t.mem, 4, INDIRECT, 16, F_INDIRECT, 0);
    t.tx.publish(&t.mem, 4);
    assert_eq!(take_tx(&mut t), vec![a.clone(), b.clone(), a.clone()]);
    assert_eq!(t.tx.used_idx(&t.mem), 3);
    assert_eq!(t.tx.used_entry(&t.mem, 1), (1, 0));
    assert!(t.dev.take_tx_event());
    assert_eq!(t.dev.stats().tx_frames, 3);
    assert_eq!(t.dev.stats().tx_bytes, (60 + MAX_FRAME_LEN + 60) as u64);
}

#[test]
fn hostile_tx_chains_are_dropped_and_returned() {
    let mut t = setup();
    let at = TXBUF;
    write_bytes(&t.mem, at, &[0u8; 12 + 2000]);
    // 0: device-writable buffer in a TX chain.
    t.tx.chain(&t.mem, 0, &[(at, 72, true)]);
    t.tx.publish(&t.mem, 0);
    // 1: runt (header + 10 bytes).
    t.tx.chain(&t.mem, 1, &[(at, 22, false)]);
    t.tx.publish(&t.mem, 1);
    // 2: oversized.
    t.tx.chain(&t.mem, 2, &[(at, 12 + 1600, false)]);
    t.tx.publish(&t.mem, 2);
    // 3: asks for checksum offload.
    write_bytes(&t.mem, TXBUF + 0x3000, &[1u8]);
    t.tx.chain(&t.mem, 3, &[(TXBUF + 0x3000, 72, false)]);
    t.tx.publish(&t.mem, 3);
    // 4: outside guest memory.
    t.tx.chain(&t.mem, 4, &[(MEM as u64 - 8, 72, false)]);
    t.tx.publish(&t.mem, 4);
    // 5: a loop.
    t.tx.set_desc(&t.mem, 5, at, 72, F_NEXT, 6);
    t.tx.set_desc(&t.mem, 6, at, 72, F_NEXT, 5);
    t.tx.publish(&t.mem, 5);
    // 7: reserved flag bits.
    t.tx.set_desc(&t.mem, 7, at, 72, 0x40, 0);
    t.tx.publish(&t.mem, 7);
    assert!(take_tx(&mut t).is_empty());
    assert_eq!(t.tx.used_idx(&t.mem), 7, "every chain is returned");
    for n in 0..7 {
        assert_eq!(t.tx.used_entry(&t.mem, n).1, 0);
    }
    let s = *t.dev.stats();
    assert_eq!(s.tx_dropped, 2, "runt and oversized");
    assert_eq!(s.tx_malformed, 5);
    assert_usable(&mut t);
}

#[test]
fn tx_avail_index_jump_consumes_nothing() {
    let mut t = setup();
    post_tx(&t, 0, &frame(60, 0));
    let good = t.tx.avail_idx(&t.mem);
    t.tx.set_avail_idx(&t.mem, good.wrapping_add(100));
    assert!(take_tx(&mut t).is_empty());
    t.tx.set_avail_idx(&t.mem, good);
    assert_eq!(take_tx(&mut t).len(), 1);
    assert_usable(&mut t);
}

#[test]
fn rx_frames_land_behind_a_zero_header() {
    let mut t = setup();
    assert!(!t.dev.rx_buffers_available(&t.mem));
    let f = frame(100, 3);
    let delivered = t
        .dev
        .deliver_rx(&t.mem, &f)
        .expect("no buffer is not an error");
    assert!(!delivered, "no RX buffer posted yet");
    let at = post_rx(&t, 0, 1526);
    assert!(t.dev.rx_buffers_available(&t.mem));
    assert!(t.dev.deliver_rx(&t.mem, &f).expect("deliver"));
    assert_eq!(
        read_bytes(&t.mem, at, 12),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    );
    assert_eq!(read_bytes(&t.mem, at + 12, 100), f);
    assert_eq!(
        read_bytes(&t.mem, at + 112, 1),
        [0xEE],
        "nothing written past the frame"
    );
    assert_eq!(t.rx.used_entry(&t.mem, 0), (0, 112));
    assert!(t.dev.take_rx_event());
    // Header and frame in separate buffers (a Linux-style layout).
    write_bytes(&t.mem, RXBUF + 0x8000, &[0xEE; 12]);
    t.rx.chain(
        &t.mem,
        1,
        &[(RXBUF + 0x8000, 12, true), (RXBUF + 0x9000, 1514, true)],
    );
    t.rx.publish(&t.mem, 1);
    let g = frame(1514, 4);
    assert!(t.dev.deliver_rx(&t.mem, &g).expect("deliver"));
    assert_eq!(read_bytes(&t.mem, RXBUF + 0x8000, 12)[10], 1);
    assert_eq!(read_bytes(&t.mem, RXBUF + 0x9000, 1514), g);
    assert_eq!(t.rx.used_entry(&t.mem, 1), (1, 1526));
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_skipped() {
    let mut t = setup();
    // 0: a device-readable buffer; 1: too small; 2: outside memory; 3: good.
    t.rx.chain(&t.mem, 0, &[(RXBUF, 2048, false)]);
    t.rx.publish(&t.mem, 0);
    t.rx.chain(&t.mem, 1, &[(RXBUF, 1000, true)]);
    t.rx.publish(&t.mem, 1);
    t.rx.chain(&t.mem, 2, &[(MEM as u64 - 100, 2048, true)]);
    t.rx.publish(&t.mem, 2);
    let at = post_rx(&t, 3, 2048);
    let f = frame(64, 9);
    assert!(t.dev.deliver_rx(&t.mem, &f).expect("deliver"));
    assert_eq!(read_bytes(&t.mem, at + 12, 64), f);
    assert_eq!(t.rx.used_idx(&t.mem), 4);
    assert_eq!(t.rx.used_entry(&t.mem, 0), (0, 0));
    assert_eq!(t.rx.used_entry(&t.mem, 1), (1, 0));
    assert_eq!(t.rx.used_entry(&t.mem, 2), (2, 0));
    assert_eq!(t.rx.used_entry(&t.mem, 3), (3, 76));
    assert_eq!(t.dev.stats().rx_malformed, 3);
    assert_usable(&mut t);
}

#[test]
fn frames_that_do_not_fit_are_dropped_without_using_a_buffer() {
    let mut t = setup();
    post_rx(&t, 0, 1526);
    let big = frame(MAX_FRAME_LEN + 1, 0);
    assert!(matches!(
        t.dev.deliver_rx(&t.mem, &big),
        Err(NetError::FrameTooLarge { .. })
    ));
    // A double-tagged VLAN frame is legal but needs more than the minimum buffer.
    let vlan = frame(MAX_FRAME_LEN, 0);
    assert!(matches!(
        t.dev.deliver_rx(&t.mem, &vlan),
        Err(NetError::FrameTooLarge {
            len: 1522,
            room: 1514
        })
    ));
    assert_eq!(t.rx.used_idx(&t.mem), 0, "the buffer was not consumed");
    assert!(
        t.dev
            .deliver_rx(&t.mem, &frame(1514, 0))
            .expect("a normal frame fits")
    );
    assert_eq!(t.dev.stats().rx_dropped, 2);
    assert_usable(&mut t);
}

#[test]
fn rx_ring_jump_is_an_error_not_a_hang() {
    let mut t = setup();
    let i = t.rx.avail_idx(&t.mem);
    t.rx.set_avail_idx(&t.mem, i.wrapping_add(QSIZE + 1));
    assert!(matches!(
        t.dev.deliver_rx(&t.mem, &frame(60, 0)),
        Err(NetError::RxRing(_))
    ));
    assert!(!t.dev.rx_buffers_available(&t.mem));
    t.rx.set_avail_idx(&t.mem, i);
    assert_usable(&mut t);
}

#[test]
fn not_active_until_activated() {
    let mem = memory(MEM);
    let mut dev = NetDevice::new(MAC);
    assert!(matches!(
        dev.deliver_rx(&mem, &[0; 60]),
        Err(NetError::NotActivated)
    ));
    let mut out = Vec::new();
    assert_eq!(dev.take_tx(&mem, &mut out), 0);
    let (_, rxq) = Ring::new(&mem, RX_BASE, QSIZE);
    let (_, mut txq) = Ring::new(&mem, TX_BASE, QSIZE);
    virtio_queue::QueueT::set_ready(&mut txq, false);
    assert!(matches!(
        dev.activate(rxq, txq, &mem),
        Err(NetError::QueueNotReady("TX"))
    ));
}

fn script(mem: Mem) {
    let mut t = setup_in(mem);
    post_tx(&t, 0, &frame(60, 1));
    t.tx.chain(&t.mem, 1, &[(TXBUF, 72, true)]); // malformed
    t.tx.publish(&t.mem, 1);
    post_rx(&t, 0, 2048);
    t.rx.chain(&t.mem, 1, &[(RXBUF, 100, true)]); // too small
    t.rx.publish(&t.mem, 1);
    post_rx(&t, 2, 2048);
    assert_eq!(take_tx(&mut t).len(), 1);
    assert!(t.dev.deliver_rx(&t.mem, &frame(200, 5)).expect("deliver"));
    assert!(t.dev.deliver_rx(&t.mem, &frame(300, 6)).expect("deliver"));
    assert_usable(&mut t);
}

#[test]
fn same_calls_give_identical_memory() {
    let a = memory(MEM);
    let b = memory(MEM);
    script(a.clone());
    script(b.clone());
    assert!(
        ring::snapshot(&a, MEM) == ring::snapshot(&b, MEM),
        "guest memories diverged"
    );
}

#[test]
fn indirect_rx_chain() {
    let mut t = setup();
    write_desc(&t.mem, INDIRECT, 0, RXBUF, 12, F_WRITE | F_NEXT, 1);
    write_desc(&t.mem, INDIRECT, 1, RXBUF + 0x100, 2000, F_WRITE, 0);
    t.rx.set_desc(&t.mem, 0, INDIRECT, 32, F_INDIRECT, 0);
    t.rx.publish(&t.mem, 0);
    let f = frame(500, 8);
    assert!(t.dev.deliver_rx(&t.mem, &f).expect("deliver"));
    assert_eq!(read_bytes(&t.mem, RXBUF + 0x100, 500), f);
}
