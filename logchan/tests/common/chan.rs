//! Test harness for the logging channel: a tiny io_uring loop (what the
//! VMM's I/O thread does, minus everything else), a deterministic workload
//! of log entries, a producer thread, and a TCP proxy that injects faults.
//! Everything runs over real loopback sockets and real io_uring.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logchan::channel::io_uring::{IoUring, cqueue, squeue, types};
use logchan::channel::{
    ReceiverEngine, ReceiverEvent, ReceiverOptions, Registration, SendMode, SenderEngine,
    SenderEvent, SenderOptions,
};
use logchan::secure::{
    AttachRequest, PairKey, RecordLayer, Rejection, Responder, Security, Session, Step, Verdict,
    initiate,
};
use logchan::{Entry, ExitKind, LogConfig, LogProducer, StreamHeader, log_buffers_with};

use super::{Rng, encode, exit_kind_for, header, random_entry};

/// Every test loop gives up after this long (the machine may be loaded).
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How long a loop sleeps in `io_uring_enter` with nothing completing.
pub const WAIT: Duration = Duration::from_millis(1);

pub fn ring() -> IoUring {
    IoUring::new(256).expect("io_uring (is it disabled? /proc/sys/kernel/io_uring_disabled)")
}

/// The I/O-thread loop: `pump` every turn, submit, wait up to `wait` for a
/// completion, hand each CQE to `on`; until `done` (Ok) or `deadline`
/// (Err with `what`).
#[allow(clippy::too_many_arguments)]
pub fn run<S>(
    ring: &mut IoUring,
    st: &mut S,
    deadline: Instant,
    wait: Duration,
    what: &str,
    mut pump: impl FnMut(&mut S, &mut squeue::SubmissionQueue<'_>),
    mut on: impl FnMut(&mut S, &cqueue::Entry, &mut squeue::SubmissionQueue<'_>),
    mut done: impl FnMut(&mut S) -> bool,
) -> Result<(), String> {
    let (submitter, mut sq, mut cq) = ring.split();
    loop {
        pump(st, &mut sq);
        sq.sync();
        if done(st) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match submitter.submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(format!("io_uring_enter: {e}")),
        }
        cq.sync();
        for cqe in &mut cq {
            on(st, &cqe, &mut sq);
        }
        sq.sync();
    }
}

/// A connected loopback pair (client, server), both with TCP_NODELAY.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

/// A deterministic stream of entries: regenerate it anywhere from its
/// parameters (the producer thread and the checker both do).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub seed: u64,
    pub entries: usize,
    pub max_blob: usize,
}

impl Workload {
    pub fn new(seed: u64, entries: usize, max_blob: usize) -> Self {
        Workload {
            seed,
            entries,
            max_blob,
        }
    }

    /// Calls `f(exit_index, exit_kind, entry, publish_after)` for every
    /// entry, in order.
    pub fn for_each(&self, mut f: impl FnMut(u64, ExitKind, &Entry<'_>, bool)) {
        let mut rng = Rng(self.seed | 1);
        let pool = rng.bytes(64 << 10);
        let mut exit = 0u64;
        for i in 0..self.entries {
            let e = random_entry(&mut rng, &pool, self.max_blob);
            exit += rng.below(3) as u64;
            let publish = rng.below(4) == 0 || i + 1 == self.entries;
            f(exit, exit_kind_for(i), &e, publish);
        }
    }

    /// The whole stream (header + entries) and the offset of every entry.
    pub fn expected(&self, h: &StreamHeader) -> (Vec<u8>, Vec<usize>) {
        let mut out = h.encode().to_vec();
        let mut offs = Vec::new();
        let mut seq = h.first_seq;
        self.for_each(|exit, kind, e, _| {
            offs.push(out.len());
            out.extend(encode(seq, exit, kind, e));
            seq += 1;
        });
        (out, offs)
    }
}

/// Appends the workload from a thread, publishing as it says; finishes the
/// stream at the end. Returns the last seq, or the producer's error (the
/// consumer went away, a stall) as text.
pub fn spawn_producer(mut p: LogProducer, wl: Workload) -> JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut err = None;
        wl.for_each(|exit, kind, e, publish| {
            if err.is_some() {
                return;
            }
            let r = p
                .append(exit, kind, e)
                .and_then(|_| if publish { p.publish() } else { Ok(()) });
            if let Err(e) = r {
                err = Some(e.to_string());
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        p.finish().map_err(|e| e.to_string())
    })
}

/// Sender side of a test: engine, events seen.
pub struct SenderSide {
    pub engine: SenderEngine,
    pub events: Vec<SenderEvent>,
    /// The mode `attach` chose.
    pub attached: SendMode,
}

impl SenderSide {
    /// Builds a sender on `stream` for a fresh log of `cfg`, attaches it
    /// to `ring`, and returns it with the producer.
    pub fn new(
        ring: &IoUring,
        stream: TcpStream,
        cfg: &LogConfig,
        opts: SenderOptions,
        how: Registration,
    ) -> (SenderSide, LogProducer) {
        Self::sealed(ring, stream, cfg, opts, how, None)
    }

    /// [`SenderSide::new`], sealing with `records` if given.
    pub fn sealed(
        ring: &IoUring,
        stream: TcpStream,
        cfg: &LogConfig,
        opts: SenderOptions,
        how: Registration,
        records: Option<RecordLayer>,
    ) -> (SenderSide, LogProducer) {
        let (producer, consumer) = log_buffers_with(cfg).expect("log buffers");
        let mut engine = SenderEngine::new(stream, consumer, header(), 0x11, opts)
            .expect("sender engine")
            .secured(records);
        let attached = engine
            .attach(&ring.submitter(), how)
            .expect("attach sender");
        (
            SenderSide {
                engine,
                events: Vec::new(),
                attached,
            },
            producer,
        )
    }

    pub fn closed(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SenderEvent::Closed { .. }))
    }

    /// Closed, or everything sent, released and acked: where a whole-stream
    /// run stops.
    pub fn closed_or_all_acked(&self) -> bool {
        self.closed()
            || (self.engine.is_drained()
                && self.engine.acked().acked_seq == self.engine.stats().entries_sent)
    }
}

/// Runs the sender until `done`.
pub fn drive_sender(
    ring: &mut IoUring,
    side: &mut SenderSide,
    deadline: Instant,
    what: &str,
    done: impl FnMut(&mut SenderSide) -> bool,
) -> Result<(), String> {
    run(
        ring,
        side,
        deadline,
        WAIT,
        what,
        |s, sq| s.engine.pump(sq),
        |s, cqe, sq| {
            let events = &mut s.events;
            s.engine.on_cqe(cqe, sq, &mut |e| events.push(e));
        },
        done,
    )
}

/// Shuts the sender down, waits for its operations, unregisters.
pub fn finish_sender(ring: &mut IoUring, mut side: SenderSide) -> SenderSide {
    side.engine.shutdown();
    let deadline = Instant::now() + DEADLINE;
    drive_sender(ring, &mut side, deadline, "sender quiescence", |s| {
        s.engine.ops_in_flight() == 0
    })
    .expect("sender operations complete after shutdown");
    side.engine
        .detach(&ring.submitter())
        .expect("detach sender");
    side
}

/// Receiver side of a test: engine, events, and every delivered byte.
pub struct ReceiverSide {
    pub engine: ReceiverEngine,
    pub events: Vec<ReceiverEvent>,
    pub delivered: Vec<u8>,
    /// Ack after every delivery (as the VMM does).
    pub auto_ack: bool,
}

impl ReceiverSide {
    pub fn new(
        ring: &IoUring,
        stream: TcpStream,
        opts: ReceiverOptions,
        how: Registration,
    ) -> ReceiverSide {
        Self::sealed(ring, stream, opts, how, None)
    }

    /// [`ReceiverSide::new`], opening with `records` if given.
    pub fn sealed(
        ring: &IoUring,
        stream: TcpStream,
        opts: ReceiverOptions,
        how: Registration,
        records: Option<RecordLayer>,
    ) -> ReceiverSide {
        let mut engine = ReceiverEngine::new(stream, 0x22, opts)
            .expect("receiver engine")
            .secured(records);
        engine
            .attach(&ring.submitter(), how)
            .expect("attach receiver");
        ReceiverSide {
            engine,
            events: Vec::new(),
            delivered: Vec::new(),
            auto_ack: true,
        }
    }

    /// The connection ended (Closed or Corrupt).
    pub fn ended(&self) -> bool {
        self.events.iter().any(|e| {
            matches!(
                e,
                ReceiverEvent::Closed { .. } | ReceiverEvent::Corrupt { .. }
            )
        })
    }
}

pub fn drive_receiver(
    ring: &mut IoUring,
    side: &mut ReceiverSide,
    deadline: Instant,
    what: &str,
    done: impl FnMut(&mut ReceiverSide) -> bool,
) -> Result<(), String> {
    run(
        ring,
        side,
        deadline,
        WAIT,
        what,
        |s, sq| s.engine.pump(sq),
        |s, cqe, sq| {
            let mut new = Vec::new();
            s.engine.on_cqe(cqe, sq, &mut |e| new.push(e));
            for e in new {
                if let ReceiverEvent::Entries {
                    bytes,
                    last_seq,
                    last_exit,
                    ..
                } = &e
                {
                    s.delivered.extend_from_slice(bytes);
                    if s.auto_ack {
                        // The backup "replays" at once in these tests.
                        s.engine.ack(*last_seq, *last_exit, sq);
                    }
                }
                s.events.push(e);
            }
        },
        done,
    )
}

pub fn finish_receiver(ring: &mut IoUring, mut side: ReceiverSide) -> ReceiverSide {
    side.engine.shutdown();
    let deadline = Instant::now() + DEADLINE;
    drive_receiver(ring, &mut side, deadline, "receiver quiescence", |s| {
        s.engine.ops_in_flight() == 0
    })
    .expect("receiver operations complete after shutdown");
    side.engine
        .detach(&ring.submitter())
        .expect("detach receiver");
    side
}

/// What the proxy does to the primary → backup direction.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Inverts the byte at this stream offset.
    Flip { at: usize },
    /// Forwards this many bytes, then cuts both connections.
    Cut { at: usize },
}

/// A TCP proxy between sender and receiver. Acks pass untouched. The
/// stream direction ends with a FIN after the last forwarded byte (never a
/// RST, which would make the receiver's kernel discard bytes it has not read
/// yet); the ack direction is read until the receiver closes, so the
/// proxy's sockets never close with unread data either.
pub struct Proxy {
    pub addr: SocketAddr,
    handle: JoinHandle<()>,
}

impl Proxy {
    pub fn start(to: SocketAddr, fault: Fault) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = l.local_addr().expect("proxy addr");
        let handle = std::thread::spawn(move || {
            let Ok((client, _)) = l.accept() else { return };
            let Ok(server) = TcpStream::connect(to) else {
                return;
            };
            for s in [&client, &server] {
                let _ = s.set_nodelay(true);
                // Bounds the proxy's life even if a test goes wrong.
                let _ = s.set_read_timeout(Some(DEADLINE));
            }
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let up = std::thread::spawn(move || stream_up(c2, s2, fault));
            acks_down(server, client);
            let _ = up.join();
        });
        Proxy { addr, handle }
    }

    pub fn join(self) {
        self.handle.join().expect("proxy thread");
    }
}

/// Sender → receiver, with the fault. Ends the receiver's side with a FIN
/// and the sender's side entirely.
fn stream_up(mut from: TcpStream, mut to: TcpStream, fault: Fault) {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0usize;
    loop {
        let mut n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut cut = false;
        match fault {
            Fault::Flip { at } if (pos..pos + n).contains(&at) => buf[at - pos] ^= 0xff,
            Fault::Cut { at } if pos + n >= at => {
                n = at - pos;
                cut = true;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        pos += n;
        if cut {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Both);
}

/// Receiver → sender (acks), until the receiver closes; then the whole
/// path ends.
fn acks_down(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut sender_alive = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Once the sender is gone the acks are read and dropped.
        sender_alive = sender_alive && to.write_all(&buf[..n]).is_ok();
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The log configuration of most tests: small buffers, so buffers wrap
/// many times, and a short stall bound, so a broken test fails fast.
pub fn small_log(buffers: usize, size: usize) -> LogConfig {
    let mut cfg = LogConfig::new(buffers, size);
    cfg.stall_timeout = Duration::from_secs(20);
    cfg
}

/// The attach request the channel tests' primaries send.
pub fn attach_request() -> AttachRequest {
    AttachRequest {
        header: header(),
        boot: b"a boot configuration".to_vec(),
    }
}

/// The backup's side of an opening on a blocking stream: feeds the
/// responder until it asks to attach, answers `verdict`.
pub fn respond(
    stream: &mut TcpStream,
    security: Security,
    verdict: Verdict,
) -> Result<(Option<Session>, AttachRequest), Rejection> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = Responder::new(security);
    let mut buf = [0u8; 4096];
    loop {
        match r.advance()? {
            Step::NeedMore => {
                let n = match stream.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Rejection::Io(e.to_string())),
                };
                if n == 0 {
                    return Err(Rejection::Closed);
                }
                r.input(&buf[..n])?;
            }
            Step::Send(bytes) => stream.write_all(&bytes).expect("send"),
            Step::Attach(a) => {
                let (bytes, session) = r.answer(&verdict)?;
                stream.write_all(&bytes).expect("send verdict");
                return Ok((session, a));
            }
        }
    }
}

/// A loopback pair that went through the opening under `key`: (primary's
/// stream and session, backup's stream and session).
pub fn opened_pair(key: &PairKey) -> ((TcpStream, Session), (TcpStream, Session)) {
    let (mut c, mut s) = tcp_pair();
    let sec = Security::Key(key.clone());
    let primary = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let session = initiate(&mut c, &sec, &attach_request(), deadline).expect("initiate");
        (c, session)
    });
    let (session, attach) =
        respond(&mut s, Security::Key(key.clone()), Verdict::Accepted).expect("respond");
    assert_eq!(attach, attach_request());
    (
        primary.join().expect("primary"),
        (s, session.expect("accepted")),
    )
}
