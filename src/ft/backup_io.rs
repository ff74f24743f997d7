//! The backup's side of the sync call: a replay of the primary's stream
//! until the backup goes live, then the live devices. Going live happens at
//! a sync exit, after every received entry has been applied (DESIGN.md §1):
//! outputs become real, disk requests whose completions never reached the
//! log are reissued, frames the primary may not have sent are sent again,
//! and a gratuitous ARP moves the guest's address to this host.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::dataplane::io_thread::{IoChannels, ToIo};
use crate::dataplane::live::LiveIo;
use crate::dataplane::shared::VmShared;
use crate::devices::clock::VirtualClock;
use crate::machine::{RunEndKind, SyncError, SyncIo, SyncOutcome, SyncRequest};
use crate::replay::digest::Digester;
use crate::replay::replayer::{ReplayIo, ReplayStop};

use super::shared::FtShared;
use crate::status::{Role, StatusCounters};

/// Frames taken this recently before go-live are sent again even if their
/// tags were acknowledged (the primary may have died before sending them).
const RESEND_WINDOW: Duration = Duration::from_millis(50);

/// What the backup knows about the guest's address, for the gratuitous ARP.
#[derive(Clone, Copy, Debug)]
pub struct Announce {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

pub struct BackupIo {
    replay: Option<ReplayIo>,
    live: Option<LiveIo>,
    shared: Arc<VmShared>,
    ft: Arc<FtShared>,
    io: Option<IoChannels>,
    announce: Option<Announce>,
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
            replay: Some(replay),
            live: None,
            shared,
            ft,
            io: Some(io),
            announce,
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    pub fn shared(&self) -> &Arc<VmShared> {
        &self.shared
    }

    /// The I/O thread's rings, wherever they are now.
    pub fn channels_mut(&mut self) -> Option<&mut IoChannels> {
        match self.live.as_mut() {
            Some(l) => l.io.as_mut(),
            None => self.io.as_mut(),
        }
    }

    pub fn replay(&self) -> Option<&ReplayIo> {
        self.replay.as_ref()
    }

    pub fn live(&self) -> Option<&LiveIo> {
        self.live.as_ref()
    }

    /// Whichever serves the guest now: the live devices once live, the
    /// replay before.
    fn serving(&mut self) -> Option<&mut dyn SyncIo> {
        match (self.live.as_mut(), self.replay.as_mut()) {
            (Some(l), _) => Some(l),
            (None, Some(r)) => Some(r),
            (None, None) => None,
        }
    }

    /// Takes over at this sync exit; `req` is finished live.
    fn go_live(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
    ) -> Result<SyncOutcome, SyncError> {
        let Some(replay) = self.replay.take() else {
            return Err("go-live without a replay".into());
        };
        let last_ack = FtShared::load(&self.ft.ack_sent);
        let parts = replay.into_live_parts();
        let Some(mut io) = self.io.take() else {
            return Err("go-live without the I/O thread".into());
        };
        // From here the I/O thread delivers received frames and lets
        // outputs out; the guest's address moves to this host first.
        io.send(ToIo::GoLive);
        if let Some(a) = self.announce {
            io.send(ToIo::Tx {
                frame: netio::gratuitous_arp(a.mac, a.ip),
                seq: 0,
            });
        }
        let resend = parts.recent.unsent(last_ack, RESEND_WINDOW);
        let reissued = parts.inflight.len();
        tracing::info!(
            exit = req.exit_index,
            "going live: sending {} frames again, reissuing {reissued} disk requests",
            resend.len() + parts.current.frames.len()
        );
        let mut live = LiveIo::new(self.shared.clone(), parts.devices, Some(io));
        live.clock = VirtualClock::starting_at(parts.last_now_ns);
        let mut frames = resend;
        frames.extend(parts.current.frames);
        let mut requests = parts.inflight;
        requests.extend(parts.current.requests);
        live.queue_outputs(frames, requests);
        self.shared.status.set_role(Role::PrimaryAlone);
        let live = self.live.insert(live);
        live.sync(mem, req)
    }
}

impl SyncIo for BackupIo {
    fn sync(&mut self, mem: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, SyncError> {
        if let Some(live) = self.live.as_mut() {
            return live.sync(mem, req);
        }
        let Some(replay) = self.replay.as_mut() else {
            return Err("no replay".into());
        };
        match replay.sync(mem, req) {
            Ok(outcome) => {
                let seq = replay.cursor.consumed_seq();
                FtShared::raise(&self.ft.replayed_exit, req.exit_index);
                FtShared::raise(&self.ft.replayed_seq, seq);
                let status = &self.shared.status;
                status.note_sync_call(req.exit_index);
                StatusCounters::set(&status.replayed_seq, seq);
                StatusCounters::set(&status.replayed_exit, req.exit_index);
                Ok(outcome)
            }
            Err(e) => {
                let ended = matches!(
                    e.downcast_ref::<ReplayStop>(),
                    Some(ReplayStop::LogEnded { .. })
                );
                if ended && FtShared::flag(&self.ft.go_live) {
                    self.go_live(mem, req)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn mmio_read(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool {
        self.serving().is_some_and(|s| s.mmio_read(mem, addr, data))
    }

    fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        self.serving()
            .is_some_and(|s| s.mmio_write(mem, addr, data))
    }

    fn after_sync_exit(
        &mut self,
        exit_index: u64,
        digester: &mut dyn Digester,
    ) -> Result<(), SyncError> {
        self.serving()
            .map_or(Ok(()), |s| s.after_sync_exit(exit_index, digester))
    }

    fn finish(
        &mut self,
        exit_index: u64,
        end: &RunEndKind,
        digester: &mut dyn Digester,
    ) -> Result<(), SyncError> {
        self.serving()
            .map_or(Ok(()), |s| s.finish(exit_index, end, digester))
    }
}
