//! Producer → consumer hand-off: the consumer sees exactly the encoded
//! stream, in order, across real threads, with buffers wrapping and the
//! producer stalling.

mod common;

use std::time::{Duration, Instant};

use common::{Rng, encode, random_entry};
use logchan::{
    Entry, ExitKind, LogConfig, ProducerError, ReleaseError, log_buffers, log_buffers_with,
};

/// The entries a producer with `seed` appends, encoded by the reference
/// encoder, and where it publishes.
fn plan(seed: u64, n: usize, pool: &[u8], max_blob: usize) -> Vec<(Entry<'_>, u64, bool)> {
    let mut rng = Rng(seed);
    let mut exit = 0u64;
    (0..n)
        .map(|_| {
            exit += rng.below(3) as u64;
            let e = random_entry(&mut rng, pool, max_blob);
            let publish = rng.below(4) == 0;
            (e, exit, publish)
        })
        .collect()
}

fn reference(plan: &[(Entry<'_>, u64, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (e, exit, _)) in plan.iter().enumerate() {
        out.extend(encode(i as u64 + 1, *exit, ExitKind::PioOut, e));
    }
    out
}

/// Runs a producer thread over `plan` and a consumer on this thread that
/// holds up to `hold` segments before releasing and sleeps now and then.
fn run(cfg: LogConfig, seed: u64, n: usize, max_blob: usize, hold: usize) -> logchan::LogStats {
    let pool = Rng(seed ^ 0xabc).bytes(4096);
    let expect = reference(&plan(seed, n, &pool, max_blob));
    let (mut prod, cons) = log_buffers_with(&cfg).expect("buffers");
    let pool2 = pool.clone();
    let producer = std::thread::spawn(move || {
        let plan = plan(seed, n, &pool2, max_blob);
        for (i, (e, exit, publish)) in plan.iter().enumerate() {
            let seq = prod.append(*exit, ExitKind::PioOut, e).expect("append");
            assert_eq!(seq, i as u64 + 1);
            assert_eq!(prod.seq(), seq);
            if *publish {
                prod.publish().expect("publish");
                assert_eq!(prod.published_seq(), seq);
            }
        }
        prod.finish().expect("finish")
    });
    let mut got = Vec::with_capacity(expect.len());
    let mut held = std::collections::VecDeque::new();
    let mut rng = Rng(seed);
    let mut next_seq = 1;
    loop {
        match cons.next_segment(Duration::from_millis(20)) {
            Some(seg) => {
                assert_eq!(seg.first_seq(), next_seq);
                next_seq = seg.last_seq() + 1;
                assert_eq!(seg.offset() % 8, 0);
                assert!(seg.offset() + seg.len() <= cons.buffer_size());
                got.extend_from_slice(seg.bytes());
                held.push_back(seg);
                if held.len() >= hold {
                    let s = held.pop_front().expect("held");
                    cons.release(s).expect("in order");
                }
                if rng.below(16) == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            None => {
                while let Some(s) = held.pop_front() {
                    cons.release(s).expect("in order");
                }
                if cons.is_finished() {
                    break;
                }
            }
        }
    }
    let last = producer.join().expect("producer thread");
    assert_eq!(last, n as u64);
    assert_eq!(next_seq, n as u64 + 1);
    assert!(
        got == expect,
        "consumer bytes differ from the reference stream"
    );
    let stats = cons.stats();
    assert_eq!(stats.entries, n as u64);
    assert_eq!(stats.bytes, expect.len() as u64);
    stats
}

#[test]
fn small_buffers_wrap_and_stall_under_load() {
    let mut cfg = LogConfig::new(3, 4096);
    cfg.spin = Duration::from_micros(20);
    let stats = run(cfg, 1, 20_000, 1000, 3);
    assert!(stats.stalls > 0, "{stats:?}");
    eprintln!("{stats:?}");
}

#[test]
fn a_single_buffer_still_works() {
    let stats = run(LogConfig::new(1, 4096), 2, 3_000, 1500, 1);
    assert!(stats.stalls > 0, "{stats:?}");
}

#[test]
fn a_tiny_ring_stalls_on_descriptors() {
    let mut cfg = LogConfig::new(4, 65536);
    cfg.ring_slots = 2;
    run(cfg, 3, 10_000, 200, 2);
}

#[test]
fn large_buffers_many_entries() {
    run(LogConfig::new(4, 1 << 20), 4, 50_000, 4096, 8);
}

#[test]
fn refuses_oversized_entries_and_backwards_exits() {
    let (mut p, _c) = log_buffers(2, 4096).expect("buffers");
    let big = [0u8; 4096];
    assert_eq!(
        p.append(0, ExitKind::None, &Entry::NetRx { frame: &big }),
        Err(ProducerError::EntryTooLarge {
            len: 4128,
            buffer_size: 4096
        })
    );
    assert_eq!(p.append(5, ExitKind::None, &Entry::KeepAlive), Ok(1));
    assert_eq!(
        p.append(4, ExitKind::None, &Entry::KeepAlive),
        Err(ProducerError::ExitIndexBackwards {
            previous: 5,
            exit_index: 4
        })
    );
    let too_big = vec![0u8; logchan::MAX_PAYLOAD + 1];
    assert!(matches!(
        p.append(5, ExitKind::SyncPort, &Entry::NetRx { frame: &too_big }),
        Err(ProducerError::Encode(_))
    ));
    assert_eq!(p.seq(), 1);
    assert_eq!(p.pending_entries(), 1);
}

#[test]
fn a_full_pool_times_out_then_reports_a_closed_consumer() {
    let mut cfg = LogConfig::new(2, 4096);
    cfg.stall_timeout = Duration::from_millis(30);
    let (mut p, c) = log_buffers_with(&cfg).expect("buffers");
    let frame = [7u8; 2000];
    let e = Entry::NetRx { frame: &frame };
    // 2 entries per buffer, 2 buffers: the 5th must wait.
    for _ in 0..4 {
        p.append(1, ExitKind::None, &e).expect("fits");
    }
    let t = Instant::now();
    assert!(matches!(
        p.append(1, ExitKind::None, &e),
        Err(ProducerError::Stalled { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(p.stats().stalls, 1);
    drop(c);
    assert_eq!(
        p.append(1, ExitKind::None, &e),
        Err(ProducerError::ConsumerClosed)
    );
}

#[test]
fn publish_reports_a_closed_consumer() {
    let (mut p, c) = log_buffers(2, 4096).expect("buffers");
    drop(c);
    p.append(1, ExitKind::None, &Entry::KeepAlive)
        .expect("fits without the consumer");
    assert_eq!(p.publish(), Err(ProducerError::ConsumerClosed));
}

#[test]
fn a_parked_producer_is_woken_by_release() {
    let mut cfg = LogConfig::new(2, 4096);
    cfg.spin = Duration::from_micros(1);
    let (mut p, c) = log_buffers_with(&cfg).expect("buffers");
    let frame = [7u8; 2000];
    let t = std::thread::spawn(move || {
        let e = Entry::NetRx { frame: &frame };
        for _ in 0..5 {
            p.append(1, ExitKind::None, &e).expect("append");
        }
        let stats = p.stats();
        p.finish().expect("finish");
        stats
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut n = 0;
    while let Some(s) = c.next_segment(Duration::from_secs(5)) {
        n += s.last_seq() - s.first_seq() + 1;
        c.release(s).expect("release");
    }
    assert!(c.is_finished());
    assert_eq!(n, 5);
    let stats = t.join().expect("producer");
    assert_eq!(stats.stalls, 1);
    assert_eq!(stats.stall_parks, 1);
    assert!(stats.stall_ns > 0, "{stats:?}");
}

#[test]
fn release_must_be_in_order_and_to_the_owner() {
    let (mut p, c) = log_buffers(2, 4096).expect("buffers");
    let (_p2, c2) = log_buffers(2, 4096).expect("buffers");
    for i in 0..3 {
        p.append(i, ExitKind::None, &Entry::KeepAlive)
            .expect("append");
        p.publish().expect("publish");
    }
    let a = c.try_next_segment().expect("a");
    let b = c.try_next_segment().expect("b");
    assert_eq!((a.number(), b.number()), (0, 1));
    assert_eq!(c.outstanding(), 2);
    assert_eq!(c2.release(b), Err(ReleaseError::WrongConsumer));
    let b = c.try_next_segment().expect("c");
    assert_eq!(
        c.release(b),
        Err(ReleaseError::OutOfOrder {
            expected: 0,
            got: 2
        })
    );
    c.release(a).expect("in order");
}

#[test]
fn next_segment_times_out_and_sees_the_end() {
    let (mut p, c) = log_buffers(2, 4096).expect("buffers");
    let t = Instant::now();
    assert!(c.next_segment(Duration::from_millis(20)).is_none());
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert!(!c.is_finished());
    p.append(0, ExitKind::None, &Entry::KeepAlive)
        .expect("append");
    drop(p); // publishes the pending entry
    let s = c
        .next_segment(Duration::from_secs(1))
        .expect("published on drop");
    assert_eq!(s.len(), 32);
    c.release(s).expect("release");
    assert!(c.next_segment(Duration::from_secs(1)).is_none());
    assert!(c.is_finished());
}

#[test]
fn buffers_are_page_aligned_iovecs() {
    let (_p, c) = log_buffers(3, 5000).expect("buffers");
    assert_eq!(c.buffer_size(), 8192);
    let iov = c.iovecs();
    assert_eq!(iov.len(), 3);
    for v in &iov {
        assert_eq!(v.iov_base as usize % 4096, 0);
        assert_eq!(v.iov_len, 8192);
    }
    assert!(log_buffers(0, 4096).is_err());
}

#[test]
fn first_seq_can_start_mid_run() {
    let mut cfg = LogConfig::new(2, 4096);
    cfg.first_seq = 1000;
    cfg.first_exit_index = 500;
    let (mut p, c) = log_buffers_with(&cfg).expect("buffers");
    assert_eq!(p.seq(), 999);
    assert!(p.append(499, ExitKind::None, &Entry::KeepAlive).is_err());
    assert_eq!(p.append(500, ExitKind::None, &Entry::KeepAlive), Ok(1000));
    p.publish().expect("publish");
    let s = c.try_next_segment().expect("segment");
    assert_eq!((s.first_seq(), s.last_seq()), (1000, 1000));
}

#[test]
fn a_stalled_append_can_be_retried() {
    let mut cfg = LogConfig::new(2, 4096);
    cfg.stall_timeout = Duration::from_millis(10);
    let (mut p, c) = log_buffers_with(&cfg).expect("buffers");
    let frame = [9u8; 2000];
    let e = Entry::NetRx { frame: &frame };
    let mut expect = Vec::new();
    for seq in 1..=4 {
        p.append(1, ExitKind::None, &e).expect("fits");
        expect.extend(encode(seq, 1, ExitKind::None, &e));
    }
    for _ in 0..3 {
        assert!(matches!(
            p.append(1, ExitKind::None, &e),
            Err(ProducerError::Stalled { .. })
        ));
    }
    assert_eq!(p.seq(), 4);
    let mut got = Vec::new();
    // Drain what is there, which frees the first buffer.
    while let Some(s) = c.try_next_segment() {
        got.extend_from_slice(s.bytes());
        c.release(s).expect("release");
    }
    assert_eq!(p.append(1, ExitKind::None, &e), Ok(5));
    expect.extend(encode(5, 1, ExitKind::None, &e));
    p.finish().expect("finish");
    while let Some(s) = c.next_segment(Duration::from_secs(1)) {
        got.extend_from_slice(s.bytes());
        c.release(s).expect("release");
    }
    assert!(got == expect);
}
