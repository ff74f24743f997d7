//! The primary's plane: sends the log, takes the backup's acks and releases
//! outputs by the output rule, beats, and declares the backup dead when it
//! falls silent or the channel closes.

use std::sync::Arc;
use std::time::Instant;

use io_uring::{Submitter, cqueue, squeue};

use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::plane::{AttachError, Dataplane, IoPlane};
use logchan::channel::{HeartbeatEngine, Registration, SenderEngine, SenderEvent};

use super::{TAG_HEARTBEAT, TAG_LOG};
use crate::failure::{FailureMonitor, Liveness, Verdict};
use crate::output_rule::OutputRule;
use crate::shared::FtShared;

pub struct PrimaryPlane {
    sender: SenderEngine,
    heartbeat: HeartbeatEngine,
    monitor: FailureMonitor,
    ft: Arc<FtShared>,
    status: Arc<StatusCounters>,
    rule: OutputRule,
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
            monitor: FailureMonitor::new(live.timeout, Instant::now()),
            ft,
            status,
            rule: OutputRule::new(),
        }
    }

    /// Copies the engines' counters to the status endpoint's.
    fn report(&self) {
        let st = self.sender.stats();
        StatusCounters::set(&self.status.sent_seq, st.entries_sent);
        StatusCounters::set(&self.status.log_bytes, st.bytes_sent);
        let hb = self.heartbeat.stats();
        StatusCounters::set(&self.status.heartbeats_sent, hb.sent);
        StatusCounters::set(&self.status.heartbeats_received, hb.received);
    }

    /// What the sender reported: an ack releases outputs, a closed channel
    /// makes the backup as good as gone.
    pub(super) fn on_sender_event(
        &mut self,
        ev: SenderEvent,
        sq: &mut squeue::SubmissionQueue<'_>,
        dp: &mut Dataplane<'_>,
        now: Instant,
    ) {
        match ev {
            SenderEvent::Acked {
                acked_seq,
                replayed_seq,
                replayed_exit,
            } => {
                self.monitor.heard(now);
                self.status.heard_from_peer_at(now);
                StatusCounters::set(&self.status.acked_seq, acked_seq);
                StatusCounters::set(&self.status.replayed_seq, replayed_seq);
                StatusCounters::set(&self.status.replayed_exit, replayed_exit);
                if let Some(watermark) = self.rule.on_ack(acked_seq, now) {
                    dp.release(watermark, sq);
                }
            }
            SenderEvent::Closed { reason } => {
                // Without the channel no output can be released: the backup
                // is as good as gone; the arbiter decides.
                self.ft.note(format!("logging channel closed: {reason}"));
                self.ft.set(&self.ft.peer_dead);
            }
        }
    }
}

impl IoPlane for PrimaryPlane {
    fn attach(&mut self, submitter: &Submitter<'_>) -> Result<String, AttachError> {
        self.sender
            .attach(submitter, Registration::Table)
            .map(|m| format!("logging channel: sending with {m}"))
    }

    fn owns(&self, tag: u8) -> bool {
        tag == TAG_LOG || tag == TAG_HEARTBEAT
    }

    fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        if !self.rule.is_open() {
            self.sender.pump(sq);
        }
        self.heartbeat.pump(sq, now);
    }

    fn busy(&self) -> bool {
        !self.rule.is_open() && self.sender.has_unsent()
    }

    fn flushed(&self) -> bool {
        self.rule.is_open() || self.sender.is_closed() || self.sender.is_drained()
    }

    fn on_cqe(
        &mut self,
        cqe: &cqueue::Entry,
        sq: &mut squeue::SubmissionQueue<'_>,
        dp: &mut Dataplane<'_>,
    ) {
        let now = Instant::now();
        if ioengine::user_data_tag(cqe.user_data()) == TAG_HEARTBEAT {
            if self.heartbeat.on_cqe(cqe, sq).is_some() {
                self.monitor.heard(now);
                self.status.heard_from_peer_at(now);
            }
            return;
        }
        let mut events = Vec::new();
        self.sender.on_cqe(cqe, sq, &mut |ev| events.push(ev));
        for ev in events {
            self.on_sender_event(ev, sq, dp, now);
        }
    }

    fn tick(&mut self, now: Instant, sq: &mut squeue::SubmissionQueue<'_>, dp: &mut Dataplane<'_>) {
        self.report();
        // Alone: every held output may go. Heartbeats go on: a backup whose
        // channel broke must see that its primary lives (and stop instead
        // of taking over).
        if FtShared::flag(&self.ft.alone) && self.rule.open_for_good() {
            dp.release(u64::MAX, sq);
        }
        if self.rule.is_open() || FtShared::flag(&self.ft.peer_dead) {
            return;
        }
        if let Verdict::Dead { silent_for } = self.monitor.verdict(now) {
            self.ft
                .note(format!("no heartbeat or ack for {silent_for:?}"));
            self.ft.set(&self.ft.peer_dead);
        }
    }

    fn gate_tag(&mut self, seq: u64, now: Instant) -> u64 {
        self.rule.tag(seq, now)
    }

    fn go_live(&mut self, _dp: &mut Dataplane<'_>) {}

    fn shutdown(&mut self) {
        if let Some(line) = self.rule.latency_summary() {
            tracing::info!("{line}");
        }
        self.sender.shutdown();
        self.heartbeat.shutdown();
    }
}
