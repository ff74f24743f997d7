//! The replaying side: the same guest, the same device models, but every
//! input comes from the log at the logged exit index, and every external
//! effect is suppressed (a backup's outputs are dropped). Everything the
//! replay can observe is compared with the log; the first mismatch stops it
//! with a report of where and what.

use vm_memory::GuestMemoryMmap;

use blkio::RequestOp;
use lockstep_guest_abi as abi;
use logchan::{ExitKind, OutputKind, RunningHash};

use super::backup_disk::{BackupDisk, BackupReadError};
use super::cursor::{LogCursor, LogEnd, Logged, LoggedEntry};
use super::live_parts::{LiveParts, RecentFrames};
use crate::devices::virtio::{Devices, Outputs};
use crate::machine::digest::REG_NAMES;
use crate::machine::{Digester, RunEndKind, SyncIo, SyncOutcome, SyncRequest};

/// Event bits the device models determine (the others come from the host).
const DEVICE_EVENTS: u32 = abi::EV_NET_RX | abi::EV_NET_TX | abi::EV_BLK;

/// The replay and the log disagree.
#[derive(Debug, thiserror::Error)]
#[error("replay diverged at exit {exit_index} (log seq {seq}): {what}")]
pub struct Divergence {
    pub exit_index: u64,
    pub seq: u64,
    pub what: String,
}

/// Why a replay stopped before the guest did.
#[derive(Debug, thiserror::Error)]
pub enum ReplayStop {
    #[error(transparent)]
    Diverged(#[from] Divergence),
    #[error("replay reached the end of the log at exit {exit_index}: {end}")]
    LogEnded { exit_index: u64, end: LogEnd },
    #[error("the recording ended at exit {exit_index} ({reason:?}, status {status})")]
    Recorded {
        exit_index: u64,
        reason: logchan::EndReason,
        status: i32,
    },
}

/// Why a replay cannot serve a sync call: where it stopped (typed, for the
/// caller to match: a backup goes live at [`ReplayStop::LogEnded`]), or a
/// failure of the disk it reads itself.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Stop(#[from] ReplayStop),
    #[error(transparent)]
    BackupRead(#[from] BackupReadError),
    #[error(
        "this log carries only hashes of disk reads: replay it with --backup-reads --disk IMAGE"
    )]
    ReadsNotLogged,
}

impl ReplayError {
    /// The stop, if the log (not a failure) ended the replay.
    pub fn stop(&self) -> Option<&ReplayStop> {
        match self {
            ReplayError::Stop(s) => Some(s),
            _ => None,
        }
    }
}

/// Counters for the replay report.
#[derive(Clone, Debug, Default)]
pub struct ReplayStats {
    pub entries: u64,
    pub syncs: u64,
    pub frames: u64,
    pub disk_completions: u64,
    pub outputs_checked: u64,
    pub digests_checked: u64,
    pub mem_hashes_checked: u64,
    pub backup_reads: u64,
}

/// A test-only perturbation: adds `delta_ns` to the time returned at the
/// sync exit `at_exit` (to show that divergence is caught).
#[derive(Clone, Copy, Debug)]
pub struct Perturb {
    pub at_exit: u64,
    pub delta_ns: u64,
}

/// Serves sync calls from a log.
pub struct ReplayIo {
    pub devices: Devices,
    pub cursor: LogCursor,
    outputs: RunningHash,
    /// Outputs of the exit being replayed not yet matched in the log.
    taken: Outputs,
    /// Frames replayed lately, with their output-rule tags.
    recent: RecentFrames,
    /// Disk requests taken whose completions the log has not had yet, in
    /// the order the guest issued them.
    inflight: Vec<blkio::Request>,
    /// The disk, when the replay executes disk reads itself.
    pub disk: Option<BackupDisk>,
    pub stats: ReplayStats,
    pub perturb: Option<Perturb>,
    /// The last time value handed to the guest (a backup going live
    /// continues from it).
    pub last_now_ns: u64,
    /// The recording's End, once reached.
    pub recorded_end: Option<(u64, logchan::EndReason, i32)>,
    /// Event bits of an exit the log ended in, for whoever finishes it.
    carried_events: u32,
}

fn diverged(exit_index: u64, seq: u64, what: String) -> ReplayError {
    ReplayError::Stop(ReplayStop::Diverged(Divergence {
        exit_index,
        seq,
        what,
    }))
}

impl ReplayIo {
    /// `disk`: set when the replay executes disk reads itself.
    pub fn new(devices: Devices, cursor: LogCursor, disk: Option<BackupDisk>) -> Self {
        ReplayIo {
            devices,
            cursor,
            outputs: RunningHash::new(),
            taken: Outputs::default(),
            recent: RecentFrames::default(),
            inflight: Vec::new(),
            disk,
            stats: ReplayStats::default(),
            perturb: None,
            last_now_ns: 0,
            recorded_end: None,
            carried_events: 0,
        }
    }

    pub fn output_hash(&self) -> u64 {
        self.outputs.value()
    }

    /// A disk request the guest issued: checked against the log (writes),
    /// executed on the backup's disk if it reads for itself.
    fn replay_request(&mut self, exit: u64, r: &blkio::Request) -> Result<(), ReplayError> {
        match &r.op {
            RequestOp::Write { sector, data } => {
                self.check_output(exit, OutputKind::DiskWrite, data.as_slice())?;
                if let Some(disk) = self.disk.as_mut() {
                    disk.write_issued(*sector, data.as_slice())?;
                }
            }
            RequestOp::Read { sector, len } => {
                if let Some(disk) = self.disk.as_mut() {
                    disk.read_issued(r.id, *sector, *len)?;
                }
            }
            RequestOp::Flush => {}
        }
        Ok(())
    }

    /// The sync exit's entries from the log; `events` collects the exit's
    /// device event bits.
    fn replay_sync(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
        events: &mut u32,
    ) -> Result<SyncOutcome, ReplayError> {
        let exit = req.exit_index;
        *events |= self.devices.take_outputs(mem, &mut self.taken);
        // Outputs in the recorder's order: frames, then disk writes. Each
        // stays in `taken` until the log has matched it, so a backup going
        // live at a log that ends mid-exit still has the rest to send.
        while !self.taken.frames.is_empty() {
            let frame = self.taken.frames.remove(0);
            match self.check_output(exit, OutputKind::NetFrame, &frame) {
                Ok(seq) => self.recent.push(seq, frame),
                Err(e) => {
                    self.taken.frames.insert(0, frame);
                    return Err(e);
                }
            }
        }
        while !self.taken.requests.is_empty() {
            let r = self.taken.requests.remove(0);
            if let Err(e) = self.replay_request(exit, &r) {
                self.taken.requests.insert(0, r);
                return Err(e);
            }
            self.inflight.push(r);
        }
        loop {
            let Some(entry) = self.next_for(exit)? else {
                return Err(diverged(
                    exit,
                    self.next_seq(),
                    "the log has no sync result for this exit".into(),
                ));
            };
            if entry.exit_kind != ExitKind::SyncPort {
                return Err(diverged(
                    exit,
                    entry.seq,
                    format!(
                        "the log was recorded at a {:?} exit, the replay is at a sync exit",
                        entry.exit_kind
                    ),
                ));
            }
            match entry.entry {
                Logged::NetRx(frame) => {
                    self.stats.frames += 1;
                    // A delivery the primary attempted and the guest's RX
                    // chain refused fails here the same way (both sides
                    // consume the same broken chain).
                    if let Ok(false) = self.devices.deliver_frame(mem, &frame) {
                        return Err(diverged(
                            exit,
                            entry.seq,
                            "a logged frame could not be delivered: the guest has no RX buffer"
                                .into(),
                        ));
                    }
                }
                Logged::BlkDone(c) => {
                    self.stats.disk_completions += 1;
                    self.inflight.retain(|r| r.id != c.id);
                    let c = match (self.disk.as_mut(), &c.data) {
                        (Some(disk), Some(logged)) if c.status == blkio::STATUS_OK => {
                            // The log has the primary's data, or only its hash.
                            let want = match <[u8; 8]>::try_from(logged.as_slice()) {
                                Ok(h) => u64::from_le_bytes(h),
                                Err(_) => logchan::content_hash(logged.as_slice()),
                            };
                            self.stats.backup_reads += 1;
                            match disk.complete_read(c.id, want)? {
                                Some(ours) => ours,
                                None => c,
                            }
                        }
                        (Some(disk), _) => {
                            disk.forget(c.id);
                            c
                        }
                        (None, Some(logged)) if logged.len() == 8 => {
                            return Err(ReplayError::ReadsNotLogged);
                        }
                        (None, _) => c,
                    };
                    // The primary only warned when the guest's request was
                    // gone (a device reset with requests in flight); the
                    // replay meets the same and does the same.
                    if let Err(e) = self.devices.complete_disk(mem, &c) {
                        tracing::debug!(exit, "disk completion {} not applied: {e}", c.id);
                    }
                }
                Logged::Sync {
                    flags,
                    events: logged,
                    now_ns,
                    deadline_ns,
                } => {
                    if flags != req.flags || deadline_ns != req.deadline_ns {
                        return Err(diverged(
                            exit,
                            entry.seq,
                            format!(
                                "the guest's sync call has flags {:#x} and deadline {}, the log has flags {flags:#x} and deadline {deadline_ns}",
                                req.flags, req.deadline_ns
                            ),
                        ));
                    }
                    *events |= self.devices.input_events();
                    if *events & DEVICE_EVENTS != logged & DEVICE_EVENTS {
                        return Err(diverged(
                            exit,
                            entry.seq,
                            format!("device events {:#x}, the log has {logged:#x}", *events),
                        ));
                    }
                    let mut now_ns = now_ns;
                    if let Some(p) = self.perturb.filter(|p| p.at_exit == exit) {
                        tracing::warn!(
                            exit,
                            "test switch: perturbing the time by {} ns",
                            p.delta_ns
                        );
                        now_ns += p.delta_ns;
                    }
                    self.last_now_ns = now_ns;
                    return Ok(SyncOutcome {
                        events: logged,
                        now_ns,
                        waited_ns: 0,
                    });
                }
                Logged::KeepAlive => {}
                Logged::End { reason, status } => {
                    self.recorded_end = Some((entry.exit_index, reason, status));
                    return Err(ReplayStop::Recorded {
                        exit_index: entry.exit_index,
                        reason,
                        status,
                    }
                    .into());
                }
                other => {
                    return Err(diverged(
                        exit,
                        entry.seq,
                        format!("unexpected {other:?} inside a sync exit"),
                    ));
                }
            }
        }
    }

    /// Hands the replay's state to a backup going live.
    pub fn into_live_parts(self) -> LiveParts {
        LiveParts {
            devices: self.devices,
            last_now_ns: self.last_now_ns,
            current: self.taken,
            events: self.carried_events,
            recent: self.recent,
            inflight: self.inflight,
        }
    }

    /// The seq of the next entry, for a divergence report (0 at the end).
    fn next_seq(&mut self) -> u64 {
        self.cursor.peek().map_or(0, |e| e.seq)
    }

    /// The next entry, which must belong to `exit`; `None` if the log has
    /// moved on to a later exit.
    fn next_for(&mut self, exit: u64) -> Result<Option<LoggedEntry>, ReplayError> {
        let entry = match self.cursor.peek() {
            Ok(e) => e,
            Err(end) => {
                return Err(ReplayStop::LogEnded {
                    exit_index: exit,
                    end,
                }
                .into());
            }
        };
        if entry.exit_index > exit {
            return Ok(None);
        }
        if entry.exit_index < exit {
            let what = format!(
                "the log has {:?} for exit {}, which the replay passed without using it",
                entry.entry, entry.exit_index
            );
            return Err(diverged(exit, entry.seq, what));
        }
        self.stats.entries += 1;
        Ok(self.cursor.pop())
    }

    /// Compares an output with the next log entry; returns the entry's seq
    /// (the output's tag under the output rule).
    fn check_output(
        &mut self,
        exit: u64,
        what: OutputKind,
        bytes: &[u8],
    ) -> Result<u64, ReplayError> {
        let hash = logchan::output_hash(bytes);
        let entry = self.next_for(exit)?;
        self.outputs.push(hash);
        self.stats.outputs_checked += 1;
        match entry {
            Some(LoggedEntry {
                seq,
                entry:
                    Logged::Output {
                        what: w,
                        len,
                        hash: h,
                    },
                ..
            }) if w == what && len as usize == bytes.len() && h == hash => Ok(seq),
            Some(e) => Err(diverged(
                exit,
                e.seq,
                format!(
                    "the guest produced a {what:?} of {} bytes (hash {hash:#x}); the log has {:?}",
                    bytes.len(),
                    e.entry
                ),
            )),
            None => Err(diverged(
                exit,
                self.next_seq(),
                format!(
                    "the guest produced a {what:?} of {} bytes that the primary did not",
                    bytes.len()
                ),
            )),
        }
    }

    /// Checks the digest the log may have for the exit just handled.
    pub fn check_digest(
        &mut self,
        exit: u64,
        digester: &mut dyn Digester,
    ) -> Result<(), ReplayError> {
        match self.cursor.peek() {
            Ok(e) if e.exit_index == exit && matches!(e.entry, Logged::Digest { .. }) => {}
            _ => return Ok(()),
        }
        let Some(entry) = self.cursor.pop() else {
            return Ok(());
        };
        self.stats.entries += 1;
        let Logged::Digest {
            regs,
            output_hash,
            mem_hash,
        } = entry.entry
        else {
            return Ok(());
        };
        self.stats.digests_checked += 1;
        let ours = digester.regs();
        if let Some(i) = (0..regs.len()).find(|i| regs[*i] != ours[*i]) {
            return Err(diverged(
                exit,
                entry.seq,
                format!(
                    "register {} is {:#x}, the log has {:#x}",
                    REG_NAMES[i], ours[i], regs[i]
                ),
            ));
        }
        if output_hash != self.outputs.value() {
            return Err(diverged(
                exit,
                entry.seq,
                format!(
                    "running output hash is {:#x}, the log has {output_hash:#x}",
                    self.outputs.value()
                ),
            ));
        }
        if mem_hash != 0 {
            self.stats.mem_hashes_checked += 1;
            let ours = digester.mem_hash();
            if ours != mem_hash {
                return Err(diverged(
                    exit,
                    entry.seq,
                    format!("guest memory hashes to {ours:#x}, the log has {mem_hash:#x}"),
                ));
            }
        }
        Ok(())
    }

    /// At the end of the replay: the recording's End entry, if it is next.
    pub fn take_end(&mut self) -> Option<(u64, logchan::EndReason, i32)> {
        if let Ok(LoggedEntry {
            entry: Logged::End { .. },
            ..
        }) = self.cursor.peek()
            && let Some(LoggedEntry {
                exit_index,
                entry: Logged::End { reason, status },
                ..
            }) = self.cursor.pop()
        {
            self.recorded_end = Some((exit_index, reason, status));
        }
        self.recorded_end
    }
}

impl SyncIo for ReplayIo {
    type Error = ReplayError;

    fn sync(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &SyncRequest,
    ) -> Result<SyncOutcome, ReplayError> {
        self.stats.syncs += 1;
        // Event bits this exit collected before the log ran out stay for
        // whoever finishes the exit (a backup going live mid-exit).
        let mut events = std::mem::take(&mut self.carried_events);
        let outcome = self.replay_sync(mem, req, &mut events);
        if outcome.is_err() {
            self.carried_events = events;
        }
        outcome
    }
    fn mmio_read(&mut self, _mem: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool {
        self.devices.mmio_read(addr, data)
    }

    fn mmio_write(&mut self, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        self.devices.mmio_write(mem, addr, data)
    }

    fn after_sync_exit(
        &mut self,
        exit_index: u64,
        digester: &mut dyn Digester,
    ) -> Result<(), ReplayError> {
        self.check_digest(exit_index, digester)
    }

    /// The guest stopped: the recording's final digest (with the memory
    /// hash) and its End entry must be next, and must agree. A stop by the
    /// host (a signal, or a backup's supervisor) ends the replay where it
    /// is: nothing of the log is due there, so nothing is checked.
    fn finish(
        &mut self,
        exit_index: u64,
        end: &RunEndKind,
        digester: &mut dyn Digester,
    ) -> Result<(), ReplayError> {
        if *end == RunEndKind::HostStop {
            return Ok(());
        }
        self.check_digest(exit_index, digester)?;
        let seq = self.next_seq();
        match self.take_end() {
            Some((at, logchan::EndReason::GuestExit, status))
                if at == exit_index && *end == RunEndKind::GuestExit(status as u32) =>
            {
                Ok(())
            }
            Some((at, reason, status)) => Err(diverged(
                exit_index,
                seq,
                format!(
                    "the replay ended with {end:?}; the recording ended at exit {at} with {reason:?} (status {status})"
                ),
            )),
            None => Err(diverged(
                exit_index,
                seq,
                format!("the replay ended with {end:?}, but the log goes on"),
            )),
        }
    }
}
