//! Cost of the device models per request / frame, on queues in a real
//! `GuestMemoryMmap` laid out by `virtio_queue::mock::MockSplitQueue`: what
//! one sync-call exit spends on virtio work, without KVM or io_uring.
//!
//! `cargo bench -p lockstep-bench --bench virtio_queue`

#[path = "../../blkio/tests/common/ring.rs"]
mod ring;

use std::hint::black_box;

use blkio::{AlignedBuf, BlkConfig, BlkDevice, Completion};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netio::NetDevice;
use ring::{Mem, Ring, memory, write_bytes};

const MEM: usize = 4 << 20;
const QSIZE: u16 = 256;
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_8000;
const DATA: u64 = 0x2_0000;

fn blk_setup() -> (Mem, Ring, BlkDevice) {
    let mem = memory(MEM);
    let (ring, q) = Ring::new(&mem, 0, QSIZE);
    let mut dev = BlkDevice::new(BlkConfig {
        capacity_sectors: 1 << 20,
        read_only: false,
        serial: [0; 20],
    });
    dev.activate(q, &mem).expect("activate");
    (mem, ring, dev)
}

/// Writes `n` request chains (header, 4 KiB data, status) of type `req_type`
/// at descriptors 0, 3, 6, ...; returns their heads.
fn blk_chains(mem: &Mem, ring: &Ring, req_type: u32, n: u16) -> Vec<u16> {
    (0..n)
        .map(|k| {
            let head = k * 3;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..16].copy_from_slice(&(u64::from(k) * 8).to_le_bytes());
            let hdr = HDR + u64::from(k) * 16;
            write_bytes(mem, hdr, &h);
            let data = DATA + u64::from(k) * 4096;
            let writable = req_type == 0;
            ring.chain(
                mem,
                head,
                &[
                    (hdr, 16, false),
                    (data, 4096, writable),
                    (STATUS + u64::from(k), 1, true),
                ],
            );
            head
        })
        .collect()
}

fn bench_blk(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_blk");
    for (name, req_type) in [("read_4k", 0u32), ("write_4k", 1u32)] {
        for batch in [1u16, 16] {
            let (mem, ring, mut dev) = blk_setup();
            let heads = blk_chains(&mem, &ring, req_type, batch);
            let data = AlignedBuf::zeroed(4096);
            let mut reqs = Vec::with_capacity(usize::from(batch));
            g.throughput(Throughput::Elements(u64::from(batch)));
            g.bench_function(format!("{name}_take_complete_x{batch}"), |b| {
                b.iter(|| {
                    for h in &heads {
                        ring.publish(&mem, *h);
                    }
                    reqs.clear();
                    dev.take_requests(&mem, &mut reqs);
                    for r in reqs.drain(..) {
                        let c = if req_type == 0 {
                            Completion::read(r.id, data.clone())
                        } else {
                            Completion::ok(r.id)
                        };
                        dev.complete(&mem, black_box(&c)).expect("complete");
                    }
                })
            });
        }
    }
    g.finish();
}

fn net_setup() -> (Mem, Ring, Ring, NetDevice) {
    let mem = memory(MEM);
    let (rx, rxq) = Ring::new(&mem, 0, QSIZE);
    let (tx, txq) = Ring::new(&mem, 0x1_0000, QSIZE);
    let mut dev = NetDevice::new([2, 0, 0, 0, 0, 1]);
    dev.activate(rxq, txq, &mem).expect("activate");
    (mem, rx, tx, dev)
}

fn bench_net(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_net");
    let frame = vec![0x5Au8; 1514];
    for len in [64usize, 1514] {
        let (mem, rx, tx, mut dev) = net_setup();
        write_bytes(&mem, 0x10_0000, &[0u8; 12]);
        write_bytes(&mem, 0x10_0000 + 12, &frame[..len]);
        tx.chain(&mem, 0, &[(0x10_0000, 12 + len as u32, false)]);
        rx.chain(&mem, 0, &[(0x20_0000, 2048, true)]);
        let mut out = Vec::with_capacity(1);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("take_tx_{len}"), |b| {
            b.iter(|| {
                tx.publish(&mem, 0);
                out.clear();
                dev.take_tx(&mem, &mut out);
                black_box(&out);
            })
        });
        g.bench_function(format!("deliver_rx_{len}"), |b| {
            b.iter(|| {
                rx.publish(&mem, 0);
                let ok = dev
                    .deliver_rx(&mem, black_box(&frame[..len]))
                    .expect("deliver");
                assert!(ok);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_blk, bench_net);
criterion_main!(benches);
