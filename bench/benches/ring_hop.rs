//! The vCPU ↔ I/O thread hop: an `rtrb` SPSC ring each way, the consumer
//! polling (the hot path), measured as a round trip of one message between
//! two threads. Compare with `../shared/probes/handoff/run` (a spinning
//! hand-off ~0.2 µs, a blocking wake-up ~20–60 µs on this machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

/// Round trips of `msg`-sized frames through two rings and a spinning echo
/// thread, as the vCPU thread would hand a frame to the I/O thread and get
/// one back.
fn round_trips(iters: u64, frame_len: usize) -> Duration {
    let (mut to_io, mut io_rx) = rtrb::RingBuffer::<Vec<u8>>::new(4096);
    let (mut io_tx, mut from_io) = rtrb::RingBuffer::<Vec<u8>>::new(4096);
    let stop = Arc::new(AtomicBool::new(false));
    let echo_stop = stop.clone();
    let echo = std::thread::spawn(move || {
        while !echo_stop.load(Ordering::Relaxed) {
            match io_rx.pop() {
                Ok(m) => {
                    let mut m = m;
                    while let Err(rtrb::PushError::Full(back)) = io_tx.push(m) {
                        m = back;
                    }
                }
                Err(_) => std::hint::spin_loop(),
            }
        }
    });
    let frame = vec![0u8; frame_len];
    let started = Instant::now();
    for _ in 0..iters {
        let _ = to_io.push(frame.clone());
        loop {
            if from_io.pop().is_ok() {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    elapsed
}

fn ring_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("vcpu_io_ring_round_trip");
    g.measurement_time(Duration::from_secs(3));
    for len in [64usize, 1514] {
        g.bench_function(format!("frame_{len}B"), |b| {
            b.iter_custom(|iters| round_trips(iters, len))
        });
    }
    g.finish();
}

criterion_group!(benches, ring_hop);
criterion_main!(benches);
