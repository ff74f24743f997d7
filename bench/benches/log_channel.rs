//! The logging channel over loopback TCP, against raw TCP on the same
//! machine, in the same run (the drivers are `lockstep_bench::channel`;
//! `lockstep-bench channel` runs the same across a veth between two network
//! namespaces):
//!
//! * `log_channel/stream`: 256 MiB of `NetRx` 1500 B entries (1536 B each,
//!   one entry published per "exit") appended on one thread, shipped by a
//!   `SenderEngine` on its own io_uring thread, verified and acked by a
//!   `ReceiverEngine` on another — until the last seq is acked; vs. a plain
//!   `write_all`/`read` loop of as many bytes over a loopback socket.
//! * `log_channel/round_trip`: publish one `Sync` entry → its ack seen on
//!   the producer's thread: what the output rule adds to an output; vs. a
//!   40-byte TCP ping-pong between two threads.
//!
//! Run: `cargo bench -p lockstep-bench --bench log_channel`; the stream size
//! is `LOCKSTEP_BENCH_CHANNEL_MIB` (default 256). CI: `-- --test`.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockstep_bench::channel::{
    Hosts, RoundTrips, channel_round_trips, channel_stream, encoded_chunk, raw_round_trips,
    raw_stream, stream_bytes,
};
use logchan::channel::{ReceiverOptions, SendMode, SenderOptions, SenderStats};

fn ok<T, E: Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:#}"),
    }
}

fn total_bytes() -> u64 {
    let mib = std::env::var("LOCKSTEP_BENCH_CHANNEL_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(256);
    mib << 20
}

/// `LOCKSTEP_BENCH_CHANNEL_MODE`: `copy`, `zc` or `zc-fixed` forces a send
/// mode (default: the best the kernel has).
fn send_options() -> SenderOptions {
    match std::env::var("LOCKSTEP_BENCH_CHANNEL_MODE").as_deref() {
        Ok("copy") => SenderOptions::forced(SendMode::Copy),
        Ok("zc") => SenderOptions::forced(SendMode::ZeroCopy),
        Ok("zc-fixed") => SenderOptions::forced(SendMode::ZeroCopyFixed),
        _ => SenderOptions::default(),
    }
}

fn bench_stream(c: &mut Criterion) {
    let hosts = Hosts::loopback();
    let total = total_bytes();
    let bytes = stream_bytes(total);
    // 1 MiB of the same entries, for the raw copy.
    let chunk = Arc::new(ok(encoded_chunk(1 << 20), "chunk"));

    let mut g = c.benchmark_group("log_channel/stream");
    g.throughput(Throughput::Bytes(bytes));
    let (mut chan_time, mut chan_runs) = (Duration::ZERO, 0u32);
    let mut last_stats: Option<SenderStats> = None;
    g.bench_function(format!("channel_netrx_{}MiB", total >> 20), |b| {
        b.iter_custom(|iters| {
            let mut sum = Duration::ZERO;
            for _ in 0..iters {
                let run = ok(
                    channel_stream(
                        &hosts,
                        bytes,
                        send_options(),
                        ReceiverOptions::default(),
                        None,
                    ),
                    "channel stream",
                );
                sum += run.took;
                last_stats = Some(run.sender.stats);
            }
            chan_time += sum;
            chan_runs += iters as u32;
            sum
        })
    });
    let (mut raw_time, mut raw_runs) = (Duration::ZERO, 0u32);
    g.bench_function(format!("raw_tcp_{}MiB", total >> 20), |b| {
        b.iter_custom(|iters| {
            let mut sum = Duration::ZERO;
            for _ in 0..iters {
                sum += ok(raw_stream(&hosts, bytes, chunk.clone()), "raw stream").took;
            }
            raw_time += sum;
            raw_runs += iters as u32;
            sum
        })
    });
    g.finish();
    let rate = |t: Duration, runs: u32| bytes as f64 * f64::from(runs) / t.as_secs_f64() / 1e9;
    if chan_runs > 0 && raw_runs > 0 {
        let (c, r) = (rate(chan_time, chan_runs), rate(raw_time, raw_runs));
        eprintln!(
            "log_channel/stream: channel {c:.2} GB/s, raw TCP {r:.2} GB/s: channel/raw = {:.2}",
            c / r
        );
    }
    if let Some(st) = last_stats {
        eprintln!(
            "  last channel run: mode {:?}, {} segments in {} sends ({} partial), {} zc notifications ({} copied), {} acks",
            st.mode,
            st.segments_sent,
            st.send_ops,
            st.partial_sends,
            st.zc_notifications,
            st.zc_copied,
            st.acks_received
        );
    }
}

fn bench_round_trip(c: &mut Criterion) {
    let hosts = Hosts::loopback();
    let mut g = c.benchmark_group("log_channel/round_trip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_to_ack_sync", |b| {
        b.iter_custom(|iters| {
            ok(
                channel_round_trips(
                    &hosts,
                    0,
                    iters,
                    send_options(),
                    ReceiverOptions::default(),
                    None,
                ),
                "channel round trips",
            )
            .took
        })
    });
    // Raw TCP: threads sleeping in read (what a plain request/response
    // costs here), and spinning on non-blocking sockets (the floor).
    let raw = [
        ("raw_tcp_ping_pong_40B", false),
        ("raw_tcp_ping_pong_40B_spinning", true),
    ];
    for (name, spin) in raw {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| ok(raw_round_trips(&hosts, 0, iters, spin), "ping-pong").took)
        });
    }
    g.finish();

    // Percentiles, for docs/: criterion reports means.
    let samples = if std::env::args().any(|a| a == "--test") {
        100
    } else {
        20_000
    };
    let warmup = samples / 10;
    let chan = ok(
        channel_round_trips(
            &hosts,
            warmup,
            samples,
            send_options(),
            ReceiverOptions::default(),
            None,
        ),
        "channel round trips",
    );
    let pct = |rt: &RoundTrips| {
        format!(
            "p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
            rt.us(0.5),
            rt.us(0.99),
            rt.us(0.999)
        )
    };
    eprintln!(
        "log_channel/round_trip ({samples} samples): publish→ack {}",
        pct(&chan)
    );
    for (name, spin) in raw {
        let rt = ok(raw_round_trips(&hosts, warmup, samples, spin), "ping-pong");
        eprintln!("  {name}: {}", pct(&rt));
    }
    if let Some(st) = chan.sender {
        eprintln!(
            "  channel: mode {:?}, {} acks for {} entries",
            st.mode, st.acks_received, st.entries_sent
        );
    }
}

fn config() -> Criterion {
    // Two shared cores and 256 MiB per stream run: few, short samples.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_stream, bench_round_trip
}
criterion_main!(benches);
