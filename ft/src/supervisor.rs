//! The main thread's part of an FT pair: when the I/O thread declares the
//! peer dead, win the arbiter's test-and-set before anything changes (the
//! paper's §2.3, split brain; `arbiter`) — then the backup goes live, or the
//! primary continues alone; the loser stops with a clear reason.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_status::{Role, StatusCounters};
use lockstep_vmm::dataplane::shared::VmShared;

use crate::arbiter::{Arbiter, ArbiterError, Claim, Claimant};
use crate::shared::FtShared;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Backup,
}

/// Why a side must stop now (the binary maps each to its exit status).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// The peer is unreachable, but the other side won the arbiter: it
    /// serves now.
    #[error(
        "the {peer} is unreachable ({note}), but {winner} won the arbiter for epoch {epoch}: it serves now; stopping"
    )]
    LostArbiter {
        peer: &'static str,
        note: String,
        winner: String,
        epoch: u64,
    },
    /// The backup's logging channel broke while the primary's heartbeats
    /// went on, and the primary won the arbiter: it lives on without this
    /// backup, which can no longer follow it.
    #[error(
        "the logging channel broke ({note}) and the primary, still alive, won the arbiter: this backup can no longer follow it; stopping"
    )]
    ChannelBroken { note: String },
    /// The arbiter refuses the claim for good: the epoch was never begun.
    #[error("the arbiter refuses this side's claim: {why}")]
    NotBegun { why: String },
}

pub struct Supervisor {
    pub side: Side,
    arbiter: Box<dyn Arbiter>,
    pub epoch: u64,
    who: Claimant,
    ft: Arc<FtShared>,
    state: State,
    last_arbiter_error: Option<Instant>,
    /// When the peer was declared dead and when the arbiter answered.
    pub failover: Option<(Instant, Instant)>,
    /// A join's new pair run, taken at the next poll (docs/join.md).
    rebind: Rebind,
}

/// How a primary's join hands the supervisor its new pair run: the epoch
/// it began for the joined backup and that run's shared state. From the
/// next poll the supervisor watches that backup.
#[derive(Clone, Default)]
pub struct Rebind(Arc<Mutex<Option<PairRun>>>);

/// A pair run: its epoch and its shared state.
type PairRun = (u64, Arc<FtShared>);

impl Rebind {
    pub fn to(&self, epoch: u64, ft: Arc<FtShared>) {
        if let Ok(mut r) = self.0.lock() {
            *r = Some((epoch, ft.clone()));
        }
        ft.wake_main();
    }

    fn take(&self) -> Option<PairRun> {
        self.0.lock().ok()?.take()
    }
}

/// Where the supervisor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The peer is heard from (or the verdict not acted on yet).
    Watching,
    /// The arbiter was won; a backup waits for the primary's lease to end.
    Won,
    /// Nothing more to decide.
    Done,
}

impl Supervisor {
    pub fn new(
        side: Side,
        arbiter: Box<dyn Arbiter>,
        epoch: u64,
        who: Claimant,
        ft: Arc<FtShared>,
    ) -> Self {
        Supervisor {
            side,
            arbiter,
            epoch,
            who,
            ft,
            state: State::Watching,
            last_arbiter_error: None,
            failover: None,
            rebind: Rebind::default(),
        }
    }

    /// The handle a join uses to rebind this supervisor.
    pub fn rebinder(&self) -> Rebind {
        self.rebind.clone()
    }

    /// The pair run's shared state this supervisor watches now.
    pub fn ft(&self) -> Arc<FtShared> {
        self.ft.clone()
    }

    fn peer(&self) -> &'static str {
        match self.side {
            Side::Primary => "backup",
            Side::Backup => "primary",
        }
    }

    /// Looks at what the I/O thread found; called from the main thread's
    /// wait loop (it is unparked when something happens).
    pub fn poll(&mut self, shared: &VmShared) -> Option<StopReason> {
        if let Some((epoch, ft)) = self.rebind.take() {
            tracing::info!("watching the backup that joined in epoch {epoch}");
            self.epoch = epoch;
            self.ft = ft;
            self.state = State::Watching;
            self.failover = None;
            // A backup gone live that a new backup joined is its primary.
            self.side = Side::Primary;
        }
        match self.state {
            State::Done => None,
            State::Won => {
                self.go_live_when_the_lease_is_over(shared);
                None
            }
            State::Watching => self.watch(shared),
        }
    }

    fn watch(&mut self, shared: &VmShared) -> Option<StopReason> {
        let note = || self.ft.note_text().unwrap_or_default();
        if !FtShared::flag(&self.ft.peer_dead) || FtShared::flag(&self.ft.stream_ended) {
            return None;
        }
        let dead_at = Instant::now();
        StatusCounters::set(&shared.status.epoch, self.epoch);
        fail::fail_point!("claim-delay");
        let claim = self.arbiter.claim(self.epoch, &self.who);
        // `lockstep status` says why nothing is protected meanwhile.
        shared
            .status
            .join
            .arbiter_unreachable
            .store(claim.is_err(), std::sync::atomic::Ordering::Relaxed);
        match claim {
            Ok(Claim::Won) => {
                self.failover = Some((dead_at, Instant::now()));
                StatusCounters::add(&shared.status.failovers, 1);
                match self.side {
                    Side::Backup => {
                        shared.status.set_role(Role::GoingLive);
                        tracing::warn!(
                            "the primary is gone ({}); won the arbiter for epoch {}: going live",
                            note(),
                            self.epoch
                        );
                        self.state = State::Won;
                        self.go_live_when_the_lease_is_over(shared);
                    }
                    Side::Primary => {
                        shared.status.set_role(Role::PrimaryAlone);
                        tracing::warn!(
                            "the backup is gone ({}); won the arbiter for epoch {}: continuing alone",
                            note(),
                            self.epoch
                        );
                        self.ft.set(&self.ft.alone);
                        // `lockstep status`: why (a backup whose replay
                        // diverged says so in its last ack).
                        if let Ok(mut b) = shared.status.join.alone_because.lock() {
                            let why = note();
                            *b = Some(if why.is_empty() {
                                "backup lost".into()
                            } else {
                                format!("backup lost: {why}")
                            });
                        }
                        shared.stop_logging();
                        self.state = State::Done;
                    }
                }
                shared.wake_vcpu();
                None
            }
            Ok(Claim::Lost { .. })
                if self.side == Side::Backup && FtShared::flag(&self.ft.channel_broken) =>
            {
                Some(self.lose(StopReason::ChannelBroken { note: note() }))
            }
            Ok(Claim::Lost { winner }) => Some(self.lose(StopReason::LostArbiter {
                peer: self.peer(),
                note: note(),
                winner,
                epoch: self.epoch,
            })),
            Err(e @ ArbiterError::NotBegun { .. }) => {
                Some(self.lose(StopReason::NotBegun { why: e.to_string() }))
            }
            Err(e) => {
                // Without the arbiter this side may not act: keep trying.
                if self
                    .last_arbiter_error
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                {
                    tracing::error!(
                        "the {} is unreachable and the arbiter cannot be reached ({e}); retrying",
                        self.peer()
                    );
                    self.last_arbiter_error = Some(Instant::now());
                }
                None
            }
        }
    }

    /// This side may not serve: it is fenced before it stops, so nothing
    /// it holds leaves on the way out.
    fn lose(&mut self, reason: StopReason) -> StopReason {
        self.state = State::Done;
        self.ft.set(&self.ft.fenced);
        reason
    }

    /// A backup that won goes live once the primary's lease, counted from
    /// the backup's last ack, is over for certain.
    fn go_live_when_the_lease_is_over(&mut self, shared: &VmShared) {
        let ready = self
            .ft
            .live_not_before()
            .is_none_or(|t| Instant::now() >= t);
        if ready {
            self.ft.set(&self.ft.go_live);
            self.state = State::Done;
            shared.wake_vcpu();
        }
    }
}
