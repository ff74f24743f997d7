//! [`HeartbeatEngine`]: UDP heartbeats on the I/O thread's io_uring.
//!
//! Every `period` it sends one datagram to the peer; one receive stays
//! armed. The engine keeps its own `IORING_OP_TIMEOUT` armed for the next
//! beat, so an I/O thread asleep in `io_uring_enter` wakes up in time
//! without arming anything itself — and, since that wake-up comes every
//! period, it also gets to check its [`super::FailureDetector`] at least
//! that often. (`next_deadline()` tells when the next beat is due, for an
//! I/O thread that wants to bound its sleep itself.)
//!
//! With keys ([`HeartbeatEngine::with_keys`], from an authenticated
//! channel's handshake) beats are signed (version 2) and only the peer's
//! signed beats with a counter above the last accepted one count: forged
//! and replayed datagrams are counted and ignored.
//!
//! The socket is connected to the peer, so the kernel drops datagrams from
//! anyone else and reports ICMP errors (`ECONNREFUSED` while the peer's
//! port is closed, `ENETUNREACH`/`EHOSTUNREACH` while the link is down) on
//! our sends and receives. Those are counted and never fatal: heartbeats
//! exist precisely to keep going while the peer is unreachable.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use super::error::SetupError;
use super::heartbeat::{HEARTBEAT_LEN, Heartbeat, Role, SIGNED_HEARTBEAT_LEN};
use super::{user_data, user_data_kind, user_data_tag};
use crate::secure::BeatKeys;

const KIND_SEND: u8 = 1;
const KIND_RECV: u8 = 2;
const KIND_TIMER: u8 = 3;
/// Larger than a heartbeat, so a datagram of another size is seen whole
/// and refused rather than truncated into something plausible.
const RECV_BUF_LEN: usize = 256;

/// Counters (snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Heartbeats handed to the socket, and sends that failed.
    pub sent: u64,
    pub send_errors: u64,
    /// Valid heartbeats of our epoch from the peer's role.
    pub received: u64,
    /// Receives that failed (ICMP errors reported on the socket).
    pub recv_errors: u64,
    /// Datagrams ignored: not a heartbeat (size, magic, version, crc,
    /// fields), of another epoch, or claiming our own role.
    pub ignored_malformed: u64,
    pub ignored_epoch: u64,
    pub ignored_role: u64,
    /// Datagrams not signed with the peer's key of this session (keyed
    /// engines only): forged, or from another session.
    pub ignored_forged: u64,
    /// Signed beats whose counter was not above the last accepted one:
    /// replayed (or reordered) datagrams.
    pub ignored_replayed: u64,
    /// Beats not sent because the previous send had not completed.
    pub skipped: u64,
}

/// Sends and receives heartbeats on a caller-owned io_uring.
pub struct HeartbeatEngine {
    socket: UdpSocket,
    peer: SocketAddr,
    tag: u8,
    role: Role,
    epoch: u64,
    period: Duration,
    counter: u64,
    log_seq: u64,
    flags: u8,
    /// When the next beat is due (`None`: at the first `pump`).
    next_beat: Option<Instant>,
    stopped: bool,
    /// `shutdown()` was called: nothing is armed again.
    shut: bool,
    /// Read by the kernel while `send_in_flight`.
    send_buf: Box<[u8]>,
    send_in_flight: bool,
    /// Written by the kernel while `recv_armed`.
    recv_buf: Box<[u8]>,
    recv_armed: bool,
    /// Read by the kernel when the timeout SQE is submitted.
    timer: Box<types::Timespec>,
    timer_armed: bool,
    created: Instant,
    last_heard: Option<Instant>,
    peer_beat: Option<Heartbeat>,
    /// Sign our beats and check the peer's (`None`: version 1, crc only).
    keys: Option<BeatKeys>,
    stats: HeartbeatStats,
}

impl fmt::Debug for HeartbeatEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatEngine")
            .field("peer", &self.peer)
            .field("role", &self.role)
            .field("epoch", &self.epoch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl HeartbeatEngine {
    /// An engine on a bound UDP socket, beating to `peer` every `period`
    /// as `role` of FT pair run `epoch`. The socket is connected to `peer`
    /// (bind it to the address the peer sends to, so the peer's datagrams
    /// come from the address we connect to) and put in blocking mode (the
    /// ring polls it). CQEs carry `tag` in the top byte of `user_data`.
    pub fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        role: Role,
        epoch: u64,
        period: Duration,
        tag: u8,
    ) -> Result<HeartbeatEngine, SetupError> {
        let sock = |source| SetupError::Socket {
            what: "heartbeat",
            source,
        };
        if period.is_zero() {
            return Err(SetupError::Config {
                what: "heartbeat period",
                why: "must be positive",
            });
        }
        socket.connect(peer).map_err(sock)?;
        socket.set_nonblocking(false).map_err(sock)?;
        Ok(HeartbeatEngine {
            socket,
            peer,
            tag,
            role,
            epoch,
            period,
            counter: 0,
            log_seq: 0,
            flags: 0,
            next_beat: None,
            stopped: false,
            shut: false,
            send_buf: vec![0u8; SIGNED_HEARTBEAT_LEN].into_boxed_slice(),
            send_in_flight: false,
            recv_buf: vec![0u8; RECV_BUF_LEN].into_boxed_slice(),
            recv_armed: false,
            timer: Box::new(types::Timespec::new()),
            timer_armed: false,
            created: Instant::now(),
            last_heard: None,
            peer_beat: None,
            keys: None,
            stats: HeartbeatStats::default(),
        })
    }

    /// Signs our beats and accepts only the peer's signed ones (an
    /// authenticated channel's heartbeat keys). Call before the first
    /// `pump`.
    pub fn with_keys(mut self, keys: Option<BeatKeys>) -> Self {
        self.keys = keys;
        self
    }

    /// Whether beats are signed.
    pub fn is_signed(&self) -> bool {
        self.keys.is_some()
    }

    pub fn tag(&self) -> u8 {
        self.tag
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The address our heartbeats come from (the peer's `peer`).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn stats(&self) -> HeartbeatStats {
        self.stats
    }

    /// What our next heartbeats say as `log_seq` (the primary: its latest
    /// sent seq; the backup: its latest received seq).
    pub fn set_log_seq(&mut self, seq: u64) {
        self.log_seq = seq;
    }

    /// Flags for our next heartbeats (version 1 defines none).
    pub fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }

    /// When the last valid heartbeat from the peer arrived.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// The peer's last valid heartbeat (its role, counter, log seq).
    pub fn peer_beat(&self) -> Option<Heartbeat> {
        self.peer_beat
    }

    pub fn peer_role(&self) -> Option<Role> {
        self.peer_beat.map(|b| b.role)
    }

    pub fn peer_log_seq(&self) -> Option<u64> {
        self.peer_beat.map(|b| b.log_seq)
    }

    /// Time since the peer was last heard (since the engine was created if
    /// never).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard.unwrap_or(self.created))
    }

    /// When the next beat is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.stopped { None } else { self.next_beat }
    }

    /// Stops sending (receiving goes on): a clean stop, or a test's
    /// "this side died".
    pub fn stop_sending(&mut self) {
        self.stopped = true;
    }

    /// Stops everything: no more beats, and the socket is shut down so the
    /// armed receive completes; the timer completes within a period. Then
    /// `ops_in_flight()` drops to 0 and the engine can be dropped.
    pub fn shutdown(&mut self) {
        self.stopped = true;
        self.shut = true;
        // An error only means there is nothing left to shut down.
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    /// Operations whose CQEs are still to come; drop the engine only when
    /// 0, or its buffers are leaked.
    pub fn ops_in_flight(&self) -> usize {
        usize::from(self.send_in_flight)
            + usize::from(self.recv_armed)
            + usize::from(self.timer_armed)
    }

    /// Sends a beat if one is due at `now`, keeps the receive and the timer
    /// for the next beat armed.
    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        if self.shut {
            return;
        }
        self.arm_recv(sq);
        if self.stopped {
            return;
        }
        let due = *self.next_beat.get_or_insert(now);
        if now >= due {
            if self.send_in_flight {
                // A datagram send not done after a whole period: the
                // host is overloaded; a late beat is worth nothing.
                self.stats.skipped += 1;
            } else {
                self.send_beat(sq);
            }
            let mut next = due + self.period;
            if next <= now {
                // We fell behind (a stalled thread): beat on from now
                // rather than in a burst.
                next = now + self.period;
            }
            self.next_beat = Some(next);
        }
        self.arm_timer(sq, now);
    }

    fn send_beat(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        let beat = Heartbeat {
            role: self.role,
            flags: self.flags,
            epoch: self.epoch,
            counter: self.counter + 1,
            log_seq: self.log_seq,
        };
        let len = match &self.keys {
            Some(keys) => {
                self.send_buf
                    .copy_from_slice(&beat.encode_signed(&keys.ours));
                SIGNED_HEARTBEAT_LEN
            }
            None => {
                self.send_buf[..HEARTBEAT_LEN].copy_from_slice(&beat.encode());
                HEARTBEAT_LEN
            }
        };
        let fd = types::Fd(self.socket.as_raw_fd());
        let e = opcode::Send::new(fd, self.send_buf.as_ptr(), len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(self.tag, KIND_SEND, 0));
        // SAFETY: `send_buf` is owned by the engine and not written until
        // this send's CQE has been handled (`send_in_flight`); `Drop` leaks
        // it while in flight.
        if unsafe { sq.push(&e) }.is_ok() {
            self.send_in_flight = true;
            self.counter += 1;
        }
    }

    fn arm_recv(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        if self.recv_armed {
            return;
        }
        let fd = types::Fd(self.socket.as_raw_fd());
        let e = opcode::Recv::new(fd, self.recv_buf.as_mut_ptr(), RECV_BUF_LEN as u32)
            .build()
            .user_data(user_data(self.tag, KIND_RECV, 0));
        // SAFETY: `recv_buf` is owned by the engine and not read until this
        // receive's CQE has been handled (`recv_armed`); `Drop` leaks it
        // while armed.
        if unsafe { sq.push(&e) }.is_ok() {
            self.recv_armed = true;
        }
    }

    fn arm_timer(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        if self.timer_armed || self.stopped {
            return;
        }
        let Some(next) = self.next_beat else { return };
        let wait = next.saturating_duration_since(now);
        *self.timer = types::Timespec::new()
            .sec(wait.as_secs())
            .nsec(wait.subsec_nanos());
        let e = opcode::Timeout::new(&*self.timer)
            .build()
            .user_data(user_data(self.tag, KIND_TIMER, 0));
        // SAFETY: the kernel reads the timespec when it takes the SQE; the
        // box is owned by the engine and not rewritten while `timer_armed`
        // (`Drop` leaks it then).
        if unsafe { sq.push(&e) }.is_ok() {
            self.timer_armed = true;
        }
    }

    /// Handles a CQE whose `user_data` carries this engine's tag; returns
    /// the peer's heartbeat if one was accepted (feed the failure detector
    /// with `last_heard()`). Then pumps.
    pub fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Option<Heartbeat> {
        let ud = cqe.user_data();
        if user_data_tag(ud) != self.tag {
            tracing::error!(ud, "heartbeat engine: CQE with a foreign tag");
            return None;
        }
        let res = cqe.result();
        let mut heard = None;
        match user_data_kind(ud) {
            KIND_SEND => {
                self.send_in_flight = false;
                if res < 0 {
                    self.stats.send_errors += 1;
                    note_error("send", -res, self.stats.send_errors);
                } else {
                    self.stats.sent += 1;
                }
            }
            KIND_RECV => {
                self.recv_armed = false;
                heard = self.on_recv(res);
            }
            KIND_TIMER => self.timer_armed = false,
            _ => tracing::error!(ud, "heartbeat engine: CQE of an unknown kind"),
        }
        self.pump(sq, Instant::now());
        heard
    }

    fn on_recv(&mut self, res: i32) -> Option<Heartbeat> {
        if self.shut {
            return None;
        }
        if res < 0 {
            self.stats.recv_errors += 1;
            note_error("receive", -res, self.stats.recv_errors);
            return None;
        }
        let n = (res as usize).min(RECV_BUF_LEN);
        let datagram = &self.recv_buf[..n];
        let decoded = match &self.keys {
            Some(keys) => Heartbeat::decode_signed(datagram, &keys.peers),
            None => Heartbeat::decode(datagram),
        };
        let beat = match decoded {
            Ok(b) => b,
            Err(e) => {
                if self.keys.is_some() {
                    // Whatever it is, it was not signed by the peer.
                    self.stats.ignored_forged += 1;
                    note_rejected("unsigned or forged", self.stats.ignored_forged, &e);
                } else {
                    self.stats.ignored_malformed += 1;
                    tracing::debug!(error = %e, "heartbeat ignored");
                }
                return None;
            }
        };
        if self.keys.is_some() {
            // Signed beats count only forward: a recording of this
            // session's own beats replayed later is not a sign of life.
            let last = self.peer_beat.map_or(0, |b| b.counter);
            if beat.counter <= last {
                self.stats.ignored_replayed += 1;
                note_rejected(
                    "replayed",
                    self.stats.ignored_replayed,
                    &format!("counter {} after {last}", beat.counter),
                );
                return None;
            }
        }
        if beat.epoch != self.epoch {
            self.stats.ignored_epoch += 1;
            tracing::debug!(
                theirs = beat.epoch,
                ours = self.epoch,
                "heartbeat of another epoch ignored"
            );
            return None;
        }
        if beat.role == self.role {
            self.stats.ignored_role += 1;
            return None;
        }
        self.stats.received += 1;
        self.last_heard = Some(Instant::now());
        self.peer_beat = Some(beat);
        Some(beat)
    }
}

/// Logs a rejected heartbeat: the first ten, then every 100th, so a flood
/// does not flood the log.
fn note_rejected(what: &str, count: u64, why: &dyn std::fmt::Display) {
    if count <= 10 || count.is_multiple_of(100) {
        tracing::warn!(count, "heartbeat ignored: {what} ({why})");
    }
}

/// Logs a send/receive error: the first of a run and then every 100th, so
/// a long partition does not flood the log.
fn note_error(op: &str, errno: i32, count: u64) {
    if count == 1 || count.is_multiple_of(100) {
        let e = std::io::Error::from_raw_os_error(errno);
        tracing::debug!(count, "heartbeat {op} failed: {e}");
    }
}

impl Drop for HeartbeatEngine {
    fn drop(&mut self) {
        if self.send_in_flight {
            std::mem::forget(std::mem::take(&mut self.send_buf));
        }
        if self.recv_armed {
            std::mem::forget(std::mem::take(&mut self.recv_buf));
        }
        if self.timer_armed {
            // The SQE may not even be submitted yet.
            let timer = std::mem::replace(&mut self.timer, Box::new(types::Timespec::new()));
            std::mem::forget(timer);
        }
    }
}
