//! The backup's plane: receives and verifies the log, hands it to the
//! replaying vCPU thread and acks exactly what it handed on, beats once the
//! stream names its epoch, and judges the primary. When it suspects the
//! primary it stops acking and cuts its log at the highest seq its acks
//! covered, before anyone claims anything; at go-live its outputs become
//! real and the old channel ends.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{Submitter, cqueue, squeue};

use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::plane::{AttachError, Dataplane, IoPlane};
use lockstep_vmm::dataplane::shared::{Handoff, VmShared};
use logchan::channel::{HeartbeatEngine, ReceiverEngine, ReceiverEvent, Registration, Role};
use logchan::secure::BeatKeys;
use logchan::{EntryKind, StreamHeader};

use super::{TAG_HEARTBEAT, TAG_LOG, last_entry_kind};
use crate::channel_source::Chunk;
use crate::failure::{FailureMonitor, Liveness, Verdict};
use crate::go_live;
use crate::shared::FtShared;

pub struct BackupPlane {
    receiver: ReceiverEngine,
    /// Created when the stream header names the epoch.
    heartbeat: Option<HeartbeatEngine>,
    socket: Option<UdpSocket>,
    /// The session's heartbeat keys (`None`: an insecure channel).
    beat_keys: Option<BeatKeys>,
    peer: SocketAddr,
    live: Liveness,
    monitor: FailureMonitor,
    ft: Arc<FtShared>,
    shared: Arc<VmShared>,
    status: Arc<StatusCounters>,
    chunks: Handoff<Chunk>,
    /// The last seq handed to the replay: what the acks may cover.
    handed_on: u64,
    /// The primary's output lease, from the stream header.
    lease: Duration,
    /// The kind of the last entry received (an `End` means the primary
    /// ended the run on purpose).
    last_kind: Option<EntryKind>,
    went_live: bool,
    /// The replay position the last ack reported, and when an ack was last
    /// sent for replay progress alone (reads paused, nothing received).
    acked_replay: u64,
    progress_ack_at: Instant,
    /// When the diverged ack was asked of the receiver (`FtShared::diverged`).
    goodbye_at: Option<Instant>,
}

/// How long a diverged backup's drain waits for its last ack to leave.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often replay progress alone is acked: the primary measures its lag
/// from it, also while the backup's full buffer stops its receives.
const PROGRESS_ACK_EVERY: Duration = Duration::from_millis(2);

impl BackupPlane {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        receiver: ReceiverEngine,
        socket: UdpSocket,
        beat_keys: Option<BeatKeys>,
        peer: SocketAddr,
        live: Liveness,
        ft: Arc<FtShared>,
        shared: Arc<VmShared>,
        chunks: rtrb::Producer<Chunk>,
    ) -> Self {
        BackupPlane {
            receiver,
            heartbeat: None,
            socket: Some(socket),
            beat_keys,
            peer,
            live,
            monitor: FailureMonitor::new(live.timeout, Instant::now()),
            ft,
            status: shared.status.clone(),
            shared,
            chunks: Handoff::new(chunks),
            handed_on: 0,
            lease: Duration::ZERO,
            last_kind: None,
            went_live: false,
            goodbye_at: None,
            acked_replay: 0,
            progress_ack_at: Instant::now(),
        }
    }

    fn start_heartbeat(&mut self, header: &StreamHeader) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        match HeartbeatEngine::new(
            socket,
            self.peer,
            Role::Backup,
            header.epoch,
            self.live.period,
            TAG_HEARTBEAT,
        ) {
            Ok(h) => self.heartbeat = Some(h.with_keys(self.beat_keys.take())),
            Err(e) => tracing::error!("heartbeats to {}: {e}", self.peer),
        }
    }

    /// Copies the engines' counters to the status endpoint's.
    fn report(&self) {
        let st = self.receiver.stats();
        StatusCounters::set(&self.status.log_seq, self.receiver.received_seq());
        StatusCounters::set(&self.status.acked_seq, st.last_ack.acked_seq);
        StatusCounters::set(&self.status.log_bytes, st.bytes_received);
        let buf = &self.ft.replay_buffer;
        StatusCounters::set(&self.status.replay_buffer_bytes, buf.bytes());
        StatusCounters::set(&self.status.replay_buffer_max_bytes, buf.max_bytes());
        StatusCounters::set(&self.status.replay_buffer_pauses, buf.pauses());
        if let Some(h) = self.heartbeat.as_ref() {
            let hb = h.stats();
            StatusCounters::set(&self.status.heartbeats_sent, hb.sent);
            StatusCounters::set(&self.status.heartbeats_received, hb.received);
            StatusCounters::set(&self.status.heartbeats_forged, hb.ignored_forged);
            StatusCounters::set(&self.status.heartbeats_replayed, hb.ignored_replayed);
        }
    }

    /// Acks what was handed to the replay, and nothing more.
    fn ack(&mut self, sq: &mut squeue::SubmissionQueue<'_>) {
        fail::fail_point!("backup-ack", |_| ());
        let (rs, rx) = (
            FtShared::load(&self.ft.replayed_seq),
            FtShared::load(&self.ft.replayed_exit),
        );
        self.acked_replay = rs;
        self.receiver.ack_up_to(self.handed_on, rs, rx, sq);
        if let Some((seq, _)) = self.receiver.ack_high_water() {
            FtShared::raise(&self.ft.ack_sent, seq);
        }
    }

    /// The primary is suspected: no ack from now on, and the log ends at
    /// the highest seq an ack covered. The backup may go live only once the
    /// primary's lease, counted from that last ack, is over.
    fn cut(&mut self, now: Instant) {
        self.receiver.stop_acking();
        let (seq, at) = self.receiver.ack_high_water().unwrap_or((0, now));
        self.ft.set_cut(seq, at + self.lease);
        tracing::info!(
            cut = seq,
            "stopped acknowledging: the log ends at seq {seq}; live no sooner than {:?} from now",
            (at + self.lease).saturating_duration_since(now)
        );
    }

    /// The last seq the receiver decoded (tests).
    #[cfg(test)]
    pub(super) fn received_for_tests(&self) -> u64 {
        self.receiver.received_seq()
    }

    /// Whether the receives are stopped by a full replay buffer (tests).
    #[cfg(test)]
    pub(super) fn reads_paused_for_tests(&self) -> bool {
        self.receiver.reads_paused()
    }

    /// A heartbeat from the primary at `at` (tests).
    #[cfg(test)]
    pub(super) fn heartbeat_for_tests(&mut self, at: Instant) {
        self.monitor.heard(at);
    }

    pub(super) fn on_receiver_event(
        &mut self,
        ev: ReceiverEvent,
        sq: &mut squeue::SubmissionQueue<'_>,
        now: Instant,
    ) {
        match ev {
            ReceiverEvent::Header(h) => {
                self.monitor.heard(now);
                StatusCounters::set(&self.status.epoch, h.epoch);
                self.lease = Duration::from_millis(u64::from(h.lease_ms));
                self.start_heartbeat(&h);
                let bytes = h.encode().to_vec();
                self.ft.replay_buffer.added(bytes.len());
                self.chunks.push(Chunk { bytes, last_seq: 0 });
            }
            ReceiverEvent::Entries {
                bytes, last_seq, ..
            } => {
                self.monitor.heard(now);
                if self.ft.cut_at().is_some() {
                    // Past the cut: never replayed, never acked.
                    return;
                }
                self.last_kind = last_entry_kind(&bytes).or(self.last_kind);
                self.ft.replay_buffer.added(bytes.len());
                self.chunks.push(Chunk { bytes, last_seq });
                self.handed_on = last_seq;
                FtShared::raise(&self.ft.received_seq, last_seq);
                // No wake-up: the replaying vCPU polls for log data every
                // millisecond (ChannelChunks); waking a sleeping thread would
                // cost this thread ~12 µs per chunk.
                self.ack(sq);
            }
            ReceiverEvent::Closed { reason, clean } => {
                if clean && self.last_kind == Some(EntryKind::End) {
                    tracing::info!("the primary ended the run");
                    self.ft.set(&self.ft.stream_ended);
                    self.shared.wake_vcpu();
                } else {
                    self.ft.note(format!("logging channel closed: {reason}"));
                    self.monitor.channel_closed(now);
                }
            }
            ReceiverEvent::Corrupt { error } => {
                tracing::error!(
                    "corrupt data on the logging channel: {error}; dropped the connection, nothing of it applied"
                );
                self.ft
                    .note(format!("corrupt entry on the logging channel: {error}"));
                self.monitor.channel_closed(now);
            }
        }
    }
}

impl IoPlane for BackupPlane {
    fn attach(&mut self, submitter: &Submitter<'_>) -> Result<String, AttachError> {
        self.receiver
            .attach(submitter, Registration::Table)
            .map(|m| format!("logging channel: receiving with {m:?}"))
    }

    fn owns(&self, tag: u8) -> bool {
        tag == TAG_LOG || tag == TAG_HEARTBEAT
    }

    fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        if self.goodbye_at.is_none() && FtShared::flag(&self.ft.diverged) {
            let exit = FtShared::load(&self.ft.diverged_exit);
            tracing::warn!("the replay diverged at exit {exit}: telling the primary");
            self.receiver.say_diverged(exit, sq);
            self.goodbye_at = Some(now);
        }
        if self.chunks.flush() {
            self.shared.wake_vcpu();
        }
        StatusCounters::set(&self.status.replay_backlog, self.chunks.queued() as u64);
        if let Some(h) = self.heartbeat.as_mut() {
            h.set_log_seq(FtShared::load(&self.ft.ack_sent));
            h.pump(sq, now);
        }
        // Backpressure: a full replay buffer stops the receives; the replay
        // wakes this thread when it has taken something.
        let paused = !self.ft.replay_buffer.may_read();
        self.receiver.set_reads_paused(paused);
        if !self.went_live
            && self.ft.cut_at().is_none()
            && FtShared::load(&self.ft.replayed_seq) > self.acked_replay
            && now.saturating_duration_since(self.progress_ack_at) >= PROGRESS_ACK_EVERY
        {
            self.progress_ack_at = now;
            self.ack(sq);
        }
        self.receiver.pump(sq);
    }

    fn busy(&self) -> bool {
        self.chunks.has_overflow()
    }

    fn flushed(&self) -> bool {
        // A diverged backup's last ack leaves before the I/O thread ends
        // (bounded: a stuck socket does not hold the exit).
        if !FtShared::flag(&self.ft.diverged) {
            return true;
        }
        match self.goodbye_at {
            None => false,
            Some(at) => self.receiver.goodbye_done() || at.elapsed() >= GOODBYE_TIMEOUT,
        }
    }

    fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        _dp: &mut Dataplane<'_>,
    ) {
        let now = Instant::now();
        if ioengine::user_data_tag(cqe.user_data()) == TAG_HEARTBEAT {
            if let Some(h) = self.heartbeat.as_mut()
                && h.on_cqe(cqe, sq).is_some()
            {
                self.monitor.heard(now);
                self.status.heard_from_peer_at(now);
                if let Some(released) = h.peer_log_seq() {
                    FtShared::raise(&self.ft.primary_released, released);
                }
            }
            return;
        }
        // A backup that stops reading: the channel's completions go
        // unhandled, so no read or ack is issued again (heartbeats go on).
        fail::fail_point!("backup-read", |_| ());
        let mut events = Vec::new();
        self.receiver.on_cqe(cqe, sq, &mut |ev| events.push(ev));
        for ev in events {
            self.on_receiver_event(ev, sq, now);
        }
    }

    fn tick(
        &mut self,
        now: Instant,
        _sq: &mut squeue::SubmissionQueue<'_>,
        _dp: &mut Dataplane<'_>,
    ) {
        // A backup whose I/O thread keeps stalling (each gap forgiven):
        // the evidence ages while the channel's close does not.
        fail::fail_point!("backup-tick");
        self.report();
        if let Some(stall) = self.monitor.look(now) {
            tracing::warn!(
                "this side's I/O thread did not run for {stall:?}: the peer's silence meanwhile is not held against it"
            );
        }
        if self.went_live
            || FtShared::flag(&self.ft.stream_ended)
            || FtShared::flag(&self.ft.peer_dead)
        {
            return;
        }
        // The channel is gone but heartbeats still arrive (`ChannelBroken`):
        // they may be a live primary's (which saw the close at once and
        // claims the arbiter first), or stale evidence this side forgave
        // after its own stall while the primary was dying. Only the arbiter
        // can tell: it is claimed as for a dead peer.
        let silent_for = match self.monitor.verdict(now) {
            Verdict::Alive | Verdict::NoProgress { .. } => return,
            Verdict::Dead { silent_for } => Some(silent_for),
            Verdict::ChannelBroken => None,
        };
        if let (Some(silent), Ok(mut s)) = (silent_for, self.ft.silent_at_cut.lock()) {
            *s = Some(silent);
        }
        // The cut comes first: nothing acknowledged after it, before the
        // main thread claims anything.
        self.cut(now);
        if let Some(silent) = silent_for {
            self.ft
                .note(format!("no heartbeat or log traffic for {silent:?}"));
        }
        if self.monitor.channel_has_closed() {
            // A lost claim is then about the broken channel, also when
            // silence came first (a primary that won stops beating).
            self.ft.set(&self.ft.channel_broken);
        }
        self.ft.set(&self.ft.peer_dead);
        self.shared.wake_vcpu();
    }

    fn gate_tag(&mut self, _seq: u64, _now: Instant) -> u64 {
        // A backup's outputs are dropped until it goes live, and leave at
        // once after: it has no backup of its own.
        0
    }

    fn go_live(&mut self, dp: &mut Dataplane<'_>) {
        self.went_live = true;
        go_live::outputs_become_real(dp);
        self.receiver.shutdown();
        if let Some(h) = self.heartbeat.as_mut() {
            h.shutdown();
        }
    }

    fn shutdown(&mut self) {
        self.receiver.shutdown();
        if let Some(h) = self.heartbeat.as_mut() {
            h.shutdown();
        }
    }
}
