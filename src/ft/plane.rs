//! The I/O thread's part of an FT pair: the logging channel and heartbeats
//! on the same io_uring as the disk and the tap (docs/failover.md explains
//! why one thread), the output gate's releases, and failure detection.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{Submitter, cqueue, squeue};

use blkio::DiskEngine;
use logchan::channel::{
    FailureDetector, HeartbeatEngine, ReceiverEngine, ReceiverEvent, Registration, Role,
    SenderEngine, SenderEvent,
};
use logchan::{EntryKind, StreamHeader};
use netio::TapEngine;

use super::shared::FtShared;
use crate::dataplane::shared::{Handoff, VmShared};
use crate::status::StatusCounters;

/// user_data tags of the FT engines (the disk and tap use 1 and 2).
pub const TAG_LOG: u8 = 3;
pub const TAG_HEARTBEAT: u8 = 4;

/// A peer never heard from yet (still starting) gets this long before it
/// counts as dead; once heard from, the failure timeout applies.
const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// Dead by the detector's timeout, or silent since the start for longer
/// than the start-up grace.
fn peer_dead(d: &FailureDetector, now: Instant) -> bool {
    if d.ever_heard() {
        d.is_dead(now)
    } else {
        d.silent_for(now) > STARTUP_GRACE
    }
}

/// Heartbeat timing and failure detection.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub period: Duration,
    pub timeout: Duration,
}

/// The dataplane engines the plane acts on.
pub struct Dataplane<'a> {
    pub disk: Option<&'a mut DiskEngine>,
    pub tap: Option<&'a mut TapEngine>,
    /// Whether received frames go to the guest (false on a backup until it
    /// goes live).
    pub deliver_rx: &'a mut bool,
}

impl<'a> Dataplane<'a> {
    pub fn new(
        disk: &'a mut Option<DiskEngine>,
        tap: &'a mut Option<TapEngine>,
        deliver_rx: &'a mut bool,
    ) -> Self {
        Dataplane {
            disk: disk.as_mut(),
            tap: tap.as_mut(),
            deliver_rx,
        }
    }

    /// Lets the outputs tagged up to `seq` out of the gates.
    pub fn release(&mut self, seq: u64, sq: &mut squeue::SubmissionQueue<'_>) {
        if let Some(d) = self.disk.as_deref_mut() {
            d.release(seq, sq);
        }
        if let Some(t) = self.tap.as_deref_mut() {
            t.release(seq, sq);
        }
    }
}

pub enum FtPlane {
    Primary(PrimaryPlane),
    Backup(BackupPlane),
}

pub struct PrimaryPlane {
    sender: SenderEngine,
    heartbeat: HeartbeatEngine,
    detector: FailureDetector,
    ft: Arc<FtShared>,
    status: Arc<StatusCounters>,
    /// The output gate is open for good (the primary continues alone).
    gate_open: bool,
    /// Outputs waiting at the gate (tag, since when), for the latency the
    /// output rule adds.
    held: VecDeque<(u64, Instant)>,
    /// That latency, in microseconds.
    added: hdrhistogram::Histogram<u64>,
}

impl PrimaryPlane {
    pub fn new(
        sender: SenderEngine,
        heartbeat: HeartbeatEngine,
        live: Liveness,
        ft: Arc<FtShared>,
        status: Arc<StatusCounters>,
    ) -> Self {
        PrimaryPlane {
            sender,
            heartbeat,
            detector: FailureDetector::new(live.timeout, Instant::now()),
            ft,
            status,
            gate_open: false,
            held: VecDeque::new(),
            added: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(
                |_| hdrhistogram::Histogram::new(3).expect("a histogram with 3 significant digits"),
            ),
        }
    }

    fn released(&mut self, acked: u64, now: Instant) {
        while self.held.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, since)) = self.held.pop_front() {
                let _ = self
                    .added
                    .record(now.duration_since(since).as_micros().max(1) as u64);
            }
        }
    }
}

pub struct BackupPlane {
    receiver: ReceiverEngine,
    /// Created when the stream header names the epoch.
    heartbeat: Option<HeartbeatEngine>,
    socket: Option<UdpSocket>,
    peer: SocketAddr,
    live: Liveness,
    detector: FailureDetector,
    ft: Arc<FtShared>,
    shared: Arc<VmShared>,
    status: Arc<StatusCounters>,
    chunks: Handoff<Vec<u8>>,
    /// The kind of the last entry received (an `End` means the primary
    /// ended the run on purpose).
    last_kind: Option<EntryKind>,
    /// When the channel closed without an `End`.
    closed_at: Option<Instant>,
    went_live: bool,
}

impl BackupPlane {
    pub fn new(
        receiver: ReceiverEngine,
        socket: UdpSocket,
        peer: SocketAddr,
        live: Liveness,
        ft: Arc<FtShared>,
        shared: Arc<VmShared>,
        chunks: rtrb::Producer<Vec<u8>>,
    ) -> Self {
        BackupPlane {
            receiver,
            heartbeat: None,
            socket: Some(socket),
            peer,
            live,
            detector: FailureDetector::new(live.timeout, Instant::now()),
            ft,
            status: shared.status.clone(),
            shared,
            chunks: Handoff::new(chunks),
            last_kind: None,
            closed_at: None,
            went_live: false,
        }
    }
}

/// The kind of the last entry in a run of whole, verified entries.
fn last_entry_kind(mut bytes: &[u8]) -> Option<EntryKind> {
    let mut kind = None;
    while let Ok((rec, used)) = logchan::decode(bytes) {
        kind = Some(rec.header.kind);
        bytes = &bytes[used..];
    }
    kind
}

impl FtPlane {
    /// Registers buffers and picks send/receive modes; on the I/O thread,
    /// before the first `pump`.
    pub fn attach(
        &mut self,
        submitter: &Submitter<'_>,
    ) -> Result<String, logchan::channel::SetupError> {
        match self {
            FtPlane::Primary(p) => p
                .sender
                .attach(submitter, Registration::Table)
                .map(|m| format!("logging channel: sending with {m}")),
            FtPlane::Backup(b) => b
                .receiver
                .attach(submitter, Registration::Table)
                .map(|m| format!("logging channel: receiving with {m:?}")),
        }
    }

    pub fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        match self {
            FtPlane::Primary(p) => {
                if !p.gate_open {
                    p.sender.pump(sq);
                }
                p.heartbeat.pump(sq, now);
            }
            FtPlane::Backup(b) => {
                if b.chunks.flush() {
                    b.shared.wake_vcpu();
                }
                b.receiver.pump(sq);
                if let Some(h) = b.heartbeat.as_mut() {
                    h.pump(sq, now);
                }
            }
        }
    }

    /// Whether the plane has work that should keep the I/O thread awake.
    pub fn busy(&self) -> bool {
        match self {
            FtPlane::Primary(p) => !p.gate_open && p.sender.has_unsent(),
            FtPlane::Backup(b) => b.chunks.has_overflow(),
        }
    }

    /// Whether everything the primary logged has left (for a clean stop).
    pub fn flushed(&self) -> bool {
        match self {
            FtPlane::Primary(p) => p.gate_open || p.sender.is_closed() || p.sender.is_drained(),
            FtPlane::Backup(_) => true,
        }
    }

    pub fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        dp: &mut Dataplane<'_>,
    ) {
        let tag = (cqe.user_data() >> 56) as u8;
        let now = Instant::now();
        match self {
            FtPlane::Primary(p) => {
                if tag == TAG_HEARTBEAT {
                    if p.heartbeat.on_cqe(cqe, sq).is_some() {
                        p.detector.heard(now);
                        p.status.heard_from_peer_at(now);
                    }
                    return;
                }
                let mut acked = None;
                let mut closed = None;
                p.sender.on_cqe(cqe, sq, &mut |ev| match ev {
                    SenderEvent::Acked { acked_seq, .. } => acked = Some(acked_seq),
                    SenderEvent::Closed { reason } => closed = Some(reason),
                });
                if let Some(seq) = acked {
                    p.detector.heard(now);
                    p.status.heard_from_peer_at(now);
                    let st = p.sender.stats();
                    StatusCounters::set(&p.status.acked_seq, seq);
                    StatusCounters::set(&p.status.replayed_seq, st.replayed_seq);
                    StatusCounters::set(&p.status.replayed_exit, st.replayed_exit);
                    dp.release(seq, sq);
                    p.released(seq, now);
                }
                if let Some(reason) = closed {
                    // Without the channel no output can be released: the
                    // backup is as good as gone; the arbiter decides.
                    p.ft.note(format!("logging channel closed: {reason}"));
                    p.ft.set(&p.ft.peer_dead);
                }
            }
            FtPlane::Backup(b) => {
                if tag == TAG_HEARTBEAT {
                    if let Some(h) = b.heartbeat.as_mut()
                        && h.on_cqe(cqe, sq).is_some()
                    {
                        b.detector.heard(now);
                        b.status.heard_from_peer_at(now);
                    }
                    return;
                }
                let mut events = Vec::new();
                b.receiver.on_cqe(cqe, sq, &mut |ev| events.push(ev));
                for ev in events {
                    match ev {
                        ReceiverEvent::Header(h) => {
                            b.detector.heard(now);
                            StatusCounters::set(&b.status.epoch, h.epoch);
                            start_heartbeat(b, &h);
                            b.chunks.push(h.encode().to_vec());
                        }
                        ReceiverEvent::Entries {
                            bytes, last_seq, ..
                        } => {
                            b.detector.heard(now);
                            b.last_kind = last_entry_kind(&bytes).or(b.last_kind);
                            b.chunks.push(bytes);
                            FtShared::raise(&b.ft.received_seq, last_seq);
                            // No wake-up: the replaying vCPU polls for log
                            // data every millisecond (ChannelChunks); waking a
                            // sleeping thread would cost this thread ~12 µs
                            // per chunk, and the replay's latency does not
                            // matter — acks go on receipt.
                            let (rs, rx) = (
                                FtShared::load(&b.ft.replayed_seq),
                                FtShared::load(&b.ft.replayed_exit),
                            );
                            b.receiver.ack(rs, rx, sq);
                            FtShared::raise(&b.ft.ack_sent, b.receiver.received_seq());
                        }
                        ReceiverEvent::Closed { reason, clean } => {
                            if clean && b.last_kind == Some(EntryKind::End) {
                                tracing::info!("the primary ended the run");
                                b.ft.set(&b.ft.stream_ended);
                                b.shared.wake_vcpu();
                            } else {
                                b.ft.note(format!("logging channel closed: {reason}"));
                                b.closed_at = Some(now);
                            }
                        }
                        ReceiverEvent::Corrupt { error } => {
                            tracing::error!(
                                "corrupt data on the logging channel: {error}; dropped the connection, nothing of it applied"
                            );
                            b.ft.note(format!("corrupt entry on the logging channel: {error}"));
                            b.closed_at = Some(now);
                        }
                    }
                }
            }
        }
    }

    /// Failure detection and the main thread's decisions.
    pub fn tick(
        &mut self,
        now: Instant,
        sq: &mut squeue::SubmissionQueue<'_>,
        dp: &mut Dataplane<'_>,
    ) {
        self.report();
        match self {
            FtPlane::Primary(p) => {
                // Alone: every held output may go. Heartbeats go on: a
                // backup whose channel broke must see that its primary
                // lives (and stop instead of taking over).
                if !p.gate_open && FtShared::flag(&p.ft.alone) {
                    p.gate_open = true;
                    dp.release(u64::MAX, sq);
                }
                if !p.gate_open && !FtShared::flag(&p.ft.peer_dead) && peer_dead(&p.detector, now) {
                    p.ft.note(format!(
                        "no heartbeat or ack for {:?}",
                        p.detector.silent_for(now)
                    ));
                    p.ft.set(&p.ft.peer_dead);
                }
            }
            FtPlane::Backup(b) => {
                if b.went_live || FtShared::flag(&b.ft.stream_ended) {
                    return;
                }
                let dead = peer_dead(&b.detector, now);
                if dead && !FtShared::flag(&b.ft.peer_dead) {
                    b.ft.note(format!(
                        "no heartbeat or log traffic for {:?}",
                        b.detector.silent_for(now)
                    ));
                    b.ft.set(&b.ft.peer_dead);
                    b.shared.wake_vcpu();
                }
                // The channel is gone but the primary still beats: it lives
                // on without us.
                if let Some(at) = b.closed_at
                    && !dead
                    && now.duration_since(at) > b.live.timeout
                    && !FtShared::flag(&b.ft.channel_broken)
                {
                    b.ft.set(&b.ft.channel_broken);
                    b.shared.wake_vcpu();
                }
            }
        }
    }

    /// Copies the engines' counters to the status endpoint's.
    fn report(&self) {
        match self {
            FtPlane::Primary(p) => {
                let st = p.sender.stats();
                StatusCounters::set(&p.status.sent_seq, st.entries_sent);
                StatusCounters::set(&p.status.log_bytes, st.bytes_sent);
                let hb = p.heartbeat.stats();
                StatusCounters::set(&p.status.heartbeats_sent, hb.sent);
                StatusCounters::set(&p.status.heartbeats_received, hb.received);
            }
            FtPlane::Backup(b) => {
                let st = b.receiver.stats();
                StatusCounters::set(&b.status.log_seq, b.receiver.received_seq());
                StatusCounters::set(&b.status.acked_seq, st.last_ack.acked_seq);
                StatusCounters::set(&b.status.log_bytes, st.bytes_received);
                if let Some(h) = b.heartbeat.as_ref() {
                    let hb = h.stats();
                    StatusCounters::set(&b.status.heartbeats_sent, hb.sent);
                    StatusCounters::set(&b.status.heartbeats_received, hb.received);
                }
            }
        }
    }

    /// A backup going live: its outputs become real, received frames go
    /// to the guest, the old channel and heartbeats end.
    pub fn go_live(&mut self, dp: &mut Dataplane<'_>) {
        if let FtPlane::Backup(b) = self {
            b.went_live = true;
            *dp.deliver_rx = true;
            if let Some(t) = dp.tap.as_deref_mut() {
                t.set_drop_outputs(false);
            }
            if let Some(d) = dp.disk.as_deref_mut() {
                d.set_drop_outputs(false);
            }
            b.receiver.shutdown();
            if let Some(h) = b.heartbeat.as_mut() {
                h.shutdown();
            }
        }
    }

    /// An output tagged `seq` went to the gate.
    pub fn output_held(&mut self, seq: u64) {
        if let FtPlane::Primary(p) = self
            && !p.gate_open
            && seq > 0
        {
            p.held.push_back((seq, Instant::now()));
        }
    }

    /// Ends the channel at the end of the run.
    pub fn shutdown(&mut self) {
        match self {
            FtPlane::Primary(p) => {
                let h = &p.added;
                if !h.is_empty() {
                    tracing::info!(
                        "output rule: {} outputs held; added latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                        h.len(),
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99),
                        h.value_at_quantile(0.999),
                        h.max()
                    );
                }
                p.sender.shutdown();
                p.heartbeat.shutdown();
            }
            FtPlane::Backup(b) => {
                b.receiver.shutdown();
                if let Some(h) = b.heartbeat.as_mut() {
                    h.shutdown();
                }
            }
        }
    }
}

fn start_heartbeat(b: &mut BackupPlane, header: &StreamHeader) {
    let Some(socket) = b.socket.take() else {
        return;
    };
    match HeartbeatEngine::new(
        socket,
        b.peer,
        Role::Backup,
        header.epoch,
        b.live.period,
        TAG_HEARTBEAT,
    ) {
        Ok(h) => b.heartbeat = Some(h),
        Err(e) => tracing::error!("heartbeats to {}: {e}", b.peer),
    }
}
