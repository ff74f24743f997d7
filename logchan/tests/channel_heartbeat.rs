//! Heartbeats over real UDP on real io_uring, and the failure detector:
//! liveness both ways, silence detected after the timeout once a side
//! stops, foreign epochs and garbage ignored, an unreachable peer counted
//! but never fatal.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::chan::{DEADLINE, ring, run};
use logchan::channel::io_uring::IoUring;
use logchan::channel::{
    FailureDetector, Heartbeat, HeartbeatConfig, HeartbeatEngine, HeartbeatStats, Role,
};

struct Side {
    engine: HeartbeatEngine,
    detector: FailureDetector,
    /// Longest gap between two signs of life, and whether the detector
    /// ever said "dead" while the peer was beating.
    max_gap: Duration,
    ever_dead: bool,
    beats: Vec<Heartbeat>,
}

fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind udp")
}

fn side(sock: UdpSocket, peer: SocketAddr, role: Role, epoch: u64, cfg: HeartbeatConfig) -> Side {
    let engine =
        HeartbeatEngine::new(sock, peer, role, epoch, cfg.period, 0x33).expect("heartbeat engine");
    Side {
        engine,
        detector: cfg.detector(Instant::now()),
        max_gap: Duration::ZERO,
        ever_dead: false,
        beats: Vec::new(),
    }
}

/// Runs one side until `done`; the detector is fed and checked each turn.
fn drive(
    ring: &mut IoUring,
    s: &mut Side,
    deadline: Instant,
    what: &str,
    done: impl FnMut(&mut Side) -> bool,
) -> Result<(), String> {
    run(
        ring,
        s,
        deadline,
        Duration::from_millis(2),
        what,
        |s, sq| {
            let now = Instant::now();
            s.engine.pump(sq, now);
            if s.detector.is_dead(now) {
                s.ever_dead = true;
            }
        },
        |s, cqe, sq| {
            if let Some(b) = s.engine.on_cqe(cqe, sq) {
                let now = Instant::now();
                if s.detector.ever_heard() {
                    s.max_gap = s.max_gap.max(s.detector.silent_for(now));
                }
                s.detector.heard_opt(s.engine.last_heard());
                s.beats.push(b);
            }
        },
        done,
    )
}

/// Shuts the engine down and waits until nothing is in flight.
fn finish(ring: &mut IoUring, mut s: Side) -> Side {
    s.engine.shutdown();
    drive(ring, &mut s, Instant::now() + DEADLINE, "quiescence", |s| {
        s.engine.ops_in_flight() == 0
    })
    .expect("heartbeat engine quiesces after shutdown");
    s
}

#[test]
fn heartbeats_flow_both_ways_and_nobody_is_declared_dead() {
    // 10 ms beats; a generous 1 s timeout, because this machine may be
    // loaded and this test is about liveness, not detection speed.
    let cfg = HeartbeatConfig::new(Duration::from_millis(10), Duration::from_secs(1));
    let (a, b) = (udp(), udp());
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let done = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let deadline = Instant::now() + DEADLINE;
    let spawn = |sock, peer, role, log_seq, me: usize| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut r = ring();
            let mut s = side(sock, peer, role, 7, cfg);
            s.engine.set_log_seq(log_seq);
            drive(&mut r, &mut s, deadline, "20 heartbeats each way", |s| {
                if s.beats.len() >= 20 {
                    done[me].store(true, Ordering::Release);
                }
                done.iter().all(|d| d.load(Ordering::Acquire))
            })?;
            Ok::<_, String>(finish(&mut r, s))
        })
    };
    let pa = spawn(a, ba, Role::Primary, 1234, 0);
    let pb = spawn(b, aa, Role::Backup, 1200, 1);
    let a = pa.join().expect("thread").expect("primary side");
    let b = pb.join().expect("thread").expect("backup side");
    for (s, peer_role, peer_seq) in [(&a, Role::Backup, 1200), (&b, Role::Primary, 1234)] {
        assert!(s.beats.len() >= 20);
        assert_eq!(s.engine.peer_role(), Some(peer_role));
        assert_eq!(s.engine.peer_log_seq(), Some(peer_seq));
        assert!(
            s.beats.windows(2).all(|w| w[0].counter < w[1].counter),
            "counters increase"
        );
        assert!(!s.ever_dead, "declared dead while beating");
        let st = s.engine.stats();
        assert!(st.sent >= 20 && st.send_errors == 0 && st.ignored_epoch == 0);
        eprintln!(
            "{peer_role:?} heard {} beats, longest gap {:?}, {st:?}",
            s.beats.len(),
            s.max_gap
        );
    }
}

#[test]
fn silence_is_detected_after_the_timeout_once_the_peer_stops() {
    let cfg = HeartbeatConfig::TEST;
    let (a, b) = (udp(), udp());
    let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    let heard_enough = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + DEADLINE;
    let primary = {
        let heard_enough = heard_enough.clone();
        std::thread::spawn(move || {
            let mut r = ring();
            let mut s = side(a, ba, Role::Primary, 1, cfg);
            drive(&mut r, &mut s, deadline, "the backup to hear us", |_| {
                heard_enough.load(Ordering::Acquire)
            })?;
            // "The primary's host dies": it stops beating.
            Ok::<_, String>(finish(&mut r, s).engine.stats())
        })
    };
    let mut r = ring();
    let mut s = side(b, aa, Role::Backup, 1, cfg);
    drive(&mut r, &mut s, deadline, "5 heartbeats", |s| {
        if s.beats.len() >= 5 {
            heard_enough.store(true, Ordering::Release);
            true
        } else {
            false
        }
    })
    .expect("heartbeats arrive");
    drive(&mut r, &mut s, deadline, "the primary's death", |s| {
        s.detector.is_dead(Instant::now())
    })
    .expect("silence detected");
    let detected = Instant::now();
    let last = s.engine.last_heard().expect("heard");
    let silent = detected - last;
    let pstats = primary.join().expect("thread").expect("primary");
    // Never before the timeout; and soon after it (slack for a loaded
    // machine: the loop wakes at least every beat period).
    assert!(silent > cfg.timeout, "declared dead after only {silent:?}");
    assert!(
        silent < cfg.timeout + Duration::from_millis(500),
        "took {silent:?} to notice"
    );
    assert!(s.engine.silent_for(Instant::now()) >= silent);
    assert!(pstats.sent >= 5);
    eprintln!("silence of {silent:?} detected (timeout {:?})", cfg.timeout);
    finish(&mut r, s);
}

#[test]
fn foreign_epochs_roles_and_garbage_are_ignored_and_counted() {
    let me = udp();
    let peer = udp();
    let stranger = udp();
    let mut r = ring();
    let mut s = side(
        me,
        peer.local_addr().expect("addr"),
        Role::Backup,
        5,
        HeartbeatConfig::TEST,
    );
    let to = s.engine.local_addr().expect("addr");
    let beat = |role, epoch, log_seq| Heartbeat {
        role,
        flags: 0,
        epoch,
        counter: 1,
        log_seq,
    };
    // From a stranger: the connected socket never even sees it.
    stranger
        .send_to(&beat(Role::Primary, 5, 1).encode(), to)
        .expect("send");
    // From the peer's address: another epoch, our own role, a bad crc, a
    // short datagram, then one good heartbeat (loopback keeps the order).
    let mut bad_crc = beat(Role::Primary, 5, 2).encode();
    bad_crc[37] ^= 0x10;
    let datagrams: Vec<Vec<u8>> = vec![
        beat(Role::Primary, 4, 3).encode().to_vec(),
        beat(Role::Backup, 5, 4).encode().to_vec(),
        bad_crc.to_vec(),
        b"LSHB short".to_vec(),
        beat(Role::Primary, 5, 99).encode().to_vec(),
    ];
    for d in &datagrams {
        peer.send_to(d, to).expect("send");
    }
    let deadline = Instant::now() + DEADLINE;
    drive(&mut r, &mut s, deadline, "the good heartbeat", |s| {
        !s.beats.is_empty()
    })
    .expect("good heartbeat arrives");
    let st: HeartbeatStats = s.engine.stats();
    assert_eq!(st.ignored_epoch, 1);
    assert_eq!(st.ignored_role, 1);
    assert_eq!(st.ignored_malformed, 2);
    assert_eq!(st.received, 1);
    assert_eq!(s.engine.peer_log_seq(), Some(99));
    assert_eq!(s.engine.peer_role(), Some(Role::Primary));
    finish(&mut r, s);
}

#[test]
fn an_unreachable_peer_is_counted_never_fatal() {
    // A port nobody listens on: every beat draws an ICMP port-unreachable,
    // which the connected socket reports as ECONNREFUSED.
    let gone = udp();
    let peer = gone.local_addr().expect("addr");
    drop(gone);
    let mut r = ring();
    let mut s = side(udp(), peer, Role::Primary, 1, HeartbeatConfig::TEST);
    let deadline = Instant::now() + DEADLINE;
    drive(&mut r, &mut s, deadline, "errors, then more beats", |s| {
        let st = s.engine.stats();
        st.send_errors + st.recv_errors >= 3 && st.sent >= 5
    })
    .expect("keeps beating through errors");
    let errors_then = s.engine.stats().send_errors + s.engine.stats().recv_errors;
    let sent_then = s.engine.stats().sent + s.engine.stats().send_errors;
    drive(&mut r, &mut s, deadline, "another beat", |s| {
        s.engine.stats().sent + s.engine.stats().send_errors > sent_then
    })
    .expect("beats go on");
    assert!(errors_then >= 3);
    assert!(s.engine.last_heard().is_none());
    assert!(
        s.detector
            .is_dead(Instant::now() + HeartbeatConfig::TEST.timeout)
    );
    eprintln!("{:?}", s.engine.stats());
    finish(&mut r, s);
}

#[test]
fn detector_counts_every_sign_of_life_and_declares_death_strictly_after_the_timeout() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut d = FailureDetector::new(ms(50), t0);
    assert!(!d.ever_heard());
    assert!(
        !d.is_dead(t0 + ms(50)),
        "exactly the timeout is not dead yet"
    );
    assert!(d.is_dead(t0 + ms(51)), "a peer never heard from dies too");
    d.heard(t0 + ms(40));
    assert!(d.ever_heard());
    assert_eq!(d.deadline(), t0 + ms(90));
    assert!(!d.is_dead(t0 + ms(90)));
    assert!(d.is_dead(t0 + ms(91)));
    // Older evidence (an ack processed late) changes nothing.
    d.heard(t0 + ms(10));
    assert_eq!(d.deadline(), t0 + ms(90));
    d.heard_opt(None);
    d.heard_opt(Some(t0 + ms(100)));
    assert_eq!(d.silent_for(t0 + ms(130)), ms(30));
    assert_eq!(d.silent_for(t0), Duration::ZERO, "no negative silence");
    assert_eq!(HeartbeatConfig::default(), HeartbeatConfig::LAN);
    assert_eq!(HeartbeatConfig::LAN.period, ms(100));
    assert_eq!(HeartbeatConfig::LAN.timeout, Duration::from_secs(1));
}
