//! The backup's side of the sync call: a replay of the primary's stream
//! until the backup goes live, then the live devices. Going live happens at
//! a sync exit, after every received entry has been applied (`go_live`).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use lockstep_status::StatusCounters;
use lockstep_vmm::dataplane::io_thread::IoChannels;
use lockstep_vmm::dataplane::join_point::JoinCtl;
use lockstep_vmm::dataplane::live::{LiveError, LiveIo};
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::machine::{Digester, RunEndKind, SyncIo, SyncOutcome, SyncRequest};
use lockstep_vmm::replay::replayer::{ReplayError, ReplayIo, ReplayStop};
use lockstep_vmm::snapshot::vcpu::VcpuAccess;

use crate::go_live::{self, Announce};
use crate::shared::FtShared;

/// Why the backup's sync call failed: its replay's reasons (typed: the end
/// of the log, a divergence, the recording's end) or, once live, the live
/// devices'.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("the hand-over to live failed at an earlier exit")]
    HandOverFailed,
}

impl BackupError {
    /// The replay's stop, if the log ended the backup's run.
    pub fn replay_stop(&self) -> Option<&ReplayStop> {
        match self {
            BackupError::Replay(r) => r.stop(),
            BackupError::Live(_) | BackupError::HandOverFailed => None,
        }
    }
}

/// Whichever serves the guest now.
enum Serving {
    /// Following the primary; the I/O thread's rings wait for go-live.
    Replay(Box<ReplayIo>, IoChannels),
    Live(Box<LiveIo>),
    /// Only while handing over.
    Switching,
}

pub struct BackupIo {
    serving: Serving,
    shared: Arc<VmShared>,
    ft: Arc<FtShared>,
    announce: Option<Announce>,
    /// Once live: the join point of re-protection (`--spares`,
    /// docs/join.md).
    join: Option<Arc<JoinCtl>>,
}

impl BackupIo {
    pub fn new(
        replay: ReplayIo,
        shared: Arc<VmShared>,
        ft: Arc<FtShared>,
        io: IoChannels,
        announce: Option<Announce>,
    ) -> Self {
        BackupIo {
            serving: Serving::Replay(Box::new(replay), io),
            shared,
            ft,
            announce,
            join: None,
        }
    }

    /// Once live, a new backup may join this one by live clone.
    pub fn with_join(mut self, ctl: Arc<JoinCtl>) -> Self {
        self.join = Some(ctl);
        self
    }

    pub fn is_live(&self) -> bool {
        matches!(self.serving, Serving::Live(_))
    }

    pub fn shared(&self) -> &Arc<VmShared> {
        &self.shared
    }

    /// The I/O thread's rings, wherever they are now.
    pub fn channels_mut(&mut self) -> Option<&mut IoChannels> {
        match &mut self.serving {
            Serving::Replay(_, io) => Some(io),
            Serving::Live(l) => l.io.as_mut(),
            Serving::Switching => None,
        }
    }

    /// Takes over at this sync exit; `req` is finished live.
    fn go_live(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
    ) -> Result<SyncOutcome, BackupError> {
        let Serving::Replay(replay, io) = std::mem::replace(&mut self.serving, Serving::Switching)
        else {
            return Err(BackupError::HandOverFailed);
        };
        // The replay consumed the log to its end (the cut) before it stopped:
        // the entries of this last exit (frames, completions) are carried
        // into the live side below, so they count as replayed.
        self.note_replayed_seq(replay.cursor.consumed_seq());
        let released = FtShared::load(&self.ft.primary_released);
        let mut live = go_live::take_over(
            *replay,
            io,
            self.shared.clone(),
            self.announce,
            released,
            req.exit_index,
        )?;
        live.join = self.join.clone();
        // After take_over's own line, which must be the first sign of
        // going live (it precedes every output).
        self.report_go_live(req.exit_index);
        let outcome = live.sync(mem, req);
        self.serving = Serving::Live(Box::new(live));
        Ok(outcome?)
    }

    /// The go-live line: a failover takes the failure timeout (the primary
    /// silent that long before the cut) plus the replay of the lag the
    /// backup had at the cut (docs/failover.md).
    fn report_go_live(&self, exit: u64) {
        let timeout_ms = StatusCounters::get(&self.shared.status.failure_timeout_ms);
        let Some((cut_at, replayed_then)) = self.ft.cut_made() else {
            return;
        };
        // The silence the verdict saw (at least the timeout; more by the
        // I/O thread's tick); the timeout itself for a broken channel.
        let silent_ms = self
            .ft
            .silent_at_cut
            .lock()
            .ok()
            .and_then(|s| *s)
            .map_or(timeout_ms as f64, |d| d.as_secs_f64() * 1e3);
        let entries = self.ft.cut_at().unwrap_or(0).saturating_sub(replayed_then);
        let since_cut_ms = cut_at.elapsed().as_secs_f64() * 1e3;
        StatusCounters::set(
            &self.shared.status.went_live_after_ms,
            (silent_ms + since_cut_ms).round() as u64,
        );
        tracing::info!(
            exit,
            failure_timeout_ms = timeout_ms,
            silent_ms,
            since_cut_ms,
            entries_replayed_after_cut = entries,
            "go-live {:.1} ms after the primary's last sign of life: {silent_ms:.1} ms of silence to the verdict (failure timeout {timeout_ms} ms) + {since_cut_ms:.1} ms since: the replay of the lag ({entries} entries), the arbiter, the lease",
            silent_ms + since_cut_ms,
        );
    }

    /// A replayed exit: the positions the acks and `lockstep status` show.
    fn note_replayed(&self, exit_index: u64, seq: u64) {
        FtShared::raise(&self.ft.replayed_exit, exit_index);
        let status = &self.shared.status;
        status.note_sync_call(exit_index);
        StatusCounters::set(&status.replayed_exit, exit_index);
        self.note_replayed_seq(seq);
    }

    /// The replay's log position (it only moves forward).
    fn note_replayed_seq(&self, seq: u64) {
        FtShared::raise(&self.ft.replayed_seq, seq);
        StatusCounters::set(
            &self.shared.status.replayed_seq,
            FtShared::load(&self.ft.replayed_seq),
        );
    }
}

/// A replay that diverged: the backup's plane sends its last ack with the
/// flag (before the I/O thread drains), so the primary knows why.
fn say_diverged(ft: &FtShared, io: &IoChannels, exit: u64) {
    FtShared::raise(&ft.diverged_exit, exit);
    ft.set(&ft.diverged);
    io.waker.wake();
}

/// Tests: a replay that diverges at this exit (fail point
/// `replay-diverge`), taken as a real divergence is.
fn replay_fault(exit_index: u64, seq: u64) -> Option<ReplayError> {
    fail::fail_point!("replay-diverge", |_| Some(ReplayError::Stop(
        ReplayStop::Diverged(lockstep_vmm::replay::replayer::Divergence {
            exit_index,
            seq,
            what: "fail point replay-diverge".into(),
        })
    )));
    let _ = (exit_index, seq);
    None
}

impl SyncIo for BackupIo {
    type Error = BackupError;

    fn sync(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
    ) -> Result<SyncOutcome, BackupError> {
        fail::fail_point!("replay-slow");
        let (replay, io) = match &mut self.serving {
            Serving::Live(live) => return Ok(live.sync(mem, req)?),
            Serving::Replay(replay, io) => (replay, io),
            Serving::Switching => return Err(BackupError::HandOverFailed),
        };
        let synced = match replay_fault(req.exit_index, replay.cursor.consumed_seq()) {
            Some(e) => Err(e),
            None => replay.sync(mem, req),
        };
        match synced {
            Ok(outcome) => {
                let seq = replay.cursor.consumed_seq();
                self.note_replayed(req.exit_index, seq);
                Ok(outcome)
            }
            Err(ReplayError::Stop(ReplayStop::LogEnded { .. }))
                if FtShared::flag(&self.ft.go_live) =>
            {
                self.go_live(mem, req)
            }
            Err(e) => {
                if let ReplayError::Stop(ReplayStop::Diverged(d)) = &e {
                    say_diverged(&self.ft, io, d.exit_index);
                }
                Err(e.into())
            }
        }
    }

    fn mmio_read(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool {
        match &mut self.serving {
            Serving::Replay(r, _) => r.mmio_read(mem, addr, data),
            Serving::Live(l) => l.mmio_read(mem, addr, data),
            Serving::Switching => false,
        }
    }

    fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        match &mut self.serving {
            Serving::Replay(r, _) => r.mmio_write(mem, addr, data),
            Serving::Live(l) => l.mmio_write(mem, addr, data),
            Serving::Switching => false,
        }
    }

    fn after_sync_exit(
        &mut self,
        exit_index: u64,
        digester: &mut dyn Digester,
    ) -> Result<(), BackupError> {
        match &mut self.serving {
            Serving::Replay(r, _) => Ok(r.after_sync_exit(exit_index, digester)?),
            Serving::Live(l) => Ok(l.after_sync_exit(exit_index, digester)?),
            Serving::Switching => Ok(()),
        }
    }

    fn at_boundary(
        &mut self,
        exit_index: u64,
        mem: &GuestMemoryMmap,
        vcpu: &dyn VcpuAccess,
    ) -> Result<(), BackupError> {
        match &mut self.serving {
            Serving::Live(l) => Ok(l.at_boundary(exit_index, mem, vcpu)?),
            _ => Ok(()),
        }
    }

    fn finish(
        &mut self,
        exit_index: u64,
        end: &RunEndKind,
        digester: &mut dyn Digester,
    ) -> Result<(), BackupError> {
        match &mut self.serving {
            Serving::Replay(r, _) => Ok(r.finish(exit_index, end, digester)?),
            Serving::Live(l) => Ok(l.finish(exit_index, end, digester)?),
            Serving::Switching => Ok(()),
        }
    }
}
