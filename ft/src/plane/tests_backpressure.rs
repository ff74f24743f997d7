//! The backup's bounded replay buffer on a real socket: at the bound it
//! stops reading, TCP holds the sender, and once the replay takes chunks
//! everything arrives, in order, nothing lost (replay_buffer.rs).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use io_uring::IoUring;

use lockstep_vmm::dataplane::plane::{Dataplane, IoPlane};
use logchan::Entry;

use super::tests::{backup, entries, header};

/// Entries sent: far more than loopback's socket buffers hold (a few MiB).
const ENTRIES: u64 = 1_500_000;
const MAX_BYTES: u64 = 64 << 10;
/// Two reads of the receiver's buffer size (256 KiB) beyond the bound.
const OVERSHOOT: u64 = 2 * (256 << 10);

#[test]
fn a_full_replay_buffer_stops_the_receives_and_loses_nothing() {
    let mut b = backup();
    b.ft.replay_buffer.set_limits(MAX_BYTES, 1 << 20);
    let mut ring = IoUring::new(16).unwrap();
    b.plane.attach(&ring.submitter()).unwrap();
    let stream = entries(1, ENTRIES, Entry::KeepAlive);
    let total = stream.len() as u64;
    let written = Arc::new(AtomicU64::new(0));
    let mut primary = b._primary.try_clone().unwrap();
    let w = written.clone();
    let writer = std::thread::spawn(move || {
        primary.write_all(&header().encode()).unwrap();
        for piece in stream.chunks(64 << 10) {
            if primary.write_all(piece).is_err() {
                return;
            }
            w.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
    });
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    let (submitter, mut sq, mut cq) = ring.split();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut next_seq, mut max_held) = (1u64, 0u64);
    let mut consuming = false;
    let mut stalled_since: Option<(Instant, u64)> = None;
    while next_seq <= ENTRIES {
        assert!(Instant::now() < deadline, "no progress: at seq {next_seq}");
        b.plane.pump(&mut sq, Instant::now());
        sq.sync();
        submitter.submit().unwrap();
        cq.sync();
        for cqe in &mut cq {
            b.plane.on_cqe(&cqe, &mut sq, &mut dp);
        }
        max_held = max_held.max(b.ft.replay_buffer.bytes());
        if !consuming {
            // Nothing taken yet: the buffer fills, the receives stop, and
            // the writer is held by TCP, its progress frozen short of the end.
            let now = Instant::now();
            let w = written.load(Ordering::Relaxed);
            match stalled_since {
                Some((at, was)) if was == w && b.ft.replay_buffer.is_full() => {
                    if now - at > Duration::from_millis(300) {
                        assert!(w < total, "the writer finished: nothing held it");
                        assert!(b.ft.replay_buffer.pauses() >= 1);
                        assert!(b.plane.reads_paused_for_tests());
                        consuming = true;
                    }
                }
                _ => stalled_since = Some((now, w)),
            }
            continue;
        }
        // The replay: take what arrived, check it is all there, in order.
        while let Ok(c) = b.chunks.pop() {
            b.ft.replay_buffer.taken(c.bytes.len());
            if c.last_seq == 0 {
                continue;
            }
            let (first, _) = logchan::decode(&c.bytes).unwrap();
            assert_eq!(first.header.seq, next_seq, "in order, none lost");
            next_seq = c.last_seq + 1;
        }
    }
    writer.join().unwrap();
    assert!(
        max_held <= MAX_BYTES + OVERSHOOT,
        "held {max_held} bytes, bound {MAX_BYTES} + {OVERSHOOT}"
    );
}
