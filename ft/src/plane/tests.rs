//! The planes on made-up channel events, with a clock the test chooses: no
//! KVM, no VM; the engines sit on loopback sockets and a real io_uring only
//! because they need somewhere to push their SQEs.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::IoUring;

use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::plane::{Dataplane, IoPlane};
use lockstep_vmm::dataplane::shared::VmShared;
use logchan::channel::{
    ChannelError, HeartbeatEngine, ReceiverEngine, ReceiverEvent, ReceiverOptions, Role,
    SenderEngine, SenderEvent, SenderOptions,
};
use logchan::{EndReason, Entry, ExitKind, GuestIdentity, StreamHeader};

use super::{BackupPlane, PrimaryPlane, TAG_HEARTBEAT, TAG_LOG};
use crate::channel_source::Chunk;
use crate::failure::{Liveness, STARTUP_GRACE};
use crate::shared::FtShared;

const LIVE: Liveness = Liveness {
    period: Duration::from_millis(10),
    timeout: Duration::from_millis(50),
    ack_timeout: Duration::from_millis(100),
};
const LEASE: Duration = Duration::from_millis(50);

pub(super) fn header() -> StreamHeader {
    let id = GuestIdentity {
        kernel_hash: 1,
        boot_hash: 2,
        mem_size: 4 << 20,
    };
    StreamHeader::new(id, 0, 3).with_lease_ms(50)
}

/// How often a running I/O thread looks, in made-up time.
const STEP: Duration = Duration::from_millis(5);

/// Ticks `plane` every [`STEP`] of made-up time after `from` up to `to`, as
/// a running I/O thread would (a jump would be a stall of this side).
fn run(
    plane: &mut dyn IoPlane,
    from: Instant,
    to: Instant,
    sq: &mut io_uring::squeue::SubmissionQueue<'_>,
    dp: &mut Dataplane<'_>,
) {
    let mut t = from;
    while t < to {
        t = (t + STEP).min(to);
        plane.tick(t, sq, dp);
    }
}

/// A connected loopback pair: (client, server).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn udp() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Encoded entries `first..` at exit 1, the last one `last`.
pub(super) fn entries(first: u64, count: u64, last: Entry<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in first..first + count {
        let entry = if seq + 1 == first + count {
            last
        } else {
            Entry::KeepAlive
        };
        let mut buf = vec![0u8; logchan::encoded_len(&entry)];
        logchan::encode_into(&mut buf, seq, 1, ExitKind::SyncPort, &entry).unwrap();
        out.extend(buf);
    }
    out
}

pub(super) struct Backup {
    pub(super) plane: BackupPlane,
    pub(super) chunks: rtrb::Consumer<Chunk>,
    pub(super) ft: Arc<FtShared>,
    pub(super) _primary: TcpStream,
}

pub(super) fn backup() -> Backup {
    let (primary, accepted) = tcp_pair();
    let receiver = ReceiverEngine::new(accepted, TAG_LOG, ReceiverOptions::default()).unwrap();
    let (socket, peer) = udp();
    let (tx, chunks) = rtrb::RingBuffer::new(16);
    let ft = Arc::new(FtShared::default());
    let shared = Arc::new(VmShared::default());
    let plane = BackupPlane::new(receiver, socket, None, peer, LIVE, ft.clone(), shared, tx);
    Backup {
        plane,
        chunks,
        ft,
        _primary: primary,
    }
}

#[test]
fn the_backup_hands_the_stream_to_the_replay_and_records_what_it_received() {
    let mut b = backup();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let t0 = Instant::now();
    let h = header();
    b.plane
        .on_receiver_event(ReceiverEvent::Header(h), &mut sq, t0);
    let bytes = entries(1, 3, Entry::KeepAlive);
    b.plane.on_receiver_event(
        ReceiverEvent::Entries {
            bytes: bytes.clone(),
            first_seq: 1,
            last_seq: 3,
            last_exit: 1,
        },
        &mut sq,
        t0,
    );
    b.plane.pump(&mut sq, t0);
    let first = b.chunks.pop().unwrap();
    assert_eq!(first.bytes, h.encode().to_vec(), "the header first");
    let chunk = b.chunks.pop().unwrap();
    assert_eq!(
        (chunk.bytes, chunk.last_seq),
        (bytes, 3),
        "then the entries"
    );
    assert_eq!(FtShared::load(&b.ft.received_seq), 3);
    assert!(b.plane.owns(TAG_LOG) && b.plane.owns(TAG_HEARTBEAT) && !b.plane.owns(1));
    assert_eq!(b.plane.gate_tag(3, t0), 0, "a backup holds nothing");
}

#[test]
fn a_primary_that_ends_the_run_is_not_a_failure() {
    let mut b = backup();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let t0 = Instant::now();
    let end = Entry::End {
        reason: EndReason::GuestExit,
        status: 0,
    };
    b.plane.on_receiver_event(
        ReceiverEvent::Entries {
            bytes: entries(1, 2, end),
            first_seq: 1,
            last_seq: 2,
            last_exit: 1,
        },
        &mut sq,
        t0,
    );
    b.plane.on_receiver_event(
        ReceiverEvent::Closed {
            reason: ChannelError::PeerClosed,
            clean: true,
        },
        &mut sq,
        t0,
    );
    assert!(FtShared::flag(&b.ft.stream_ended));
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    run(&mut b.plane, t0, t0 + 10 * LIVE.timeout, &mut sq, &mut dp);
    assert!(
        !FtShared::flag(&b.ft.peer_dead),
        "no failover after a clean end"
    );
}

/// The stream header at `t0`, then the channel closes at once, uncleanly.
fn header_then_unclean_close(
    b: &mut Backup,
    sq: &mut io_uring::squeue::SubmissionQueue<'_>,
    t0: Instant,
) {
    b.plane
        .on_receiver_event(ReceiverEvent::Header(header()), sq, t0);
    b.plane.on_receiver_event(
        ReceiverEvent::Closed {
            reason: ChannelError::PeerClosed,
            clean: false,
        },
        sq,
        t0,
    );
}

#[test]
fn a_silent_primary_is_declared_dead_after_the_timeout_and_not_before() {
    let mut b = backup();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let t0 = Instant::now();
    header_then_unclean_close(&mut b, &mut sq, t0);
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    run(&mut b.plane, t0, t0 + LIVE.timeout / 2, &mut sq, &mut dp);
    assert!(!FtShared::flag(&b.ft.peer_dead));
    run(
        &mut b.plane,
        t0 + LIVE.timeout / 2,
        t0 + 2 * LIVE.timeout,
        &mut sq,
        &mut dp,
    );
    assert!(FtShared::flag(&b.ft.peer_dead));
    assert!(
        FtShared::flag(&b.ft.channel_broken),
        "the channel had closed: a lost claim says so"
    );
    assert_eq!(b.ft.cut_at(), Some(0), "cut first: nothing was acked");
    assert!(
        b.ft.live_not_before().is_some(),
        "and it knows when it may go live"
    );
    assert!(
        b.ft.note_text()
            .is_some_and(|n| n.contains("logging channel closed")),
        "the first reason is kept for the operator"
    );
    b.plane.go_live(&mut dp);
    assert!(deliver, "live: received frames reach the guest");
}

#[test]
fn a_closed_channel_under_heartbeats_is_put_to_the_arbiter_not_given_up() {
    let mut b = backup();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let t0 = Instant::now();
    header_then_unclean_close(&mut b, &mut sq, t0);
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    // Heartbeats go on (a live primary's, or stale ones this side forgave
    // after its own stall): after the timeout the channel counts as broken.
    let mut t = t0;
    while t < t0 + 2 * LIVE.timeout {
        t += STEP;
        b.plane.heartbeat_for_tests(t);
        b.plane.tick(t, &mut sq, &mut dp);
        if t < t0 + LIVE.timeout {
            assert!(!FtShared::flag(&b.ft.peer_dead), "not within the timeout");
        }
    }
    assert!(FtShared::flag(&b.ft.channel_broken));
    assert!(
        FtShared::flag(&b.ft.peer_dead),
        "the arbiter decides, not the stale heartbeats"
    );
    assert_eq!(b.ft.cut_at(), Some(0), "cut before any claim");
}

struct Primary {
    plane: PrimaryPlane,
    ft: Arc<FtShared>,
    shared: Arc<VmShared>,
    _backup: TcpStream,
}

fn primary() -> Primary {
    let (stream, backup) = tcp_pair();
    let (_producer, consumer) = logchan::log_buffers(2, 1 << 16).unwrap();
    let sender = SenderEngine::new(
        stream,
        consumer,
        header(),
        TAG_LOG,
        SenderOptions::default(),
    )
    .unwrap();
    let (socket, _) = udp();
    let (_, peer) = udp();
    let heartbeat =
        HeartbeatEngine::new(socket, peer, Role::Primary, 3, LIVE.period, TAG_HEARTBEAT).unwrap();
    let ft = Arc::new(FtShared::default());
    let shared = Arc::new(VmShared::default());
    let plane = PrimaryPlane::new(
        sender,
        heartbeat,
        LIVE,
        LEASE,
        ft.clone(),
        shared.status.clone(),
    );
    Primary {
        plane,
        ft,
        shared,
        _backup: backup,
    }
}

fn ack(seq: u64, sent_at: Instant) -> SenderEvent {
    SenderEvent::Acked {
        acked_seq: seq,
        replayed_seq: seq.saturating_sub(1),
        replayed_exit: 9,
        sent_at: Some(sent_at),
    }
}

#[test]
fn acks_release_outputs_up_to_their_entry_and_show_in_status() {
    let mut p = primary();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    let t0 = Instant::now();
    assert_eq!(p.plane.gate_tag(5, t0), 5, "held under its own entry");
    assert_eq!(p.plane.gate_tag(0, t0), 0, "no entry: not held");
    p.plane.on_sender_event(ack(4, t0), &mut sq, &mut dp, t0);
    assert_eq!(p.plane.gate_tag(4, t0), 0, "already acked: leaves at once");
    p.plane.on_sender_event(ack(5, t0), &mut sq, &mut dp, t0);
    let status = &p.shared.status;
    assert_eq!(
        (
            StatusCounters::get(&status.acked_seq),
            StatusCounters::get(&status.replayed_seq)
        ),
        (5, 4)
    );
    assert_eq!(p.plane.gate_tag(6, t0), 6);
}

#[test]
fn a_closed_channel_or_silence_makes_the_backup_dead_and_alone_opens_the_gate() {
    let mut p = primary();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    let t0 = Instant::now();
    let t1 = t0 + STARTUP_GRACE / 2;
    run(&mut p.plane, t0, t1, &mut sq, &mut dp);
    assert!(
        !FtShared::flag(&p.ft.peer_dead),
        "a starting backup gets the grace"
    );
    p.plane.on_sender_event(ack(1, t1), &mut sq, &mut dp, t1);
    run(&mut p.plane, t1, t1 + LIVE.timeout, &mut sq, &mut dp);
    assert!(!FtShared::flag(&p.ft.peer_dead));
    run(
        &mut p.plane,
        t1 + LIVE.timeout,
        t1 + 2 * LIVE.timeout,
        &mut sq,
        &mut dp,
    );
    assert!(FtShared::flag(&p.ft.peer_dead), "silent past the timeout");

    let mut q = primary();
    q.plane.on_sender_event(
        SenderEvent::Closed {
            reason: ChannelError::PeerClosed,
        },
        &mut sq,
        &mut dp,
        t0,
    );
    assert!(FtShared::flag(&q.ft.peer_dead), "a closed channel at once");
    assert_eq!(
        q.plane.gate_tag(2, t0),
        2,
        "still held until the arbiter says"
    );
    q.ft.set(&q.ft.alone);
    q.plane.tick(t0, &mut sq, &mut dp);
    assert_eq!(q.plane.gate_tag(3, t0), 0, "alone: nothing waits");
    assert!(q.plane.flushed(), "and nothing more is owed to a backup");
    assert_eq!(
        q.shared.status.lease_remaining_ms(),
        None,
        "and no lease is needed"
    );
}

#[test]
fn an_ack_renews_the_lease_from_the_sending_and_a_loser_is_fenced() {
    let mut p = primary();
    let mut ring = IoUring::new(8).unwrap();
    let mut sq = ring.submission();
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    let sent = Instant::now();
    p.plane
        .on_sender_event(ack(1, sent), &mut sq, &mut dp, sent);
    let left = p.shared.status.lease_remaining_ms().expect("a lease");
    assert!(left > 0 && left <= 50, "lease left {left} ms");
    // An ack that waited in the socket while this side was stopped renews
    // nothing: its entry was sent a lease ago.
    let mut q = primary();
    let long_ago = Instant::now();
    let woke = long_ago + 10 * LEASE;
    q.plane
        .on_sender_event(ack(1, long_ago), &mut sq, &mut dp, woke);
    assert!(
        q.shared.status.lease_remaining_ms().is_some(),
        "a lease is held"
    );
    q.ft.set(&q.ft.fenced);
    q.plane.tick(woke, &mut sq, &mut dp);
    q.ft.set(&q.ft.alone);
    q.plane.tick(woke, &mut sq, &mut dp);
    assert_eq!(
        q.plane.gate_tag(9, woke),
        9,
        "a fenced side never opens its gates, not even alone"
    );
}

/// Runs the ring for the plane until `done` or two seconds pass.
fn drive_ring(
    ring: &mut IoUring,
    plane: &mut BackupPlane,
    mut done: impl FnMut(&mut BackupPlane) -> bool,
) {
    let (mut disk, mut tap, mut deliver) = (None, None, false);
    let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
    let (submitter, mut sq, mut cq) = ring.split();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done(plane) {
        assert!(Instant::now() < deadline, "the plane made no progress");
        plane.pump(&mut sq, Instant::now());
        sq.sync();
        submitter.submit().unwrap();
        cq.sync();
        for cqe in &mut cq {
            plane.on_cqe(&cqe, &mut sq, &mut dp);
        }
        std::thread::yield_now();
    }
    // What the last round pushed goes out too.
    sq.sync();
    submitter.submit().unwrap();
}

#[test]
fn the_backup_acks_what_it_handed_on_and_nothing_after_its_cut() {
    use std::io::{Read, Write};
    let mut b = backup();
    let mut ring = IoUring::new(16).unwrap();
    b.plane.attach(&ring.submitter()).unwrap();
    let mut primary = b._primary.try_clone().unwrap();
    primary.write_all(&header().encode()).unwrap();
    primary.write_all(&entries(1, 3, Entry::KeepAlive)).unwrap();
    let ft = b.ft.clone();
    drive_ring(&mut ring, &mut b.plane, |_| {
        FtShared::load(&ft.ack_sent) == 3
    });
    let mut raw = [0u8; logchan::channel::ACK_LEN];
    primary
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    primary.read_exact(&mut raw).unwrap();
    let ack = logchan::Ack::decode(&raw).unwrap();
    assert_eq!(ack.acked_seq, 3, "everything handed on is acked");
    // Silence: the backup suspects its primary and cuts at its last ack.
    let t0 = Instant::now();
    {
        let mut sq = ring.submission();
        let (mut disk, mut tap, mut deliver) = (None, None, false);
        let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
        run(&mut b.plane, t0, t0 + 3 * LIVE.timeout, &mut sq, &mut dp);
    }
    assert_eq!(b.ft.cut_at(), Some(3));
    let not_before = b.ft.live_not_before().expect("set with the cut");
    assert!(
        not_before > t0 && not_before <= Instant::now() + LEASE,
        "live no sooner than the last ack plus the lease"
    );
    // Entries that arrive after the cut are neither replayed nor acked.
    primary.write_all(&entries(4, 2, Entry::KeepAlive)).unwrap();
    let received = |p: &mut BackupPlane| p.received_for_tests() >= 5;
    drive_ring(&mut ring, &mut b.plane, received);
    let mut handed = Vec::new();
    while let Ok(c) = b.chunks.pop() {
        handed.push(c.last_seq);
    }
    assert_eq!(handed, [0, 3], "the header and entries 1..=3 only");
    primary
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(primary.read(&mut raw).is_err(), "no ack after the cut");
}
