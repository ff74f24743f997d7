//! The live sync call: outputs go to the I/O thread, inputs come from it,
//! time from the host clock. With a recorder attached, every input it
//! applies and every output it takes is logged at the current exit index,
//! and each output travels to the I/O thread with the sequence number of
//! its log entry, from which the output rule derives its gate tag.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use lockstep_guest_abi as abi;

use lockstep_status::StatusCounters;
use logchan::ProducerError;

use crate::devices::clock::VirtualClock;
use crate::devices::virtio::{Devices, Outputs};
use crate::machine::{Digester, RunEndKind, SyncIo, SyncOutcome, SyncRequest};
use crate::replay::recorder::Recorder;

use crate::snapshot::vcpu::VcpuAccess;

use super::io_thread::{FromIo, IoChannels, ToIo};
use super::join_point::JoinCtl;
use super::pace::{Pacer, SyncPoint};
use super::shared::{VmShared, wait_until};

/// How long a waiting vCPU spins before it parks.
const WAIT_SPIN: Duration = Duration::from_micros(20);
/// Frames kept for a guest that has no RX buffer posted; beyond this the
/// oldest are dropped, as a NIC drops when its ring is full.
const RX_BACKLOG_MAX: usize = 4096;
/// How long a sync exit waits for in-flight disk requests when a live
/// clone wants a join point (a clone carries none in flight).
const QUIESCE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a live sync call cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("the I/O thread is gone")]
    IoThreadGone,
    #[error("a disk request without a disk")]
    NoDisk,
    #[error("writing the log")]
    Log(#[from] ProducerError),
}

/// Serves sync calls from live devices.
pub struct LiveIo {
    pub clock: VirtualClock,
    pub shared: Arc<VmShared>,
    pub devices: Devices,
    pub io: Option<IoChannels>,
    pub recorder: Option<Recorder>,
    /// Set when the log streams to a peer through the I/O thread (an FT
    /// primary): the I/O thread is woken at each publish, and an idle guest
    /// produces a keep-alive entry this often.
    pub stream_log: Option<Duration>,
    rx_backlog: VecDeque<Vec<u8>>,
    outputs: Outputs,
    /// Event bits to return with the next sync call (an exit begun by a
    /// replay that ended in it).
    pending_events: u32,
    /// Frames dropped because the guest had no RX buffers for too long.
    pub rx_dropped: u64,
    /// Paces the guest after each sync exit (an FT primary's throttle).
    pub pacer: Option<Box<dyn Pacer>>,
    /// When the run began, and the time since then the guest did not
    /// execute (idle waits, the pacer's holds): its execution time is the
    /// rest, less the log's full-buffer stalls.
    started: Instant,
    not_running_ns: u64,
    /// A live clone in progress (docs/join.md): its join point.
    pub join: Option<Arc<JoinCtl>>,
}

impl LiveIo {
    pub fn new(shared: Arc<VmShared>, devices: Devices, io: Option<IoChannels>) -> Self {
        LiveIo {
            clock: VirtualClock::new(),
            shared,
            devices,
            io,
            recorder: None,
            stream_log: None,
            rx_backlog: VecDeque::new(),
            outputs: Outputs::default(),
            pending_events: 0,
            rx_dropped: 0,
            pacer: None,
            started: Instant::now(),
            not_running_ns: 0,
            join: None,
        }
    }

    /// Outputs to send at the next sync exit, before the guest's own (a
    /// backup going live: frames the dead primary may not have sent, disk
    /// requests whose completions it never logged).
    pub fn queue_outputs(&mut self, frames: Vec<Vec<u8>>, requests: Vec<blkio::Request>) {
        self.outputs.frames.splice(0..0, frames);
        self.outputs.requests.splice(0..0, requests);
    }

    /// Event bits the next sync call returns besides its own (a backup
    /// going live in the middle of an exit its replay began).
    pub fn queue_events(&mut self, events: u32) {
        self.pending_events |= events;
    }

    /// The log ends here when the host says so (an FT primary that won the
    /// arbiter against its lost backup continues alone).
    fn check_log_stopped(&mut self) {
        if self.recorder.is_some() && self.shared.log_stopped() {
            tracing::info!("continuing without a backup: no more log, no output waits");
            self.recorder = None;
        }
    }

    /// An idle primary's heartbeat in the log.
    fn keep_alive(&mut self, exit_index: u64) -> Result<(), LiveError> {
        if let Some(r) = self.recorder.as_mut() {
            r.keep_alive(exit_index)?;
            if let Some(io) = self.io.as_ref() {
                io.waker.wake();
            }
        }
        Ok(())
    }

    /// Hands this exit's outputs to the I/O thread, each with the sequence
    /// number of the log entry that recorded it.
    fn send_outputs(&mut self, exit_index: u64) -> Result<(), LiveError> {
        let mut sent = false;
        for frame in self.outputs.frames.drain(..) {
            let seq = match self.recorder.as_mut() {
                Some(r) => r.output_frame(exit_index, &frame)?,
                None => 0,
            };
            if let Some(io) = self.io.as_mut() {
                if !io.send(ToIo::Tx { frame, seq }) {
                    return Err(LiveError::IoThreadGone);
                }
                sent = true;
            }
        }
        for req in self.outputs.requests.drain(..) {
            let seq = match self.recorder.as_mut() {
                Some(r) => r.output_request(exit_index, &req)?,
                None => 0,
            };
            let io = self.io.as_mut().ok_or(LiveError::NoDisk)?;
            if !io.send(ToIo::Disk { req, seq }) {
                return Err(LiveError::IoThreadGone);
            }
            sent = true;
        }
        if sent && let Some(io) = self.io.as_ref() {
            io.waker.wake();
        }
        Ok(())
    }

    /// Applies every input that is ready; returns the event bits.
    fn apply_inputs(&mut self, mem: &GuestMemoryMmap, exit_index: u64) -> Result<u32, LiveError> {
        if let Some(io) = self.io.as_mut() {
            while let Ok(msg) = io.from_io.pop() {
                match msg {
                    FromIo::Rx(frame) => {
                        if self.rx_backlog.len() >= RX_BACKLOG_MAX {
                            self.rx_backlog.pop_front();
                            self.rx_dropped += 1;
                        }
                        self.rx_backlog.push_back(frame);
                    }
                    FromIo::Disk(c) => {
                        if let Some(r) = self.recorder.as_mut() {
                            r.disk_done(exit_index, &c)?;
                        }
                        if let Err(e) = self.devices.complete_disk(mem, &c) {
                            tracing::warn!("disk completion {} not applied: {e}", c.id);
                        }
                    }
                }
            }
        }
        while let Some(frame) = self.rx_backlog.front() {
            match self.devices.deliver_frame(mem, frame) {
                Ok(true) => {
                    if let Some(r) = self.recorder.as_mut() {
                        r.net_rx(exit_index, frame)?;
                    }
                    self.rx_backlog.pop_front();
                }
                Ok(false) => break,
                Err(e) => {
                    // The guest's RX chain was malformed and is consumed
                    // anyway: logged, so a replay makes the same attempt.
                    tracing::debug!("frame not delivered: {e}");
                    if let Some(r) = self.recorder.as_mut() {
                        r.net_rx(exit_index, frame)?;
                    }
                    self.rx_backlog.pop_front();
                    self.rx_dropped += 1;
                }
            }
        }
        Ok(self.devices.input_events())
    }

    /// Asks the pacer how long to hold the guest, and holds it (a stop
    /// request ends the hold at once). `log`: the last seq, the bytes
    /// published and the full-buffer stall time so far.
    fn pace(&mut self, exit_index: u64, (log_seq, log_bytes, stall_ns): (u64, u64, u64)) {
        let Some(pacer) = self.pacer.as_mut() else {
            return;
        };
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let exec_ns = elapsed
            .saturating_sub(self.not_running_ns)
            .saturating_sub(stall_ns);
        let hold = pacer.after_sync(SyncPoint {
            exit_index,
            exec_ns,
            log_seq,
            log_bytes,
        });
        if hold.is_zero() {
            return;
        }
        let begun = Instant::now();
        let shared = &self.shared;
        // No spin: the hold is there to give the CPU away.
        wait_until(begun + hold, Duration::ZERO, || {
            shared.stop_requested() || shared.forced()
        });
        let held = u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.not_running_ns = self.not_running_ns.saturating_add(held);
    }

    /// A live clone wants a join point: waits (bounded) until no disk
    /// request is in flight, applying completions as they come.
    fn quiesce_disk(&mut self, mem: &GuestMemoryMmap, exit_index: u64) -> Result<u32, LiveError> {
        let in_flight = |d: &Devices| d.blk.as_ref().map_or(0, |b| b.device.in_flight());
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        let mut events = 0;
        while in_flight(&self.devices) > 0 && Instant::now() < deadline {
            let from_io = self.io.as_ref().map(|io| &io.from_io);
            wait_until(deadline, WAIT_SPIN, || {
                from_io.is_some_and(|c| !c.is_empty())
            });
            events |= self.apply_inputs(mem, exit_index)?;
        }
        Ok(events)
    }

    fn input_ready(&self) -> bool {
        self.io.as_ref().is_some_and(|io| !io.from_io.is_empty())
    }
}

impl SyncIo for LiveIo {
    type Error = LiveError;

    fn sync(&mut self, mem: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, LiveError> {
        self.check_log_stopped();
        self.shared.status.note_sync_call(req.exit_index);
        let mut events = self.devices.take_outputs(mem, &mut self.outputs)
            | std::mem::take(&mut self.pending_events);
        let had_outputs = !self.outputs.frames.is_empty() || !self.outputs.requests.is_empty();
        self.send_outputs(req.exit_index)?;
        events |= self.apply_inputs(mem, req.exit_index)?;
        if let Some(join) = self.join.as_ref() {
            if join.take_retire()
                && let Some(io) = self.io.as_mut()
            {
                io.send(ToIo::RetirePlane);
                io.waker.wake();
            }
            if join.due() {
                events |= self.quiesce_disk(mem, req.exit_index)?;
            }
        }
        let mut waited_ns = 0;
        if req.wait() && events == 0 && !self.shared.stop_requested() {
            let started = Instant::now();
            let host_deadline = started + self.clock.until(req.deadline_ns);
            // An FT primary wakes now and then while the guest idles, so
            // the backup keeps hearing from it (keep-alive entries).
            let keepalive = self.stream_log.filter(|_| self.recorder.is_some());
            // This exit's outputs wait for the backup's ack of the log up
            // to them: the log goes out now, not at the first keep-alive.
            if keepalive.is_some() && had_outputs {
                self.keep_alive(req.exit_index)?;
            }
            loop {
                let until = match keepalive {
                    Some(every) => host_deadline.min(Instant::now() + every),
                    None => host_deadline,
                };
                let shared = self.shared.clone();
                let from_io = self.io.as_ref().map(|io| &io.from_io);
                let join = self.join.clone();
                let ready = wait_until(until, WAIT_SPIN, || {
                    shared.stop_requested()
                        || shared.forced()
                        || join.as_ref().is_some_and(|j| j.due())
                        || from_io.is_some_and(|c| !c.is_empty())
                });
                if ready || Instant::now() >= host_deadline || keepalive.is_none() {
                    break;
                }
                self.keep_alive(req.exit_index)?;
            }
            waited_ns = started.elapsed().as_nanos() as u64;
            self.not_running_ns = self.not_running_ns.saturating_add(waited_ns);
            if self.input_ready() {
                events |= self.apply_inputs(mem, req.exit_index)?;
            }
        }
        let now_ns = self.clock.now();
        if req.wait() && now_ns >= req.deadline_ns {
            events |= abi::EV_TIMER;
        }
        if self.shared.stop_requested() {
            events |= abi::EV_STOP;
        }
        if let Some(r) = self.recorder.as_mut() {
            r.sync(req.exit_index, req.flags, req.deadline_ns, events, now_ns)?;
        }
        Ok(SyncOutcome {
            events,
            now_ns,
            waited_ns,
        })
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
    ) -> Result<(), LiveError> {
        match self.recorder.as_mut() {
            Some(r) => {
                r.after_sync_exit(exit_index, digester)?;
                let status = &self.shared.status;
                StatusCounters::set(&status.log_seq, r.seq());
                let stats = r.log_stats();
                StatusCounters::set(&status.log_full_stalls, stats.stalls);
                StatusCounters::set(&status.log_stall_ns, stats.stall_ns);
                // Published less what the I/O thread reports sent (for
                // people: the two counters are read at different moments).
                let sent = StatusCounters::get(&status.log_bytes);
                StatusCounters::set(&status.log_buffer_bytes, stats.bytes.saturating_sub(sent));
                // The log goes out at once: the backup's ack is what
                // releases this exit's outputs.
                if self.stream_log.is_some()
                    && let Some(io) = self.io.as_ref()
                {
                    io.waker.wake();
                }
                let log = (r.seq(), stats.bytes, stats.stall_ns);
                self.pace(exit_index, log);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn at_boundary(
        &mut self,
        exit_index: u64,
        _mem: &GuestMemoryMmap,
        vcpu: &dyn VcpuAccess,
    ) -> Result<(), LiveError> {
        let Some(join) = self.join.as_ref() else {
            return Ok(());
        };
        let (hash, next_seq) = self
            .recorder
            .as_ref()
            .map_or((0, 1), |r| (r.output_hash(), r.seq() + 1));
        let Some(switch) = join.at_boundary(exit_index, vcpu, &self.devices, hash, next_seq) else {
            return Ok(());
        };
        if switch.keepalive.is_some() {
            self.stream_log = switch.keepalive;
        }
        // In the vCPU thread's order: every output after this point
        // reaches the I/O thread behind its new plane.
        if let Some(plane) = switch.plane {
            let io = self.io.as_mut().ok_or(LiveError::IoThreadGone)?;
            if !io.send(ToIo::Plane(plane)) {
                return Err(LiveError::IoThreadGone);
            }
            io.waker.wake();
        }
        if let Some(recorder) = switch.recorder {
            // A primary that ran alone logs again, from the join point.
            self.shared
                .stop_log
                .store(false, std::sync::atomic::Ordering::Release);
            self.recorder = Some(recorder);
        }
        Ok(())
    }

    fn finish(
        &mut self,
        exit_index: u64,
        end: &RunEndKind,
        digester: &mut dyn Digester,
    ) -> Result<(), LiveError> {
        let Some(recorder) = self.recorder.take() else {
            return Ok(());
        };
        let (reason, status) = match end {
            RunEndKind::GuestExit(s) => (logchan::EndReason::GuestExit, *s as i32),
            RunEndKind::HostStop => (logchan::EndReason::HostStop, 0),
            RunEndKind::Error => (logchan::EndReason::Error, 1),
        };
        recorder
            .finish(exit_index, reason, status, digester)
            .map(drop)
            .map_err(LiveError::from)
    }
}
