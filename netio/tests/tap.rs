//! The tap and its engine against the real kernel: each test runs in a
//! thread that moved into a fresh network namespace (`unshare`), so the
//! taps it makes vanish with the thread, even when the test fails. Frames are
//! checked with an `AF_PACKET` socket bound to the tap.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use io_uring::{CompletionQueue, IoUring, SubmissionQueue, Submitter};
use netio::{Tap, TapEngine, TapError};

const TAG: u8 = 0x42;
const ETHERTYPE: u16 = 0x88B5; // IEEE local experimental: nothing else sends it

/// Runs `f` on a thread inside a new network namespace; skips (with the
/// reason) where that or tun is unavailable.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: /dev/net/tun does not exist");
        return;
    }
    let r = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("SKIP: cannot create a network namespace: {e}");
            return;
        }
        f()
    })
    .join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn test_frame(seq: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, seq]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8) ^ seq));
    f
}

/// An AF_PACKET socket bound to `ifname`, with a receive timeout.
fn packet_socket(ifname: &str) -> OwnedFd {
    let index = nix::net::if_::if_nametoindex(ifname).expect("ifindex");
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0);
    sock
}

/// Frames of our ethertype the socket sees, until `want` arrived or `wait`
/// passed (a generous bound: a loaded CI machine is slow).
fn sniff(sock: &OwnedFd, want: usize, wait: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < want && Instant::now() < end {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
            out.push(buf[..n as usize].to_vec());
        }
    }
    out
}

/// Sends `frame` out of the interface the socket is bound to (so the tap
/// reads it).
fn inject(sock: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is valid for reads of its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "inject: {}",
        std::io::Error::last_os_error()
    );
}

/// Submits and hands every CQE to the engine until `want` frames of our
/// ethertype arrived or `wait` passed; returns those frames.
fn poll(
    e: &mut TapEngine,
    submitter: &Submitter<'_>,
    sq: &mut SubmissionQueue<'_>,
    cq: &mut CompletionQueue<'_>,
    want: usize,
    wait: Duration,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let end = Instant::now() + wait;
    loop {
        sq.sync();
        submitter.submit().expect("submit");
        cq.sync();
        for cqe in &mut *cq {
            assert_eq!(netio::user_data_tag(cqe.user_data()), TAG);
            e.on_cqe(cqe.user_data(), cqe.result(), sq, &mut |f| {
                if f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes() {
                    got.push(f);
                }
            });
        }
        if got.len() >= want || Instant::now() >= end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Submits what is queued and handles the CQEs that arrive right away.
fn flush(
    e: &mut TapEngine,
    submitter: &Submitter<'_>,
    sq: &mut SubmissionQueue<'_>,
    cq: &mut CompletionQueue<'_>,
) {
    poll(e, submitter, sq, cq, usize::MAX, Duration::from_millis(10));
}

const LONG: Duration = Duration::from_secs(3);
const SHORT: Duration = Duration::from_millis(50);

#[test]
fn frames_go_out_and_come_in_through_the_engine() {
    in_netns(|| {
        let tap = Tap::open("lstap0").expect("open tap");
        assert!(tap.created());
        assert!(tap.link_up().expect("flags"), "open brings the link up");
        assert_eq!(tap.mtu().expect("mtu"), 1500);
        let sock = packet_socket("lstap0");
        let mut ring = IoUring::new(64).expect("io_uring");
        let (submitter, mut sq, mut cq) = ring.split();
        let mut e = TapEngine::new(tap, TAG, 8).expect("engine");
        e.pump(&mut sq);
        assert_eq!(sq.len(), 8, "eight reads armed");

        // Idle reads stay in flight: no storm of EAGAIN completions (only
        // the kernel's own IPv6 chatter on the new link may arrive).
        sq.sync();
        submitter.submit().expect("submit");
        std::thread::sleep(Duration::from_millis(30));
        cq.sync();
        let idle: Vec<(u64, i32)> = (&mut cq).map(|c| (c.user_data(), c.result())).collect();
        assert!(
            idle.iter().all(|(_, r)| *r > 0),
            "idle reads failed: {idle:?}"
        );
        for (ud, r) in idle {
            e.on_cqe(ud, r, &mut sq, &mut |_| {});
        }

        // TX: engine → tap → kernel, seen by the packet socket.
        let out = test_frame(1, 100);
        e.send(out.clone(), 0, &mut sq);
        flush(&mut e, &submitter, &mut sq, &mut cq);
        assert_eq!(sniff(&sock, 1, LONG), vec![out.clone()]);
        assert_eq!(e.stats().tx_frames, 1);

        // RX: packet socket → kernel → tap → engine.
        let inbound = test_frame(2, 1514);
        inject(&sock, &inbound);
        let got = poll(&mut e, &submitter, &mut sq, &mut cq, 1, LONG);
        assert_eq!(got, vec![inbound]);
        assert!(e.stats().rx_frames >= 1);
    });
}

#[test]
fn the_gate_holds_frames_and_keeps_their_order() {
    in_netns(|| {
        let tap = Tap::open("lstap1").expect("open tap");
        let sock = packet_socket("lstap1");
        let mut ring = IoUring::new(64).expect("io_uring");
        let (submitter, mut sq, mut cq) = ring.split();
        let mut e = TapEngine::new(tap, TAG, 2).expect("engine");
        let (a, b, c) = (test_frame(10, 60), test_frame(11, 60), test_frame(12, 60));
        e.send(a.clone(), 5, &mut sq);
        e.send(b.clone(), 3, &mut sq);
        e.send(c.clone(), 6, &mut sq);
        assert_eq!(e.gated_len(), 3);
        flush(&mut e, &submitter, &mut sq, &mut cq);
        assert!(
            sniff(&sock, 1, SHORT).is_empty(),
            "nothing leaves before the ack"
        );
        e.release(4, &mut sq);
        flush(&mut e, &submitter, &mut sq, &mut cq);
        assert!(
            sniff(&sock, 1, SHORT).is_empty(),
            "frame 5 holds back frame 3"
        );
        e.release(6, &mut sq);
        assert_eq!(e.gated_len(), 0);
        flush(&mut e, &submitter, &mut sq, &mut cq);
        assert_eq!(sniff(&sock, 3, LONG), vec![a, b, c]);
        assert_eq!(e.acked(), 6);
    });
}

#[test]
fn drop_outputs_discards_frames_but_still_receives() {
    in_netns(|| {
        let tap = Tap::open("lstap2").expect("open tap");
        let sock = packet_socket("lstap2");
        let mut ring = IoUring::new(64).expect("io_uring");
        let (submitter, mut sq, mut cq) = ring.split();
        let mut e = TapEngine::new(tap, TAG, 2).expect("engine");
        e.send(test_frame(20, 60), 9, &mut sq);
        e.set_drop_outputs(true);
        e.send(test_frame(21, 60), 0, &mut sq);
        e.release(100, &mut sq);
        flush(&mut e, &submitter, &mut sq, &mut cq);
        assert!(sniff(&sock, 1, SHORT).is_empty());
        assert_eq!(e.stats().tx_dropped, 2, "the held frame and the new one");
        let inbound = test_frame(22, 200);
        inject(&sock, &inbound);
        let got = poll(&mut e, &submitter, &mut sq, &mut cq, 1, LONG);
        assert_eq!(got, vec![inbound]);
    });
}

#[test]
fn persistent_taps_and_typed_errors() {
    in_netns(|| {
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        // A persistent tap made by `ip tuntap add`, down until we open it.
        if ip(&["tuntap", "add", "name", "ptap0", "mode", "tap"]) {
            let tap = Tap::open("ptap0").expect("attach to persistent tap");
            assert!(!tap.created());
            assert!(tap.link_up().expect("flags"));
            assert!(matches!(Tap::open("ptap0"), Err(TapError::Busy(_))));
            drop(tap);
            Tap::open("ptap0").expect("reattach after close");
        } else {
            eprintln!("SKIP (part): `ip tuntap add` is not available");
        }
        if ip(&["tuntap", "add", "name", "ptun0", "mode", "tun"]) {
            let err = Tap::open("ptun0").expect_err("a tun is not a tap");
            assert!(
                matches!(
                    err,
                    TapError::NotATap {
                        kind: "a tun (layer 3) interface",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = Tap::open("lo").expect_err("lo is not a tap");
        assert!(
            matches!(
                err,
                TapError::NotATap {
                    kind: "not a tun/tap interface",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("lo"));
        assert!(matches!(
            Tap::open("this-name-is-too-long"),
            Err(TapError::NameTooLong(_))
        ));
        assert!(matches!(
            Tap::open("bad/name"),
            Err(TapError::InvalidName(_))
        ));
        let t = Tap::open("lstap3").expect("open");
        assert!(matches!(Tap::open("lstap3"), Err(TapError::Busy(_))));
        drop(t);
    });
}

/// Without privileges: a thread that dropped to `nobody` (raw setresuid
/// changes only the calling thread) cannot open /dev/net/tun.
#[test]
fn no_permission_is_explained() {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: /dev/net/tun does not exist");
        return;
    }
    let r = std::thread::spawn(|| {
        // SAFETY: raw syscall with integer arguments; affects only this thread.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        if rc != 0 {
            eprintln!(
                "SKIP: cannot drop privileges: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        match Tap::open("lstap9") {
            Err(e @ TapError::NoPermission { .. }) => {
                assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
            }
            other => panic!("expected NoPermission, got {other:?}"),
        }
    })
    .join();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}
