//! The logging channel over loopback TCP, against raw TCP on the same
//! machine, in the same run:
//!
//! * `log_channel/stream`: 256 MiB of `NetRx` 1500 B entries (1536 B each,
//!   one entry published per "exit") appended on this thread, shipped by a
//!   `SenderEngine` on its own io_uring thread, verified and acked by a
//!   `ReceiverEngine` on another — until the last seq is acked; vs. a plain
//!   `write_all`/`read` loop of as many bytes over a loopback socket.
//! * `log_channel/round_trip`: publish one `Sync` entry → its ack seen on
//!   this (the producer's) thread: what the output rule adds to an output;
//!   vs. a 40-byte TCP ping-pong between two threads.
//!
//! The engine threads run the VMM's I/O-thread pattern: poll the ring,
//! spin briefly (yielding) when idle, then sleep in `io_uring_enter` with an
//! eventfd read armed that the producer rings after `publish` only if the
//! thread sleeps (one load otherwise).
//!
//! Run: `cargo bench -p lockstep-bench --bench log_channel`; the stream size
//! is `LOCKSTEP_BENCH_CHANNEL_MIB` (default 256). CI: `-- --test`.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use logchan::channel::io_uring::{IoUring, cqueue, opcode, squeue, types};
use logchan::channel::{
    ReceiverEngine, ReceiverEvent, ReceiverOptions, Registration, SendMode, SenderEngine,
    SenderEvent, SenderOptions, SenderStats,
};
use logchan::{
    Entry, ExitKind, GuestIdentity, LogConfig, LogConsumer, LogProducer, StreamHeader, encoded_len,
    log_buffers_with,
};

const TAG_CHAN: u8 = 1;
const TAG_WAKE: u8 = 0xff;
/// How long an engine thread polls with nothing to do before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(50);
const FRAME: [u8; 1500] = [0x5a; 1500];
const PING: usize = 40;

fn ok<T, E: Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn stream_bytes() -> u64 {
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

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = ok(TcpListener::bind("127.0.0.1:0"), "bind");
    let c = ok(TcpStream::connect(ok(l.local_addr(), "addr")), "connect");
    let (s, _) = ok(l.accept(), "accept");
    ok(c.set_nodelay(true), "nodelay");
    ok(s.set_nodelay(true), "nodelay");
    (c, s)
}

/// The VMM's `IoWaker`: an eventfd the producer writes only while the
/// engine thread sleeps.
struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    fn new() -> Arc<Doorbell> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            panic!("eventfd: {}", std::io::Error::last_os_error());
        }
        Arc::new(Doorbell {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// After `publish`: pairs with the fence in `EngineLoop::run`.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// An engine thread's loop: the I/O thread's, with one engine.
struct EngineLoop {
    ring: IoUring,
    bell: Option<Arc<Doorbell>>,
    bell_buf: Box<[u8; 8]>,
    bell_armed: bool,
}

impl EngineLoop {
    fn new(bell: Option<Arc<Doorbell>>) -> EngineLoop {
        EngineLoop {
            ring: ok(IoUring::new(256), "io_uring"),
            bell,
            bell_buf: Box::new([0; 8]),
            bell_armed: false,
        }
    }

    /// Runs until `done`: `pump` each turn, `on` for each engine CQE.
    fn run(
        &mut self,
        mut pump: impl FnMut(&mut squeue::SubmissionQueue<'_>),
        mut on: impl FnMut(&cqueue::Entry, &mut squeue::SubmissionQueue<'_>),
        mut done: impl FnMut() -> bool,
    ) {
        let (submitter, mut sq, mut cq) = self.ring.split();
        let mut idle_since: Option<Instant> = None;
        loop {
            pump(&mut sq);
            if let Some(bell) = &self.bell
                && !self.bell_armed
            {
                let e = opcode::Read::new(
                    types::Fd(bell.fd.as_raw_fd()),
                    self.bell_buf.as_mut_ptr(),
                    8,
                )
                .build()
                .user_data(u64::from(TAG_WAKE) << 56);
                // SAFETY: `bell_buf` lives in `self`, which outlives the
                // ring's use of it (the loop ends only with the ring).
                self.bell_armed = unsafe { sq.push(&e) }.is_ok();
            }
            sq.sync();
            if done() {
                return;
            }
            let queued = !sq.is_empty();
            match submitter.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => panic!("io_uring_enter: {e}"),
            }
            cq.sync();
            let mut busy = queued;
            for cqe in &mut cq {
                busy = true;
                if (cqe.user_data() >> 56) as u8 == TAG_WAKE {
                    self.bell_armed = false;
                } else {
                    on(&cqe, &mut sq);
                }
            }
            if busy {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE_SPIN {
                // Two cores, several threads: let the one we wait for run.
                std::thread::yield_now();
                continue;
            }
            // Sleep until a CQE or the doorbell. Announce it first, then
            // look once more: a publish before the announcement is seen by
            // this pump, one after it rings the bell.
            if let Some(bell) = &self.bell {
                bell.sleeping.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                pump(&mut sq);
                sq.sync();
            }
            let ts = types::Timespec::from(Duration::from_millis(100));
            let args = types::SubmitArgs::new().timespec(&ts);
            match submitter.submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => panic!("io_uring_enter: {e}"),
            }
            if let Some(bell) = &self.bell {
                bell.sleeping.store(false, Ordering::SeqCst);
            }
            idle_since = None;
        }
    }
}

fn header() -> StreamHeader {
    StreamHeader::new(
        GuestIdentity {
            kernel_hash: 1,
            boot_hash: 2,
            mem_size: 64 << 20,
        },
        0,
        1,
    )
}

/// A running SenderEngine → ReceiverEngine pair; `acked` follows the
/// sender's `Acked` events.
struct Channel {
    producer: LogProducer,
    bell: Arc<Doorbell>,
    acked: Arc<AtomicU64>,
    sender: JoinHandle<SenderStats>,
    receiver: JoinHandle<u64>,
}

impl Channel {
    fn start() -> Channel {
        let (client, server) = tcp_pair();
        let mut cfg = LogConfig::new(8, 1 << 20);
        // The engine thread never parks on the log's futex: the doorbell
        // is its wake-up.
        cfg.wake_consumer = false;
        let (producer, consumer) = ok(log_buffers_with(&cfg), "log buffers");
        let bell = Doorbell::new();
        let acked = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(Barrier::new(3));
        let sender = {
            let (bell, acked, ready) = (bell.clone(), acked.clone(), ready.clone());
            std::thread::spawn(move || run_sender(client, consumer, bell, acked, ready))
        };
        let receiver = {
            let ready = ready.clone();
            std::thread::spawn(move || run_receiver(server, ready))
        };
        ready.wait();
        Channel {
            producer,
            bell,
            acked,
            sender,
            receiver,
        }
    }

    fn publish(&mut self, entry: &Entry<'_>) -> u64 {
        let exit = self.producer.last_exit_index() + 1;
        let seq = ok(
            self.producer.append(exit, ExitKind::SyncPort, entry),
            "append",
        );
        ok(self.producer.publish(), "publish");
        self.bell.ring();
        seq
    }

    fn wait_acked(&self, seq: u64) {
        let mut i = 0u32;
        while self.acked.load(Ordering::Acquire) < seq {
            std::hint::spin_loop();
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }

    /// Finishes the stream; returns the sender's counters and the bytes the
    /// receiver got.
    fn stop(self) -> (SenderStats, u64) {
        ok(self.producer.finish(), "finish");
        self.bell.ring();
        let stats = match self.sender.join() {
            Ok(s) => s,
            Err(_) => panic!("sender thread panicked"),
        };
        let bytes = match self.receiver.join() {
            Ok(b) => b,
            Err(_) => panic!("receiver thread panicked"),
        };
        (stats, bytes)
    }
}

fn run_sender(
    stream: TcpStream,
    consumer: LogConsumer,
    bell: Arc<Doorbell>,
    acked: Arc<AtomicU64>,
    ready: Arc<Barrier>,
) -> SenderStats {
    let mut lp = EngineLoop::new(Some(bell));
    let mut engine = ok(
        SenderEngine::new(stream, consumer, header(), TAG_CHAN, send_options()),
        "sender",
    );
    ok(
        engine.attach(&lp.ring.submitter(), Registration::Table),
        "attach sender",
    );
    ready.wait();
    // The loop's three closures take turns with the engine.
    let engine = RefCell::new(engine);
    lp.run(
        |sq| engine.borrow_mut().pump(sq),
        |cqe, sq| {
            engine.borrow_mut().on_cqe(cqe, sq, &mut |e| match e {
                SenderEvent::Acked { acked_seq, .. } => acked.store(acked_seq, Ordering::Release),
                SenderEvent::Closed { reason } => panic!("logging channel closed: {reason}"),
            })
        },
        || {
            let e = engine.borrow();
            e.is_drained() && e.acked().acked_seq == e.stats().entries_sent
        },
    );
    engine.borrow_mut().shutdown();
    lp.run(
        |_| {},
        |cqe, sq| engine.borrow_mut().on_cqe(cqe, sq, &mut |_| {}),
        || engine.borrow().ops_in_flight() == 0,
    );
    let mut engine = engine.into_inner();
    ok(engine.detach(&lp.ring.submitter()), "detach sender");
    engine.stats()
}

fn run_receiver(stream: TcpStream, ready: Arc<Barrier>) -> u64 {
    let mut lp = EngineLoop::new(None);
    let mut engine = ok(
        ReceiverEngine::new(stream, TAG_CHAN, ReceiverOptions::default()),
        "receiver",
    );
    ok(
        engine.attach(&lp.ring.submitter(), Registration::Table),
        "attach receiver",
    );
    ready.wait();
    let engine = RefCell::new(engine);
    let bytes = Cell::new(0u64);
    let ended = Cell::new(false);
    lp.run(
        |sq| engine.borrow_mut().pump(sq),
        |cqe, sq| {
            let mut e = engine.borrow_mut();
            let mut ack = None;
            e.on_cqe(cqe, sq, &mut |ev| match ev {
                ReceiverEvent::Entries {
                    bytes: b,
                    last_seq,
                    last_exit,
                    ..
                } => {
                    bytes.set(bytes.get() + black_box(b).len() as u64);
                    ack = Some((last_seq, last_exit));
                }
                ReceiverEvent::Closed { .. } => ended.set(true),
                ReceiverEvent::Corrupt { error } => panic!("corrupt stream: {error}"),
                ReceiverEvent::Header(_) => {}
            });
            // What the VMM does: hand the entries on, then ack at once.
            if let Some((seq, exit)) = ack {
                e.ack(seq, exit, sq);
            }
        },
        || ended.get(),
    );
    engine.borrow_mut().shutdown();
    lp.run(
        |_| {},
        |cqe, sq| engine.borrow_mut().on_cqe(cqe, sq, &mut |_| {}),
        || engine.borrow().ops_in_flight() == 0,
    );
    let mut engine = engine.into_inner();
    ok(engine.detach(&lp.ring.submitter()), "detach receiver");
    bytes.get()
}

/// Streams `total` bytes of NetRx entries through the channel; returns the
/// time from the first append to the last entry's ack.
fn stream_once(total: u64) -> (Duration, SenderStats) {
    let e = Entry::NetRx { frame: &FRAME };
    let n = total / encoded_len(&e) as u64;
    let mut ch = Channel::start();
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..n {
        last = ch.publish(&e);
    }
    ch.wait_acked(last);
    let took = start.elapsed();
    let (stats, received) = ch.stop();
    assert_eq!(received, n * encoded_len(&e) as u64);
    (took, stats)
}

/// The same bytes over a plain loopback socket.
fn raw_once(total: u64, chunk: &Arc<Vec<u8>>) -> Duration {
    let (mut w, mut r) = tcp_pair();
    let ready = Arc::new(Barrier::new(3));
    let reader = {
        let ready = ready.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            ready.wait();
            let mut got = 0u64;
            while got < total {
                let n = ok(r.read(&mut buf), "raw read");
                assert!(n > 0, "raw stream ended early");
                got += n as u64;
            }
            Instant::now()
        })
    };
    let writer = {
        let (ready, chunk) = (ready.clone(), chunk.clone());
        std::thread::spawn(move || {
            ready.wait();
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                ok(w.write_all(&chunk[..n]), "raw write");
                left -= n as u64;
            }
        })
    };
    ready.wait();
    let start = Instant::now();
    let end = match reader.join() {
        Ok(t) => t,
        Err(_) => panic!("raw reader panicked"),
    };
    if writer.join().is_err() {
        panic!("raw writer panicked");
    }
    end - start
}

fn bench_stream(c: &mut Criterion) {
    let total = stream_bytes();
    let e = Entry::NetRx { frame: &FRAME };
    let entry_len = encoded_len(&e);
    let bytes = total / entry_len as u64 * entry_len as u64;
    // 1 MiB of the same entries, for the raw copy.
    let mut chunk = Vec::new();
    let mut buf = vec![0u8; entry_len];
    for seq in 1..=(1 << 20) / entry_len as u64 {
        ok(
            logchan::encode_into(&mut buf, seq, seq, ExitKind::SyncPort, &e),
            "encode",
        );
        chunk.extend_from_slice(&buf);
    }
    let chunk = Arc::new(chunk);

    let mut g = c.benchmark_group("log_channel/stream");
    g.throughput(Throughput::Bytes(bytes));
    let (mut chan_time, mut chan_runs) = (Duration::ZERO, 0u32);
    let mut last_stats = None;
    g.bench_function(format!("channel_netrx_{}MiB", total >> 20), |b| {
        b.iter_custom(|iters| {
            let mut sum = Duration::ZERO;
            for _ in 0..iters {
                let (t, st) = stream_once(bytes);
                sum += t;
                last_stats = Some(st);
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
                sum += raw_once(bytes, &chunk);
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

/// A 40-byte ping-pong server; ends when the client closes. `spin`: the
/// socket is non-blocking and the server polls it (yielding now and then)
/// instead of sleeping in `read`.
fn pong_server(mut s: TcpStream, spin: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut b = [0u8; PING];
        while read_exact(&mut s, &mut b, spin).is_ok() {
            if write_all(&mut s, &b, spin).is_err() {
                return;
            }
        }
    })
}

fn backoff(i: &mut u32) {
    std::hint::spin_loop();
    *i = i.wrapping_add(1);
    if i.is_multiple_of(64) {
        std::thread::yield_now();
    }
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> std::io::Result<()> {
    if !spin {
        return s.read_exact(buf);
    }
    let (mut got, mut i) = (0, 0u32);
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => backoff(&mut i),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all(s: &mut TcpStream, buf: &[u8], spin: bool) -> std::io::Result<()> {
    if !spin {
        return s.write_all(buf);
    }
    let (mut put, mut i) = (0, 0u32);
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(n) => put += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => backoff(&mut i),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Round trips of a 40-byte ping-pong; `hist` gets each one's latency.
fn ping_pong(
    client: &mut TcpStream,
    iters: u64,
    spin: bool,
    hist: Option<&mut Histogram<u64>>,
) -> Duration {
    let ping = [0x11u8; PING];
    let mut back = [0u8; PING];
    let start = Instant::now();
    let mut hist = hist;
    for _ in 0..iters {
        let t = Instant::now();
        ok(write_all(client, &ping, spin), "ping");
        ok(read_exact(client, &mut back, spin), "pong");
        if let Some(h) = hist.as_deref_mut() {
            let _ = h.record(t.elapsed().as_nanos() as u64);
        }
    }
    start.elapsed()
}

fn bench_round_trip(c: &mut Criterion) {
    let sync = Entry::Sync {
        flags: 1,
        events: 0,
        now_ns: 1,
        deadline_ns: 0,
    };
    let mut g = c.benchmark_group("log_channel/round_trip");
    g.throughput(Throughput::Elements(1));

    let mut ch = Channel::start();
    g.bench_function("publish_to_ack_sync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let seq = ch.publish(&sync);
                ch.wait_acked(seq);
            }
            start.elapsed()
        })
    });
    // Percentiles, for docs/: criterion reports means.
    let samples = if std::env::args().any(|a| a == "--test") {
        100
    } else {
        20_000
    };
    let mut chan_hist = ok(Histogram::<u64>::new(3), "histogram");
    for _ in 0..samples {
        let t = Instant::now();
        let seq = ch.publish(&sync);
        ch.wait_acked(seq);
        let _ = chan_hist.record(t.elapsed().as_nanos() as u64);
    }
    let (stats, _) = ch.stop();

    // Raw TCP: threads sleeping in read (what a plain request/response
    // costs here), and spinning on non-blocking sockets (the floor).
    let mut raw = Vec::new();
    for (name, spin) in [
        ("raw_tcp_ping_pong_40B", false),
        ("raw_tcp_ping_pong_40B_spinning", true),
    ] {
        let (mut client, server) = tcp_pair();
        ok(client.set_nonblocking(spin), "nonblocking");
        ok(server.set_nonblocking(spin), "nonblocking");
        let srv = pong_server(server, spin);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| ping_pong(&mut client, iters, spin, None))
        });
        let mut hist = ok(Histogram::<u64>::new(3), "histogram");
        ping_pong(&mut client, samples, spin, Some(&mut hist));
        drop(client);
        let _ = srv.join();
        raw.push((name, hist));
    }
    g.finish();
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    eprintln!(
        "log_channel/round_trip ({samples} samples): publish→ack p50 {:.1} µs, p99 {:.1} µs",
        us(&chan_hist, 0.5),
        us(&chan_hist, 0.99),
    );
    for (name, h) in &raw {
        eprintln!(
            "  {name}: p50 {:.1} µs, p99 {:.1} µs",
            us(h, 0.5),
            us(h, 0.99)
        );
    }
    eprintln!(
        "  channel: mode {:?}, {} acks for {} entries",
        stats.mode, stats.acks_received, stats.entries_sent
    );
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
