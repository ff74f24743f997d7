//! [`ChannelListener`]: the backup's listening socket, on a thread of its
//! own, made to outlast hostile peers.
//!
//! * Every connection gets a deadline for its whole opening
//!   ([`ListenerOptions::handshake_deadline`]); junk, silence, a wrong
//!   key or a replayed recording drop that connection with a log line and
//!   an event for the counters — never the listener.
//! * Openings run side by side (one thread polls them all), at most
//!   [`ListenerOptions::max_pending`] at once and
//!   [`ListenerOptions::max_pending_per_host`] from one address: a flood
//!   from one host cannot crowd out the real primary, and when the table
//!   is full the oldest opening makes room.
//! * The first authenticated primary whose attach request the judge
//!   accepts is handed out ([`ChannelListener::next`]). The listener goes
//!   on afterwards: every later authenticated primary is refused with a
//!   reason it can print, so two primaries never share a backup.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::handshake::{Rejection, Security, Session};
use super::messages::{AttachRequest, Verdict};
use super::responder::{Responder, Step};

/// How long the listener sleeps at most between looks at its stop flag.
const TICK: Duration = Duration::from_millis(100);
/// Rejections logged one by one before the log thins them to every 100th.
const LOG_EVERY_UNTIL: u64 = 20;

/// Limits of the listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerOptions {
    /// From accept to a complete attach request.
    pub handshake_deadline: Duration,
    /// Openings in progress at once.
    pub max_pending: usize,
    /// Openings in progress from one address.
    pub max_pending_per_host: usize,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            handshake_deadline: Duration::from_secs(3),
            max_pending: 32,
            max_pending_per_host: 4,
        }
    }
}

/// An authenticated primary the backup accepted.
#[derive(Debug)]
pub struct Attached {
    /// Blocking, ready for the receiver engine.
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub session: Session,
    pub attach: AttachRequest,
}

/// What the listener did, for counters.
#[derive(Clone, Copy, Debug)]
pub enum ListenerEvent<'a> {
    /// A connection dropped before it proved anything.
    Rejected {
        peer: SocketAddr,
        reason: &'a Rejection,
    },
    /// An authenticated primary refused (by the judge, or because one is
    /// attached already).
    Refused { peer: SocketAddr, reason: &'a str },
    /// The primary that is now followed.
    Attached { peer: SocketAddr },
}

/// Decides whether a primary may attach: `Err(reason)` refuses it.
pub type Judge = Box<dyn FnMut(SocketAddr, &AttachRequest) -> Result<(), String> + Send>;
/// Told of every rejection, refusal and attach.
pub type Observer = Box<dyn Fn(ListenerEvent<'_>) + Send>;

/// The listening thread; it stops when this is dropped.
pub struct ChannelListener {
    local: SocketAddr,
    attached: mpsc::Receiver<Attached>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChannelListener {
    /// Serves `listener` from a thread.
    pub fn spawn(
        listener: TcpListener,
        security: Security,
        opts: ListenerOptions,
        judge: Judge,
        observe: Observer,
    ) -> std::io::Result<ChannelListener> {
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (tx, attached) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = Listening {
            listener,
            security,
            opts,
            judge,
            observe,
            pending: VecDeque::new(),
            attached_peer: None,
            handed: tx,
            rejected: 0,
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("channel-listen".into())
            .spawn(move || state.run(&flag))?;
        Ok(ChannelListener {
            local,
            attached,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The accepted primary, once there is one (waits up to `timeout`).
    pub fn next(&self, timeout: Duration) -> Option<Attached> {
        self.attached.recv_timeout(timeout).ok()
    }
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Returns within one TICK.
            let _ = t.join();
        }
    }
}

/// One opening in progress.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    responder: Responder,
}

struct Listening {
    listener: TcpListener,
    security: Security,
    opts: ListenerOptions,
    judge: Judge,
    observe: Observer,
    /// Oldest first.
    pending: VecDeque<Pending>,
    attached_peer: Option<SocketAddr>,
    handed: mpsc::Sender<Attached>,
    rejected: u64,
}

impl Listening {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.expire(now);
            let wait = self
                .pending
                .iter()
                .map(|p| p.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(TICK)
                .min(TICK);
            let ready = match self.poll(wait) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("logging channel listener: poll failed ({e}); it stops");
                    return;
                }
            };
            // Openings first (indices stay valid: accepting only appends).
            for i in ready.into_iter().rev() {
                self.serve(i);
            }
            self.accept();
        }
    }

    /// Indices of the pending connections that are readable (or closed).
    fn poll(&self, wait: Duration) -> nix::Result<Vec<usize>> {
        let mut fds = Vec::with_capacity(self.pending.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        for p in &self.pending {
            fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::NONE);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        Ok(fds
            .iter()
            .skip(1)
            .enumerate()
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i)
            .collect())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ECONNABORTED, EMFILE…: this connection is lost, the
                // listener is not; the next poll tries again.
                Err(e) => {
                    tracing::debug!("logging channel listener: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let host: IpAddr = peer.ip();
        let from_host = self.pending.iter().filter(|p| p.peer.ip() == host).count();
        if from_host >= self.opts.max_pending_per_host {
            let reason = Rejection::Malformed(format!(
                "{from_host} openings from {host} in progress already"
            ));
            self.reject(peer, &reason);
            return;
        }
        if self.pending.len() >= self.opts.max_pending.max(1)
            && let Some(oldest) = self.pending.pop_front()
        {
            self.reject(oldest.peer, &Rejection::Evicted);
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        // Acks and the verdict are small: send them at once.
        let _ = stream.set_nodelay(true);
        self.pending.push_back(Pending {
            stream,
            peer,
            deadline: Instant::now() + self.opts.handshake_deadline,
            responder: Responder::new(self.security.clone()),
        });
    }

    fn expire(&mut self, now: Instant) {
        while let Some(i) = self.pending.iter().position(|p| p.deadline <= now) {
            if let Some(p) = self.pending.remove(i) {
                self.reject(p.peer, &Rejection::Idle);
            }
        }
    }

    fn reject(&mut self, peer: SocketAddr, reason: &Rejection) {
        self.rejected += 1;
        if self.rejected <= LOG_EVERY_UNTIL || self.rejected.is_multiple_of(100) {
            tracing::warn!(
                rejected = self.rejected,
                "logging channel: dropped a connection from {peer}: {reason}"
            );
        }
        (self.observe)(ListenerEvent::Rejected { peer, reason });
    }

    /// Reads what connection `i` sent and moves its opening on.
    fn serve(&mut self, i: usize) {
        let Some(mut p) = self.pending.remove(i) else {
            return;
        };
        match self.progress(&mut p) {
            Ok(None) => self.pending.insert(i, p),
            Ok(Some(attach)) => self.decide(p, attach),
            Err(reason) => self.reject(p.peer, &reason),
        }
    }

    /// Feeds what arrived to the opening; `Some` once it asks to attach.
    fn progress(&mut self, p: &mut Pending) -> Result<Option<AttachRequest>, Rejection> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match p.stream.read(&mut buf) {
                Ok(0) => return Err(Rejection::Closed),
                Ok(n) => p.responder.input(&buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Rejection::Io(format!("receive: {e}"))),
            }
        }
        loop {
            match p.responder.advance()? {
                Step::NeedMore => return Ok(None),
                Step::Send(bytes) => send_now(&mut p.stream, &bytes)?,
                Step::Attach(a) => return Ok(Some(a)),
            }
        }
    }

    /// Judges an authenticated attach request and answers it.
    fn decide(&mut self, mut p: Pending, attach: AttachRequest) {
        let verdict = match self.attached_peer {
            Some(first) => Verdict::Refused(format!(
                "this backup already follows a primary ({first}); a backup follows one primary, once"
            )),
            None => match (self.judge)(p.peer, &attach) {
                Ok(()) => Verdict::Accepted,
                Err(reason) => Verdict::Refused(reason),
            },
        };
        let (bytes, session) = match p.responder.answer(&verdict) {
            Ok(answer) => answer,
            Err(reason) => return self.reject(p.peer, &reason),
        };
        let Some(session) = session else {
            // Refused: counted before the primary can learn it, so a
            // counter never lags what a peer saw.
            let reason = match &verdict {
                Verdict::Refused(r) => r.as_str(),
                Verdict::Accepted => "no session",
            };
            tracing::warn!(
                "logging channel: refused the primary at {}: {reason}",
                p.peer
            );
            (self.observe)(ListenerEvent::Refused {
                peer: p.peer,
                reason,
            });
            // A refused peer that does not read loses only its reason.
            let _ = send_now(&mut p.stream, &bytes);
            return;
        };
        if let Err(reason) = send_now(&mut p.stream, &bytes) {
            return self.reject(p.peer, &reason);
        }
        if let Err(e) = p.stream.set_nonblocking(false) {
            return self.reject(p.peer, &Rejection::Io(e.to_string()));
        }
        tracing::info!(
            "logging channel: primary at {} attached ({})",
            p.peer,
            session.mode().name()
        );
        self.attached_peer = Some(p.peer);
        (self.observe)(ListenerEvent::Attached { peer: p.peer });
        let _ = self.handed.send(Attached {
            stream: p.stream,
            peer: p.peer,
            session,
            attach,
        });
    }
}

/// Writes a short message to a fresh socket without waiting: a peer whose
/// socket cannot take a few hundred bytes is not reading.
fn send_now(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), Rejection> {
    match stream.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(_) => Err(Rejection::Io("the peer does not read".into())),
        Err(e) => Err(Rejection::Io(format!("send: {e}"))),
    }
}
