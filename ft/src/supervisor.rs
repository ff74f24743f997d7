//! The main thread's part of an FT pair: when the I/O thread declares the
//! peer dead, win the arbiter's test-and-set before anything changes (the
//! paper's §2.3, split brain; `arbiter`) — then the backup goes live, or the
//! primary continues alone; the loser stops with a clear reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_status::{Role, StatusCounters};
use lockstep_vmm::dataplane::shared::VmShared;

use crate::arbiter::{Arbiter, Claim};
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
    /// The backup's logging channel broke while the primary lives on: it
    /// can no longer follow, and must not take over.
    #[error(
        "the logging channel broke ({note}) while the primary is still alive: this backup can no longer follow it and will not take over"
    )]
    ChannelBroken { note: String },
}

pub struct Supervisor {
    pub side: Side,
    arbiter: Box<dyn Arbiter>,
    pub epoch: u64,
    name: String,
    ft: Arc<FtShared>,
    decided: bool,
    last_arbiter_error: Option<Instant>,
    /// When the peer was declared dead and when the arbiter answered.
    pub failover: Option<(Instant, Instant)>,
}

impl Supervisor {
    pub fn new(
        side: Side,
        arbiter: Box<dyn Arbiter>,
        epoch: u64,
        name: String,
        ft: Arc<FtShared>,
    ) -> Self {
        Supervisor {
            side,
            arbiter,
            epoch,
            name,
            ft,
            decided: false,
            last_arbiter_error: None,
            failover: None,
        }
    }

    /// Looks at what the I/O thread found; called from the main thread's
    /// wait loop (it is unparked when something happens).
    pub fn poll(&mut self, shared: &VmShared) -> Option<StopReason> {
        if self.decided {
            return None;
        }
        let note = || self.ft.note_text().unwrap_or_default();
        if self.side == Side::Backup && FtShared::flag(&self.ft.channel_broken) {
            self.decided = true;
            return Some(StopReason::ChannelBroken { note: note() });
        }
        if !FtShared::flag(&self.ft.peer_dead) || FtShared::flag(&self.ft.stream_ended) {
            return None;
        }
        let dead_at = Instant::now();
        StatusCounters::set(&shared.status.epoch, self.epoch);
        let peer = match self.side {
            Side::Primary => "backup",
            Side::Backup => "primary",
        };
        match self.arbiter.claim(self.epoch, &self.name) {
            Ok(Claim::Won) => {
                self.decided = true;
                self.failover = Some((dead_at, Instant::now()));
                match self.side {
                    Side::Backup => {
                        shared.status.set_role(Role::GoingLive);
                        tracing::warn!(
                            "the primary is gone ({}); won the arbiter for epoch {}: going live",
                            note(),
                            self.epoch
                        );
                        self.ft
                            .go_live
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    Side::Primary => {
                        shared.status.set_role(Role::PrimaryAlone);
                        tracing::warn!(
                            "the backup is gone ({}); won the arbiter for epoch {}: continuing alone",
                            note(),
                            self.epoch
                        );
                        self.ft
                            .alone
                            .store(true, std::sync::atomic::Ordering::Release);
                        shared.stop_logging();
                    }
                }
                StatusCounters::add(&shared.status.failovers, 1);
                shared.wake_vcpu();
                None
            }
            Ok(Claim::Lost { winner }) => {
                self.decided = true;
                Some(StopReason::LostArbiter {
                    peer,
                    note: note(),
                    winner,
                    epoch: self.epoch,
                })
            }
            Err(e) => {
                // Without the arbiter this side may not act: keep trying.
                if self
                    .last_arbiter_error
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                {
                    tracing::error!(
                        "the {peer} is unreachable and the arbiter cannot be reached ({e}); retrying"
                    );
                    self.last_arbiter_error = Some(Instant::now());
                }
                None
            }
        }
    }
}
