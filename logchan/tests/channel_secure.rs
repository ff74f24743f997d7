//! The authenticated channel's defences, over real loopback sockets: the
//! listener outlasts junk, silence, a wrong key and a replayed recording
//! of an earlier session and then lets the real primary attach; a second
//! authenticated primary is refused with a reason; the bytes on the wire
//! show no plaintext; signed heartbeats refuse forged and replayed
//! datagrams.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chan::{DEADLINE, attach_request, opened_pair, respond, ring, run, tcp_pair};
use logchan::channel::{Heartbeat, HeartbeatEngine, HeartbeatStats, Role};
use logchan::secure::{
    BeatKey, BeatKeys, ChannelListener, HandshakeError, ListenerEvent, ListenerOptions, PairKey,
    RecordLayer, RecordReader, Rejection, Responder, Security, Step, Verdict, initiate,
};

/// What the listener reported, by kind.
#[derive(Default, Debug)]
struct Seen {
    rejected: Vec<String>,
    refused: Vec<String>,
    attached: Vec<SocketAddr>,
}

fn listen(security: Security, opts: ListenerOptions) -> (ChannelListener, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    let l = ChannelListener::spawn(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        security,
        opts,
        Box::new(|_, a| {
            if a.boot == b"stale" {
                Err("its epoch was never begun".into())
            } else {
                Ok(())
            }
        }),
        Box::new(move |ev| {
            let mut s = log.lock().expect("seen");
            match ev {
                ListenerEvent::Rejected { reason, .. } => s.rejected.push(reason.to_string()),
                ListenerEvent::Refused { reason, .. } => s.refused.push(reason.to_string()),
                ListenerEvent::Attached { peer } => s.attached.push(peer),
            }
        }),
    )
    .expect("listener");
    (l, seen)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything a primary sent in one whole opening, recorded on the way.
fn record_an_opening(key: &PairKey) -> Vec<u8> {
    let (mut c, mut s) = tcp_pair();
    let sec = Security::Key(key.clone());
    let primary = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        initiate(&mut c, &sec, &attach_request(), deadline).expect("initiate")
    });
    // Our own responder in the middle: it records what the primary sent.
    let mut recording = Vec::new();
    let mut r = Responder::new(Security::Key(key.clone()));
    let mut buf = [0u8; 4096];
    loop {
        match r.advance().expect("a good opening") {
            Step::NeedMore => {
                let n = s.read(&mut buf).expect("read");
                recording.extend_from_slice(&buf[..n]);
                r.input(&buf[..n]).expect("input");
            }
            Step::Send(b) => s.write_all(&b).expect("send"),
            Step::Attach(_) => {
                let (b, _) = r.answer(&Verdict::Accepted).expect("answer");
                s.write_all(&b).expect("send");
                break;
            }
        }
    }
    primary.join().expect("primary");
    recording
}

#[test]
fn the_listener_survives_junk_silence_a_wrong_key_and_a_replay_then_the_primary_attaches() {
    let key = PairKey::generate().expect("key");
    let opts = ListenerOptions {
        handshake_deadline: Duration::from_millis(300),
        ..ListenerOptions::default()
    };
    let (listener, seen) = listen(Security::Key(key.clone()), opts);
    let addr = listener.local_addr();
    let rejected = || seen.lock().expect("seen").rejected.len();

    // 64 random bytes.
    let mut junk = TcpStream::connect(addr).expect("connect");
    junk.write_all(&[0x5a; 64]).expect("junk");
    wait_until("the junk to be dropped", || rejected() >= 1);
    // An idle connection: dropped at its deadline.
    let _idle = TcpStream::connect(addr).expect("connect");
    wait_until("the idle connection to be dropped", || rejected() >= 2);
    // A primary with another key: refused at its first message.
    let mut wrong = TcpStream::connect(addr).expect("connect");
    let other = Security::Key(PairKey::generate().expect("key"));
    let e = initiate(
        &mut wrong,
        &other,
        &attach_request(),
        Instant::now() + DEADLINE,
    )
    .expect_err("a wrong key must not attach");
    assert!(e.is_no_backup(), "{e}");
    wait_until("the wrong key to be dropped", || rejected() >= 3);
    // A recording of an earlier session under the right key, replayed.
    let recording = record_an_opening(&key);
    let mut replay = TcpStream::connect(addr).expect("connect");
    replay.write_all(&recording).expect("replay");
    wait_until("the replay to be dropped", || rejected() >= 4);
    // An insecure primary.
    let mut plain = TcpStream::connect(addr).expect("connect");
    let e = initiate(
        &mut plain,
        &Security::Insecure,
        &attach_request(),
        Instant::now() + DEADLINE,
    )
    .expect_err("an unauthenticated primary must not attach");
    assert!(e.is_no_backup(), "{e}");
    wait_until("the insecure primary to be dropped", || rejected() >= 5);
    {
        let s = seen.lock().expect("seen");
        assert!(s.attached.is_empty() && s.refused.is_empty(), "{s:?}");
        eprintln!("rejected: {:#?}", s.rejected);
        assert!(s.rejected[0].contains("not a lockstep primary"));
        assert!(s.rejected[1].contains("deadline"));
        assert!(s.rejected[2].contains("pair key"));
        assert!(s.rejected[3].contains("replayed"));
        assert!(s.rejected[4].contains("insecure"));
    }
    assert!(
        listener.next(Duration::ZERO).is_none(),
        "nobody attached yet"
    );
    // A primary with the key that the judge refuses: told why, and the
    // listener goes on.
    let mut stale = TcpStream::connect(addr).expect("connect");
    let refused = initiate(
        &mut stale,
        &Security::Key(key.clone()),
        &logchan::secure::AttachRequest {
            boot: b"stale".to_vec(),
            ..attach_request()
        },
        Instant::now() + DEADLINE,
    );
    assert!(
        matches!(&refused, Err(HandshakeError::Refused { reason }) if reason.contains("never begun")),
        "{refused:?}"
    );

    // The real primary attaches, and its channel works.
    let mut real = TcpStream::connect(addr).expect("connect");
    let sec = Security::Key(key.clone());
    let primary = std::thread::spawn(move || {
        let s = initiate(
            &mut real,
            &sec,
            &attach_request(),
            Instant::now() + DEADLINE,
        );
        (real, s)
    });
    let attached = listener
        .next(Duration::from_secs(20))
        .expect("the real primary attaches");
    let (mut real, session) = primary.join().expect("primary");
    let mut session = session.expect("accepted");
    assert_eq!(attached.attach, attach_request());
    let mut backup = attached.session;
    let (mut tx, mut rx) = (
        session.records.take().expect("sealed"),
        backup.records.take().expect("sealed"),
    );
    let mut sealed = vec![0u8; RecordLayer::sealed_len(5)];
    let n = tx.seal(b"hello", &mut sealed).expect("seal");
    real.write_all(&sealed[..n]).expect("send");
    let mut got = vec![0u8; n];
    let mut stream = attached.stream;
    stream.read_exact(&mut got).expect("receive");
    let mut plain = vec![0u8; RecordReader::max_plain(n)];
    let m = RecordReader::default()
        .feed(&mut rx, &got, &mut plain)
        .expect("open");
    assert_eq!(&plain[..m], b"hello");

    // A second authenticated primary is refused, with the reason.
    let mut second = TcpStream::connect(addr).expect("connect");
    match initiate(
        &mut second,
        &Security::Key(key),
        &attach_request(),
        Instant::now() + DEADLINE,
    ) {
        Err(HandshakeError::Refused { reason }) => {
            assert!(reason.contains("already follows a primary"), "{reason}")
        }
        other => panic!("a second primary must be refused, got {other:?}"),
    }
    let s = seen.lock().expect("seen");
    assert_eq!(s.attached.len(), 1);
    assert_eq!(s.refused.len(), 2);
}

#[test]
fn a_flood_from_one_host_cannot_crowd_out_the_primary() {
    let key = PairKey::generate().expect("key");
    let (listener, seen) = listen(Security::Key(key.clone()), ListenerOptions::default());
    let addr = listener.local_addr();
    // Idle connections from 127.0.0.1, more than a host may hold.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    wait_until("the surplus to be dropped", || {
        seen.lock().expect("seen").rejected.len() >= 36
    });
    // The primary comes from another loopback address.
    let local: SocketAddr = "127.0.0.2:0".parse().expect("addr");
    let socket = socket2_connect(local, addr);
    let mut real = socket;
    initiate(
        &mut real,
        &Security::Key(key),
        &attach_request(),
        Instant::now() + DEADLINE,
    )
    .expect("the primary attaches beside a flood");
    assert!(listener.next(Duration::from_secs(5)).is_some());
    drop(idle);
}

/// A TCP connection from a chosen local address (std cannot bind before
/// connect; nix can).
fn socket2_connect(local: SocketAddr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::FromRawFd;
    use std::os::fd::IntoRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    let (SocketAddr::V4(l), SocketAddr::V4(t)) = (local, to) else {
        panic!("IPv4 only");
    };
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(l)).expect("bind");
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(t)).expect("connect");
    // SAFETY: `fd` is a connected stream socket we own; the TcpStream
    // takes it over.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

#[test]
fn a_wrong_key_and_an_impostor_backup_fail_the_primary_as_no_backup() {
    let key = PairKey::generate().expect("key");
    // A backup with another key drops the primary at its first message.
    let (mut c, mut s) = tcp_pair();
    let other = PairKey::generate().expect("key");
    let backup =
        std::thread::spawn(move || respond(&mut s, Security::Key(other), Verdict::Accepted));
    let e = initiate(
        &mut c,
        &Security::Key(key.clone()),
        &attach_request(),
        Instant::now() + DEADLINE,
    )
    .expect_err("no session with a backup of another key");
    assert!(e.is_no_backup(), "{e}");
    assert!(matches!(
        backup.join().expect("backup"),
        Err(Rejection::WrongKey)
    ));
    // An impostor that answers anything: the primary refuses its answer.
    let (mut c, mut s) = tcp_pair();
    let impostor = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(&[0x30, 0x00]);
        let _ = s.write_all(&[7u8; 48]);
        let _ = s.read(&mut buf);
    });
    let e = initiate(
        &mut c,
        &Security::Key(key),
        &attach_request(),
        Instant::now() + Duration::from_secs(5),
    )
    .expect_err("an impostor is no backup");
    assert!(matches!(e, HandshakeError::Unauthenticated), "{e}");
    drop(c);
    impostor.join().expect("impostor");
}

#[test]
fn the_wire_carries_no_plaintext_and_a_flipped_bit_ends_the_session() {
    let key = PairKey::generate().expect("key");
    let ((_c, mut p), (_s, mut b)) = opened_pair(&key);
    let (mut tx, mut rx) = (
        p.records.take().expect("sealed"),
        b.records.take().expect("sealed"),
    );
    let marker = b"client-secret-SET-value-0123456789".repeat(3000);
    let mut wire = vec![0u8; RecordLayer::sealed_len(marker.len())];
    let n = tx.seal(&marker, &mut wire).expect("seal");
    wire.truncate(n);
    assert!(
        !wire.windows(20).any(|w| w == &marker[..20]),
        "plaintext on the wire"
    );
    let mut plain = vec![0u8; RecordReader::max_plain(n)];
    let mut reader = RecordReader::default();
    // In arbitrary pieces, as TCP delivers it.
    let mut m = 0;
    for piece in wire.chunks(7777) {
        m += reader.feed(&mut rx, piece, &mut plain[m..]).expect("open");
    }
    assert_eq!(&plain[..m], &marker[..]);
    // The next record, with one bit flipped, is refused.
    let mut more = vec![0u8; RecordLayer::sealed_len(10)];
    let n = tx.seal(b"0123456789", &mut more).expect("seal");
    more[n / 2] ^= 1;
    assert!(reader.feed(&mut rx, &more[..n], &mut plain).is_err());
}

fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind udp")
}

#[test]
fn signed_heartbeats_refuse_forged_and_replayed_datagrams() {
    let (me, peer) = (udp(), udp());
    let primary_key = BeatKey::generate().expect("key");
    let keys = BeatKeys {
        ours: BeatKey::generate().expect("key"),
        peers: primary_key.clone(),
    };
    let mut engine = HeartbeatEngine::new(
        me,
        peer.local_addr().expect("addr"),
        Role::Backup,
        5,
        Duration::from_millis(10),
        0x33,
    )
    .expect("engine")
    .with_keys(Some(keys));
    let to = engine.local_addr().expect("addr");
    let beat = |counter, log_seq| Heartbeat {
        role: Role::Primary,
        flags: 0,
        epoch: 5,
        counter,
        log_seq,
    };
    let forger = BeatKey::generate().expect("key");
    let datagrams: Vec<Vec<u8>> = vec![
        // An unsigned (version 1) beat with the right epoch.
        beat(1, 1).encode().to_vec(),
        // Signed with another key.
        beat(2, 2).encode_signed(&forger).to_vec(),
        // Good.
        beat(3, 3).encode_signed(&primary_key).to_vec(),
        // The same again, and an older one: replays.
        beat(3, 3).encode_signed(&primary_key).to_vec(),
        beat(2, 2).encode_signed(&primary_key).to_vec(),
        // Good again.
        beat(4, 44).encode_signed(&primary_key).to_vec(),
    ];
    for d in &datagrams {
        peer.send_to(d, to).expect("send");
    }
    let mut r = ring();
    let mut got = Vec::new();
    run(
        &mut r,
        &mut engine,
        Instant::now() + DEADLINE,
        Duration::from_millis(2),
        "the second good beat",
        |e, sq| e.pump(sq, Instant::now()),
        |e, cqe, sq| got.extend(e.on_cqe(cqe, sq)),
        |e| e.peer_log_seq() == Some(44),
    )
    .expect("good beats arrive");
    let st: HeartbeatStats = engine.stats();
    assert_eq!(st.received, 2, "{st:?}");
    assert_eq!(st.ignored_forged, 2, "{st:?}");
    assert_eq!(st.ignored_replayed, 2, "{st:?}");
    // Our own beats are signed: the peer's key opens them.
    let mut buf = [0u8; 256];
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = peer.recv(&mut buf).expect("our beat");
    let ours = engine_key_check(&buf[..n]);
    assert_eq!(ours, 68);
    engine.shutdown();
    run(
        &mut r,
        &mut engine,
        Instant::now() + DEADLINE,
        Duration::from_millis(2),
        "quiescence",
        |e, sq| e.pump(sq, Instant::now()),
        |e, cqe, sq| {
            e.on_cqe(cqe, sq);
        },
        |e| e.ops_in_flight() == 0,
    )
    .expect("engine quiesces");
}

fn engine_key_check(d: &[u8]) -> usize {
    assert!(
        Heartbeat::decode(d).is_err(),
        "a signed beat is not version 1"
    );
    d.len()
}
