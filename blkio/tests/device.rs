//! virtio-blk device model against a real `GuestMemoryMmap` and queues laid
//! out by `virtio_queue::mock::MockSplitQueue`: good chains, hostile chains,
//! and determinism.

#[path = "common/ring.rs"]
mod ring;

use blkio::{
    AlignedBuf, BlkConfig, BlkDevice, BlkError, Completion, Request, RequestOp, STATUS_IOERR,
    STATUS_OK, STATUS_UNSUPP,
};
use ring::{F_INDIRECT, F_NEXT, F_WRITE, Mem, Ring, memory, read_bytes, write_bytes, write_desc};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const HDR: u64 = 0x1_0000; // request headers
const STATUS: u64 = 0x1_8000; // status bytes
const DATA: u64 = 0x2_0000; // data buffers
const INDIRECT: u64 = 0x9000;
const CAPACITY: u64 = 2048; // sectors (1 MiB)
const SERIAL: [u8; 20] = *b"lockstep-disk-0001\0\0";

fn config(read_only: bool) -> BlkConfig {
    BlkConfig {
        capacity_sectors: CAPACITY,
        read_only,
        serial: SERIAL,
    }
}

struct T {
    mem: Mem,
    ring: Ring,
    dev: BlkDevice,
}

fn setup(read_only: bool) -> T {
    let mem = memory(MEM);
    let (ring, q) = Ring::new(&mem, 0, QSIZE);
    let mut dev = BlkDevice::new(config(read_only));
    dev.activate(q, &mem).expect("activate");
    T { mem, ring, dev }
}

fn header(t: &T, slot: u64, req_type: u32, sector: u64) -> u64 {
    let at = HDR + slot * 16;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    write_bytes(&t.mem, at, &h);
    at
}

fn status_at(slot: u64) -> u64 {
    STATUS + slot
}

/// Puts a read (IN) of `len` bytes at `sector` as chain `first..first+3`.
fn post_read(t: &T, first: u16, sector: u64, len: u32) {
    let h = header(t, u64::from(first), 0, sector);
    let s = status_at(u64::from(first));
    write_bytes(&t.mem, s, &[0xEE]);
    t.ring.chain(
        &t.mem,
        first,
        &[
            (h, 16, false),
            (DATA + u64::from(first) * 0x2000, len, true),
            (s, 1, true),
        ],
    );
    t.ring.publish(&t.mem, first);
}

/// Puts a write (OUT) of `data` at `sector` as chain `first..first+3`.
fn post_write(t: &T, first: u16, sector: u64, data: &[u8]) {
    let h = header(t, u64::from(first), 1, sector);
    let d = DATA + u64::from(first) * 0x2000;
    write_bytes(&t.mem, d, data);
    let s = status_at(u64::from(first));
    write_bytes(&t.mem, s, &[0xEE]);
    t.ring.chain(
        &t.mem,
        first,
        &[(h, 16, false), (d, data.len() as u32, false), (s, 1, true)],
    );
    t.ring.publish(&t.mem, first);
}

fn take(t: &mut T) -> Vec<Request> {
    let mut v = Vec::new();
    t.dev.take_requests(&t.mem, &mut v);
    v
}

fn status(t: &T, slot: u16) -> u8 {
    read_bytes(&t.mem, status_at(u64::from(slot)), 1)[0]
}

/// A good read and a good write still work: the device is usable.
fn assert_usable(t: &mut T) {
    let base = t.ring.used_idx(&t.mem);
    post_write(t, 10, 4, &[0x5A; 512]);
    post_read(t, 13, 4, 512);
    let reqs = take(t);
    assert_eq!(reqs.len(), 2, "both good requests are taken");
    assert!(
        matches!(&reqs[0].op, RequestOp::Write { sector: 4, data } if data.iter().all(|b| *b == 0x5A))
    );
    assert_eq!(
        reqs[1].op,
        RequestOp::Read {
            sector: 4,
            len: 512
        }
    );
    t.dev
        .complete(&t.mem, &Completion::ok(10))
        .expect("complete write");
    let data = AlignedBuf::from_slice(&[0x5A; 512]);
    t.dev
        .complete(&t.mem, &Completion::read(13, data))
        .expect("complete read");
    assert_eq!(status(t, 10), STATUS_OK);
    assert_eq!(status(t, 13), STATUS_OK);
    assert_eq!(read_bytes(&t.mem, DATA + 13 * 0x2000, 512), vec![0x5A; 512]);
    assert_eq!(t.ring.used_entry(&t.mem, base), (10, 1));
    assert_eq!(t.ring.used_entry(&t.mem, base + 1), (13, 513));
    assert_eq!(t.dev.in_flight(), 0);
}

#[test]
fn activation_disables_notifications_and_config_reads() {
    let t = setup(false);
    assert_eq!(t.ring.used_flags(&t.mem), 1, "VRING_USED_F_NO_NOTIFY");
    let mut cap = [0u8; 8];
    t.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), CAPACITY);
    let mut tail = [0xFFu8; 8];
    t.dev.read_config(32, &mut tail);
    assert_eq!(
        tail,
        [0, 0, 0, 0, 0, 0, 0, 0],
        "beyond config space reads 0"
    );
    t.dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    assert_eq!(t.dev.device_type(), 2);
    assert_eq!(t.dev.features() & (1 << 5), 0, "not read-only");
    assert_eq!(t.dev.features() & (1 << 9), 0, "no FLUSH");
    assert_ne!(
        BlkDevice::new(config(true)).features() & (1 << 5),
        0,
        "RO offered"
    );
}

#[test]
fn activate_refuses_unready_queue() {
    let mem = memory(MEM);
    let (_ring, mut q) = Ring::new(&mem, 0, QSIZE);
    virtio_queue::QueueT::set_ready(&mut q, false);
    let mut dev = BlkDevice::new(config(false));
    assert!(matches!(
        dev.activate(q, &mem),
        Err(BlkError::QueueNotReady)
    ));
}

#[test]
fn read_and_write_round_trip() {
    let mut t = setup(false);
    assert_usable(&mut t);
    assert_eq!(t.dev.stats().reads, 1);
    assert_eq!(t.dev.stats().writes, 1);
    assert!(t.dev.take_used_event());
    assert!(!t.dev.take_used_event());
}

#[test]
fn multi_descriptor_write_with_header_and_data_in_one_buffer() {
    let mut t = setup(false);
    // Header plus the first 512 data bytes in one buffer, then two more.
    let h = HDR;
    let mut first = vec![0u8; 16 + 512];
    first[0..4].copy_from_slice(&1u32.to_le_bytes());
    first[8..16].copy_from_slice(&100u64.to_le_bytes());
    first[16..].fill(1);
    write_bytes(&t.mem, h, &first);
    write_bytes(&t.mem, DATA, &[2; 1024]);
    write_bytes(&t.mem, DATA + 0x1000, &[3; 512]);
    t.ring.chain(
        &t.mem,
        0,
        &[
            (h, 528, false),
            (DATA, 1024, false),
            (DATA + 0x1000, 512, false),
            (STATUS, 1, true),
        ],
    );
    t.ring.publish(&t.mem, 0);
    let reqs = take(&mut t);
    let RequestOp::Write { sector, data } = &reqs[0].op else {
        panic!("not a write: {reqs:?}")
    };
    assert_eq!(*sector, 100);
    let mut expect = vec![1u8; 512];
    expect.extend([2u8; 1024]);
    expect.extend([3u8; 512]);
    assert_eq!(data.as_slice(), &expect[..]);
    assert_eq!(
        data.as_slice().as_ptr() as usize % 4096,
        0,
        "O_DIRECT alignment"
    );
}

#[test]
fn indirect_read_scatters_into_all_buffers() {
    let mut t = setup(false);
    let h = header(&t, 0, 0, 8);
    write_desc(&t.mem, INDIRECT, 0, h, 16, F_NEXT, 1);
    write_desc(&t.mem, INDIRECT, 1, DATA, 512, F_NEXT | F_WRITE, 2);
    write_desc(
        &t.mem,
        INDIRECT,
        2,
        DATA + 0x1000,
        1024,
        F_NEXT | F_WRITE,
        3,
    );
    write_desc(&t.mem, INDIRECT, 3, STATUS, 1, F_WRITE, 0);
    t.ring.set_desc(&t.mem, 0, INDIRECT, 64, F_INDIRECT, 0);
    t.ring.publish(&t.mem, 0);
    let reqs = take(&mut t);
    assert_eq!(
        reqs[0].op,
        RequestOp::Read {
            sector: 8,
            len: 1536
        }
    );
    let data: Vec<u8> = (0..1536).map(|i| (i % 251) as u8).collect();
    t.dev
        .complete(&t.mem, &Completion::read(0, AlignedBuf::from_slice(&data)))
        .expect("complete");
    assert_eq!(read_bytes(&t.mem, DATA, 512), data[..512]);
    assert_eq!(read_bytes(&t.mem, DATA + 0x1000, 1024), data[512..]);
    assert_eq!(t.ring.used_entry(&t.mem, 0), (0, 1537));
}

#[test]
fn flush_goes_to_the_engine_and_get_id_is_answered_at_once() {
    let mut t = setup(false);
    let h = header(&t, 0, 4, 0);
    t.ring
        .chain(&t.mem, 0, &[(h, 16, false), (STATUS, 1, true)]);
    t.ring.publish(&t.mem, 0);
    let h = header(&t, 2, 8, 0);
    t.ring.chain(
        &t.mem,
        2,
        &[(h, 16, false), (DATA, 20, true), (STATUS + 2, 1, true)],
    );
    t.ring.publish(&t.mem, 2);
    let reqs = take(&mut t);
    assert_eq!(
        reqs,
        vec![Request {
            id: 0,
            op: RequestOp::Flush
        }]
    );
    assert_eq!(read_bytes(&t.mem, DATA, 20), SERIAL);
    assert_eq!(status(&t, 2), STATUS_OK);
    assert_eq!(t.ring.used_entry(&t.mem, 0), (2, 21));
    t.dev.complete(&t.mem, &Completion::ok(0)).expect("flush");
    assert_eq!(t.ring.used_entry(&t.mem, 1), (0, 1));
}

/// Sets up one hostile chain at head 0, takes, and checks: no request, the
/// expected status (None: status byte untouched) and used length.
fn hostile(t: &mut T, expect_status: Option<u8>, expect_used_len: u32) {
    let used_before = t.ring.used_idx(&t.mem);
    let reqs = take(t);
    assert!(
        reqs.is_empty(),
        "hostile chain produced a request: {reqs:?}"
    );
    match expect_status {
        Some(s) => assert_eq!(status(t, 0), s),
        None => assert_eq!(status(t, 0), 0xEE, "status byte must not be written"),
    }
    assert_eq!(
        t.ring.used_idx(&t.mem),
        used_before.wrapping_add(1),
        "one used entry"
    );
    assert_eq!(t.ring.used_entry(&t.mem, used_before), (0, expect_used_len));
    assert_usable(t);
}

fn hostile_setup() -> T {
    let t = setup(false);
    write_bytes(&t.mem, status_at(0), &[0xEE]);
    t
}

#[test]
fn buffer_outside_guest_memory() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[
            (h, 16, false),
            (MEM as u64 - 256, 512, true),
            (STATUS, 1, true),
        ],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn descriptor_loop() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.set_desc(&t.mem, 0, h, 16, F_NEXT, 1);
    t.ring.set_desc(&t.mem, 1, DATA, 512, F_NEXT | F_WRITE, 1);
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn chain_longer_than_allowed() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 1, 0);
    let n: u16 = 300;
    write_desc(&t.mem, INDIRECT, 0, h, 16, F_NEXT, 1);
    for i in 1..n - 1 {
        write_desc(&t.mem, INDIRECT, i, DATA, 512, F_NEXT, i + 1);
    }
    write_desc(&t.mem, INDIRECT, n - 1, STATUS, 1, F_WRITE, 0);
    t.ring
        .set_desc(&t.mem, 0, INDIRECT, u32::from(n) * 16, F_INDIRECT, 0);
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn next_index_past_the_queue() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.set_desc(&t.mem, 0, h, 16, F_NEXT, QSIZE + 3);
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn nested_indirect_table() {
    let mut t = hostile_setup();
    write_desc(&t.mem, INDIRECT, 0, INDIRECT + 0x100, 32, F_INDIRECT, 0);
    t.ring.set_desc(&t.mem, 0, INDIRECT, 16, F_INDIRECT, 0);
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn oversized_request() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 1, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[
            (h, 16, false),
            (DATA, 2 << 20, false),
            (status_at(0), 1, true),
        ],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_IOERR), 1);
}

#[test]
fn write_only_header() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, true), (DATA, 512, true), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_IOERR), 1);
}

#[test]
fn missing_status_byte() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 1, 0);
    t.ring
        .chain(&t.mem, 0, &[(h, 16, false), (DATA, 512, false)]);
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn read_only_status_byte() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 1, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 512, false), (status_at(0), 1, false)],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, None, 0);
}

#[test]
fn zero_length_data_descriptor() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[
            (h, 16, false),
            (DATA, 0, true),
            (DATA + 0x1000, 512, true),
            (status_at(0), 1, true),
        ],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_IOERR), 1);
}

#[test]
fn sector_past_capacity() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, CAPACITY - 1);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 1024, true), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_IOERR), 1);
    // Overflowing sector arithmetic too.
    let h = header(&t, 0, 0, u64::MAX);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 512, true), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    write_bytes(&t.mem, status_at(0), &[0xEE]);
    hostile(&mut t, Some(STATUS_IOERR), 1);
}

#[test]
fn data_not_a_sector_multiple_and_wrong_direction() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 100, true), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_IOERR), 1);
    // A read whose data buffer is device-readable.
    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 512, false), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    write_bytes(&t.mem, status_at(0), &[0xEE]);
    hostile(&mut t, Some(STATUS_IOERR), 1);
}

#[test]
fn unknown_request_type_and_reserved_flags() {
    let mut t = hostile_setup();
    let h = header(&t, 0, 11, 0); // DISCARD: not offered
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 16, false), (status_at(0), 1, true)],
    );
    t.ring.publish(&t.mem, 0);
    hostile(&mut t, Some(STATUS_UNSUPP), 1);
    assert_eq!(t.dev.stats().unsupported, 1);

    let h = header(&t, 0, 0, 0);
    t.ring.chain(
        &t.mem,
        0,
        &[(h, 16, false), (DATA, 512, true), (status_at(0), 1, true)],
    );
    t.ring
        .set_desc(&t.mem, 1, DATA, 512, F_NEXT | F_WRITE | 0x10, 2);
    t.ring.publish(&t.mem, 0);
    write_bytes(&t.mem, status_at(0), &[0xEE]);
    hostile(&mut t, None, 0);
}

#[test]
fn write_to_read_only_device() {
    let mut t = setup(true);
    post_write(&t, 0, 0, &[1; 512]);
    assert!(take(&mut t).is_empty());
    assert_eq!(status(&t, 0), STATUS_IOERR);
    post_read(&t, 3, 0, 512);
    assert_eq!(take(&mut t).len(), 1, "reads still work");
}

#[test]
fn head_outside_the_queue() {
    let mut t = hostile_setup();
    t.ring.publish(&t.mem, QSIZE + 1);
    let before = t.ring.used_idx(&t.mem);
    assert!(take(&mut t).is_empty());
    assert_eq!(
        t.ring.used_idx(&t.mem),
        before,
        "no used entry for an impossible head"
    );
    assert_eq!(t.dev.stats().malformed, 1);
    assert_usable(&mut t);
}

#[test]
fn reused_in_flight_head() {
    let mut t = setup(false);
    post_read(&t, 0, 0, 512);
    assert_eq!(take(&mut t).len(), 1);
    // The driver publishes head 0 again while it is in flight.
    t.ring.publish(&t.mem, 0);
    assert!(take(&mut t).is_empty());
    assert_eq!(t.dev.stats().malformed, 1);
    assert_eq!(
        t.ring.used_idx(&t.mem),
        0,
        "no used entry for the duplicate"
    );
    let data = AlignedBuf::from_slice(&[7; 512]);
    t.dev
        .complete(&t.mem, &Completion::read(0, data))
        .expect("original completes");
    assert_eq!(t.ring.used_entry(&t.mem, 0), (0, 513));
    assert_usable(&mut t);
}

#[test]
fn avail_index_jump() {
    let mut t = setup(false);
    post_read(&t, 0, 0, 512);
    let good = t.ring.avail_idx(&t.mem);
    t.ring.set_avail_idx(&t.mem, good.wrapping_add(QSIZE + 5));
    assert!(
        take(&mut t).is_empty(),
        "nothing consumed from a broken ring"
    );
    assert_eq!(t.dev.stats().malformed, 1);
    t.ring.set_avail_idx(&t.mem, good);
    assert_eq!(
        take(&mut t).len(),
        1,
        "usable once the driver fixes avail.idx"
    );
    t.dev
        .complete(&t.mem, &Completion::read(0, AlignedBuf::zeroed(512)))
        .expect("complete");
    assert_usable(&mut t);
}

#[test]
fn unknown_and_duplicate_completions_touch_nothing() {
    let mut t = setup(false);
    post_read(&t, 0, 0, 512);
    assert_eq!(take(&mut t).len(), 1);
    let before = ring::snapshot(&t.mem, MEM);
    assert!(matches!(
        t.dev.complete(&t.mem, &Completion::ok(5)),
        Err(BlkError::UnknownId(5))
    ));
    assert!(ring::snapshot(&t.mem, MEM) == before, "memory untouched");
    t.dev
        .complete(&t.mem, &Completion::read(0, AlignedBuf::zeroed(512)))
        .expect("complete");
    let before = ring::snapshot(&t.mem, MEM);
    assert!(
        t.dev.complete(&t.mem, &Completion::ok(0)).is_err(),
        "duplicate"
    );
    assert!(ring::snapshot(&t.mem, MEM) == before, "memory untouched");
}

#[test]
fn short_read_completion_is_an_ioerr_and_an_error() {
    let mut t = setup(false);
    post_read(&t, 0, 0, 1024);
    assert_eq!(take(&mut t).len(), 1);
    let r = t
        .dev
        .complete(&t.mem, &Completion::read(0, AlignedBuf::zeroed(512)));
    assert!(matches!(
        r,
        Err(BlkError::BadCompletion {
            expected: 1024,
            got: 512,
            ..
        })
    ));
    assert_eq!(status(&t, 0), STATUS_IOERR);
    assert_eq!(t.ring.used_entry(&t.mem, 0), (0, 1));
    // An engine error status is passed to the guest as it is.
    post_read(&t, 3, 0, 512);
    assert_eq!(take(&mut t).len(), 1);
    t.dev
        .complete(&t.mem, &Completion::error(3, STATUS_IOERR))
        .expect("error completion");
    assert_eq!(status(&t, 3), STATUS_IOERR);
}

/// Runs a fixed script of guest requests, hostile chains and completions.
fn script(mem: &Mem) {
    let (ring, q) = Ring::new(mem, 0, QSIZE);
    let mut dev = BlkDevice::new(config(false));
    dev.activate(q, mem).expect("activate");
    let mut t = T {
        mem: mem.clone(),
        ring,
        dev,
    };
    post_write(&t, 0, 1, &[9; 1024]);
    post_read(&t, 3, 1, 1024);
    let h = header(&t, 6, 0, CAPACITY);
    t.ring.chain(
        &t.mem,
        6,
        &[(h, 16, false), (DATA, 512, true), (status_at(6), 1, true)],
    );
    t.ring.publish(&t.mem, 6);
    let reqs = take(&mut t);
    assert_eq!(reqs.len(), 2);
    t.dev
        .complete(
            &t.mem,
            &Completion::read(3, AlignedBuf::from_slice(&[9; 1024])),
        )
        .expect("read");
    t.dev.complete(&t.mem, &Completion::ok(0)).expect("write");
    assert_usable(&mut t);
}

#[test]
fn same_calls_give_identical_memory() {
    let a = memory(MEM);
    let b = memory(MEM);
    // Make the memories differ only where the device never looks.
    write_bytes(&b, 0x3F_0000, &[0; 16]);
    script(&a);
    script(&b);
    assert!(
        ring::snapshot(&a, MEM) == ring::snapshot(&b, MEM),
        "guest memories diverged"
    );
}
