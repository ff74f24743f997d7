//! Log entry costs on the recording fast path: encode and decode of the
//! common kinds, the checksums/hashes they use, and the vCPU → logchan
//! thread hand-off through `logchan::log_buffers`.
//!
//! Run: `cargo bench -p lockstep-bench --bench log_entry`
//! (CI: `cargo bench -p lockstep-bench --bench log_entry -- --test`).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use logchan::{
    Entry, ExitKind, LogConfig, LogConsumer, LogProducer, decode, encode_into, encoded_len,
    log_buffers_with,
};

const FRAME: [u8; 1500] = [0x5a; 1500];
const BLOCK: [u8; 4096] = [0xa5; 4096];

fn cases() -> [(&'static str, Entry<'static>); 3] {
    [
        (
            "sync",
            Entry::Sync {
                flags: 1,
                events: 0b101,
                now_ns: 123_456_789,
                deadline_ns: 0,
            },
        ),
        ("netrx_1500", Entry::NetRx { frame: &FRAME }),
        (
            "blkdone_4k",
            Entry::BlkDone {
                id: 3,
                status: 0,
                data: &BLOCK,
            },
        ),
    ]
}

fn throughput(e: &Entry<'_>) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: 1,
        bytes: encoded_len(e) as u64,
    }
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_entry/encode");
    let mut buf = vec![0u8; 8192];
    for (name, e) in cases() {
        g.throughput(throughput(&e));
        g.bench_function(name, |b| {
            let mut seq = 0u64;
            b.iter(|| {
                seq += 1;
                encode_into(&mut buf, seq, seq, ExitKind::SyncPort, black_box(&e))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("log_entry/decode");
    for (name, e) in cases() {
        let mut bytes = vec![0u8; encoded_len(&e)];
        if encode_into(&mut bytes, 1, 1, ExitKind::SyncPort, &e).is_err() {
            panic!("cannot encode the {name} case");
        }
        g.throughput(throughput(&e));
        g.bench_function(name, |b| {
            b.iter(|| decode(black_box(&bytes)).map(|(r, n)| (r.header.seq, n)))
        });
    }
    g.finish();
}

fn bench_hashes(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_entry/hash");
    for size in [1500usize, 4096, 1 << 20] {
        let data = vec![0x3cu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("crc32c_{size}"), |b| {
            b.iter(|| logchan::checksum(black_box(&data)))
        });
        g.bench_function(format!("xxh3_{size}"), |b| {
            b.iter(|| logchan::output_hash(black_box(&data)))
        });
    }
    g.finish();
}

/// A consumer thread that takes and releases segments and counts entries.
struct Drain {
    consumed: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

fn drain(cons: LogConsumer) -> Drain {
    let consumed = Arc::new(AtomicU64::new(0));
    let seen = consumed.clone();
    let thread = std::thread::spawn(move || {
        loop {
            match cons.next_segment(Duration::from_millis(100)) {
                Some(s) => {
                    let last = s.last_seq();
                    black_box(s.bytes());
                    if cons.release(s).is_err() {
                        return;
                    }
                    seen.store(last, Ordering::Release);
                }
                None if cons.is_finished() => return,
                None => {}
            }
        }
    });
    Drain { consumed, thread }
}

fn pair() -> (LogProducer, LogConsumer) {
    // The VMM's shape: a few 1 MiB buffers.
    match log_buffers_with(&LogConfig::new(8, 1 << 20)) {
        Ok(p) => p,
        Err(e) => panic!("log buffers: {e}"),
    }
}

/// Spins until the consumer has released `seq`, yielding now and then: on a
/// loaded two-core machine both threads may share a core, and a pure spin
/// would hold the consumer off for a whole time slice.
fn wait_consumed(consumed: &AtomicU64, seq: u64) {
    let mut i = 0u32;
    while consumed.load(Ordering::Acquire) < seq {
        std::hint::spin_loop();
        i = i.wrapping_add(1);
        if i.is_multiple_of(256) {
            std::thread::yield_now();
        }
    }
}

/// Per entry: append + publish on this thread (one entry per exit, the
/// worst case), until the consumer thread has taken and released them all.
fn bench_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_entry/handoff");
    for (name, e) in cases() {
        let (mut prod, cons) = pair();
        let d = drain(cons);
        g.throughput(throughput(&e));
        g.bench_function(format!("stream_{name}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut exit = prod.last_exit_index();
                for _ in 0..iters {
                    exit += 1;
                    if prod.append(exit, ExitKind::SyncPort, &e).is_err() || prod.publish().is_err()
                    {
                        panic!("producer failed");
                    }
                }
                wait_consumed(&d.consumed, prod.seq());
                start.elapsed()
            })
        });
        drop(prod);
        let _ = d.thread.join();
    }

    // One entry there and the consumer's progress back: the latency of a
    // spinning hand-off in both directions.
    let (mut prod, cons) = pair();
    let d = drain(cons);
    g.throughput(Throughput::Elements(1));
    g.bench_function("round_trip_sync", |b| {
        let e = cases()[0].1;
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut exit = prod.last_exit_index();
            for _ in 0..iters {
                exit += 1;
                if prod.append(exit, ExitKind::SyncPort, &e).is_err() || prod.publish().is_err() {
                    panic!("producer failed");
                }
                wait_consumed(&d.consumed, prod.seq());
            }
            start.elapsed()
        })
    });
    let stats = prod.stats();
    drop(prod);
    let _ = d.thread.join();
    eprintln!("hand-off counters: {stats:?}");
    g.finish();
}

fn config() -> Criterion {
    // Two shared cores: keep runs short.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_codec, bench_hashes, bench_handoff
}
criterion_main!(benches);
