//! The primary's plane: sends the log, takes the backup's acks and releases
//! outputs by the output rule under its lease, beats (carrying its release
//! watermark), and declares the backup dead when it falls silent, stops
//! acknowledging, or the channel closes. A backup declared dead is never
//! taken back: the log is discarded from then on, so the guest runs on
//! whatever the arbiter answers and however long it takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{Submitter, cqueue, squeue};

use ioengine::Lease;
use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::plane::{AttachError, Dataplane, IoPlane};
use logchan::channel::{HeartbeatEngine, Registration, SenderEngine, SenderEvent};

use super::{TAG_HEARTBEAT, TAG_LOG};
use crate::failure::{FailureMonitor, Liveness, Verdict};
use crate::lag::LagControl;
use crate::output_rule::OutputRule;
use crate::shared::FtShared;

pub struct PrimaryPlane {
    sender: SenderEngine,
    heartbeat: HeartbeatEngine,
    monitor: FailureMonitor,
    ft: Arc<FtShared>,
    status: Arc<StatusCounters>,
    rule: OutputRule,
    /// The lease the engines were last given.
    lease_applied: Option<Lease>,
    /// The log is being discarded (the backup is gone).
    discarding: bool,
    /// The gates were revoked (this side lost).
    revoked: bool,
    /// The backup's replay position, from its latest ack (`None` before
    /// the first: a backup that joined mid-run starts far from exit 0, and
    /// the lag is not known until it says where it is).
    replayed_exit: Option<u64>,
    /// The lag and the throttle (`None`: neither, as in unit tests).
    lag: Option<LagControl>,
}

impl PrimaryPlane {
    pub fn new(
        sender: SenderEngine,
        heartbeat: HeartbeatEngine,
        live: Liveness,
        lease: Duration,
        ft: Arc<FtShared>,
        status: Arc<StatusCounters>,
    ) -> Self {
        let now = Instant::now();
        PrimaryPlane {
            sender,
            heartbeat,
            monitor: FailureMonitor::new(live.timeout, now).with_ack_timeout(live.ack_timeout),
            ft,
            status,
            rule: OutputRule::new(lease),
            lease_applied: None,
            discarding: false,
            revoked: false,
            replayed_exit: None,
            lag: None,
        }
    }

    /// A backup never heard from is dead after `grace` (a joined one's,
    /// `failure::JOIN_GRACE`; the boot's is `failure::STARTUP_GRACE`).
    pub fn with_startup_grace(mut self, grace: Duration) -> Self {
        self.monitor = self.monitor.with_startup_grace(grace);
        self
    }

    /// Measures the backup's lag and throttles the guest with `lag`.
    pub fn with_lag(mut self, lag: LagControl) -> Self {
        self.lag = Some(lag);
        self
    }

    /// Copies the engines' counters to the status endpoint's.
    fn report(&self) {
        let st = self.sender.stats();
        StatusCounters::set(&self.status.sent_seq, st.entries_sent);
        StatusCounters::set(&self.status.log_bytes, st.bytes_sent);
        let hb = self.heartbeat.stats();
        StatusCounters::set(&self.status.heartbeats_sent, hb.sent);
        StatusCounters::set(&self.status.heartbeats_received, hb.received);
        StatusCounters::set(&self.status.heartbeats_forged, hb.ignored_forged);
        StatusCounters::set(&self.status.heartbeats_replayed, hb.ignored_replayed);
    }

    /// Gives the engines the rule's lease if it changed.
    fn apply_lease(&mut self, sq: &mut squeue::SubmissionQueue<'_>, dp: &mut Dataplane<'_>) {
        let lease = self.rule.lease();
        if self.lease_applied != Some(lease) {
            self.lease_applied = Some(lease);
            dp.set_lease(lease, sq);
            self.status.set_lease_until(match lease {
                Lease::Until(t) => Some(t),
                Lease::Unbounded => None,
            });
        }
    }

    /// What the sender reported: an ack releases outputs and renews the
    /// lease, a closed channel makes the backup as good as gone.
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
                sent_at,
            } => {
                fail::fail_point!("primary-drop-ack", |_| ());
                self.monitor.heard(now);
                self.status.heard_from_peer_at(now);
                StatusCounters::set(&self.status.acked_seq, acked_seq);
                StatusCounters::set(&self.status.replayed_seq, replayed_seq);
                StatusCounters::set(&self.status.replayed_exit, replayed_exit);
                self.replayed_exit = Some(
                    self.replayed_exit
                        .map_or(replayed_exit, |r| r.max(replayed_exit)),
                );
                let effect = self.rule.on_ack(acked_seq, sent_at, now);
                if effect.released.is_some() {
                    self.monitor.progress(now);
                }
                // A stall here (a paused process) holds released outputs
                // at the engines' lease check, the last step.
                fail::fail_point!("primary-after-ack");
                self.apply_lease(sq, dp);
                if let Some(watermark) = effect.released {
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

    /// Log entries handed to the socket and not acknowledged yet.
    fn outstanding(&self) -> bool {
        self.sender.stats().entries_sent > self.rule.released()
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

    fn fence_lag(&self) -> Option<Duration> {
        // The kernel's deadline trails the lease by at most a quarter of it:
        // a few timer updates per lease, never a late fence.
        Some(self.rule.lease_len() / 4)
    }

    fn pump(&mut self, sq: &mut squeue::SubmissionQueue<'_>, now: Instant) {
        if !self.rule.is_open() {
            self.sender.pump(sq);
        }
        self.heartbeat.set_log_seq(self.rule.released());
        self.heartbeat.pump(sq, now);
    }

    fn busy(&self) -> bool {
        !self.rule.is_open() && self.sender.has_unsent()
    }

    fn flushed(&self) -> bool {
        self.rule.is_open()
            || self.discarding
            || self.sender.is_closed()
            || self.sender.is_drained()
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
        // Brakes only while a backup may still replay this log: alone,
        // fenced or with the backup gone there is nothing to wait for.
        let braking = !self.rule.is_open()
            && !self.revoked
            && !FtShared::flag(&self.ft.peer_dead)
            && !FtShared::flag(&self.ft.alone);
        if let (Some(lag), Some(replayed)) = (self.lag.as_mut(), self.replayed_exit) {
            lag.tick(now, replayed, braking);
        }
        if let Some(stall) = self.monitor.look(now) {
            tracing::warn!(
                "this side's I/O thread did not run for {stall:?}: the peer's silence meanwhile is not held against it"
            );
        }
        // Lost (or stopping for a test failover): nothing held or produced
        // later may leave, for good. The log and the heartbeats stop first:
        // a revoked disk completes the writes it holds without writing
        // them, and a backup still following (a test failover's) must
        // never log such a completion as done — it would not reissue the
        // write on going live. It sees the channel close and claims.
        if FtShared::flag(&self.ft.fenced) && !self.revoked {
            self.revoked = true;
            self.sender.discard();
            self.discarding = true;
            self.heartbeat.shutdown();
            dp.revoke(sq);
        }
        if self.revoked {
            return;
        }
        // Alone: every held output may go, with no lease to honour. The
        // channel closes (the backup, if it still runs, sees it broken
        // while heartbeats go on, and stops rather than take over).
        if FtShared::flag(&self.ft.alone) && self.rule.open_for_good() {
            self.sender.discard();
            self.discarding = true;
            self.apply_lease(sq, dp);
            dp.release(u64::MAX, sq);
        }
        self.apply_lease(sq, dp);
        if self.rule.is_open() {
            return;
        }
        if FtShared::flag(&self.ft.peer_dead) {
            // A backup the operator drops keeps its channel (and acks) until
            // the claim is won (`alone`, above): it cannot claim first.
            if !self.discarding && !FtShared::flag(&self.ft.dropped) {
                // Nobody will read the log again (the backup is gone
                // whatever the arbiter says): free it as it comes.
                self.sender.discard();
                self.discarding = true;
            }
            return;
        }
        if !self.outstanding() {
            self.monitor.progress(now);
        }
        match self.monitor.verdict_with(now, self.outstanding()) {
            Verdict::Alive | Verdict::ChannelBroken => {}
            Verdict::Dead { silent_for } => {
                self.ft
                    .note(format!("no heartbeat or ack for {silent_for:?}"));
                self.ft.set(&self.ft.peer_dead);
            }
            Verdict::NoProgress { for_ } => {
                StatusCounters::add(&self.status.ack_timeouts, 1);
                self.ft.note(format!(
                    "the backup is alive but acknowledged nothing for {for_:?} (entries up to {} wait)",
                    self.sender.stats().entries_sent
                ));
                self.ft.set(&self.ft.peer_dead);
            }
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
