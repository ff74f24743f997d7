//! The output gate (the paper's output rule) on the I/O thread: frames are
//! held with the log sequence number current when the guest produced them
//! and released when the backup's ack reaches it. Measured: holding a batch
//! of frames and releasing it with one ack, as the I/O thread does per ack
//! (the tap engine's `ioengine::OutputGate<Vec<u8>>`), and the disk gate's
//! check per write (the same type, holding nothing).
//!
//! Run: `cargo bench -p lockstep-bench --bench output_gate`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ioengine::OutputGate;

type FrameGate = OutputGate<Vec<u8>>;

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("output_gate");
    for batch in [1u64, 32] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("frames_hold_release_x{batch}"), |b| {
            let mut gate = FrameGate::new();
            let mut seq = 0u64;
            // The frames' buffers are recycled, as the I/O thread's pool
            // does: the allocation is not the gate's cost.
            let mut pool: Vec<Vec<u8>> = (0..batch).map(|_| vec![0x5a; 1514]).collect();
            b.iter(|| {
                for f in pool.drain(..) {
                    seq += 1;
                    gate.push(seq, f);
                }
                gate.release(black_box(seq));
                let now = Instant::now();
                while let Some(f) = gate.pop_ready(now) {
                    pool.push(f);
                }
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame_held_until_ack", |b| {
        // A frame waits behind an unacked one: the gate's "not yet" path.
        b.iter_batched_ref(
            || {
                let mut gate = FrameGate::new();
                gate.push(2, vec![0; 64]);
                gate
            },
            |gate| {
                gate.release(black_box(1));
                black_box(gate.pop_ready(Instant::now()))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("disk_release_check", |b| {
        let mut gate = OutputGate::<()>::new();
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            gate.release(black_box(seq));
            black_box(gate.is_open(black_box(seq)))
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_frames
}
criterion_main!(benches);
