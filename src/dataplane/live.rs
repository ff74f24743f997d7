//! The live sync call: outputs go to the I/O thread, inputs come from it,
//! time from the host clock. With a recorder attached, every input it
//! applies and every output it takes is logged at the current exit index.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use lockstep_guest_abi as abi;

use crate::devices::clock::VirtualClock;
use crate::devices::virtio::{Devices, Outputs};
use crate::ft::shared::FtShared;
use crate::machine::{RunEndKind, SyncError, SyncIo, SyncOutcome, SyncRequest};
use crate::replay::digest::Digester;
use crate::replay::recorder::Recorder;
use crate::status::StatusCounters;

use super::io_thread::{FromIo, IoChannels, ToIo};
use super::shared::{VmShared, wait_until};

/// How long a waiting vCPU spins before it parks.
const WAIT_SPIN: Duration = Duration::from_micros(20);
/// Frames kept for a guest that has no RX buffer posted; beyond this the
/// oldest are dropped, as a NIC drops when its ring is full.
const RX_BACKLOG_MAX: usize = 4096;

/// How often an idle FT primary sends a keep-alive entry.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(10);

/// Serves sync calls from live devices.
pub struct LiveIo {
    pub clock: VirtualClock,
    pub shared: Arc<VmShared>,
    pub devices: Devices,
    pub io: Option<IoChannels>,
    pub recorder: Option<Recorder>,
    /// Hold each output until a backup has acknowledged the log up to it
    /// (the output rule). Without a backup (run, record) outputs leave at
    /// once: their tag is 0.
    pub output_rule: bool,
    rx_backlog: VecDeque<Vec<u8>>,
    outputs: Outputs,
    /// Frames dropped because the guest had no RX buffers for too long.
    pub rx_dropped: u64,
    /// Set on an FT primary: the pair's shared state.
    pub ft: Option<Arc<FtShared>>,
}

impl LiveIo {
    pub fn new(shared: Arc<VmShared>, devices: Devices, io: Option<IoChannels>) -> Self {
        LiveIo {
            clock: VirtualClock::new(),
            shared,
            devices,
            io,
            recorder: None,
            output_rule: false,
            rx_backlog: VecDeque::new(),
            outputs: Outputs::default(),
            rx_dropped: 0,
            ft: None,
        }
    }

    /// Outputs to send at the next sync exit, before the guest's own (a
    /// backup going live: frames the dead primary may not have sent, disk
    /// requests whose completions it never logged).
    pub fn queue_outputs(&mut self, frames: Vec<Vec<u8>>, requests: Vec<blkio::Request>) {
        self.outputs.frames.splice(0..0, frames);
        self.outputs.requests.splice(0..0, requests);
    }

    /// An FT primary whose backup is gone and who won the arbiter: stop
    /// logging and let outputs go without waiting for acks.
    fn check_alone(&mut self) {
        if let Some(ft) = self.ft.as_ref()
            && self.recorder.is_some()
            && FtShared::flag(&ft.alone)
        {
            tracing::info!("continuing without a backup: the output rule is off");
            self.recorder = None;
            self.output_rule = false;
        }
    }

    /// An idle primary's heartbeat in the log.
    fn keep_alive(&mut self, exit_index: u64) -> Result<(), SyncError> {
        if let Some(r) = self.recorder.as_mut() {
            r.keep_alive(exit_index)?;
            if let Some(io) = self.io.as_ref() {
                io.waker.wake();
            }
        }
        Ok(())
    }

    /// Hands this exit's outputs to the I/O thread, each tagged with the
    /// log position the output rule waits for.
    fn send_outputs(&mut self, exit_index: u64) -> Result<(), SyncError> {
        let mut sent = false;
        for frame in self.outputs.frames.drain(..) {
            let seq = match self.recorder.as_mut() {
                Some(r) => r.output_frame(exit_index, &frame)?,
                None => 0,
            } * self.output_rule as u64;
            if let Some(io) = self.io.as_mut() {
                if !io.send(ToIo::Tx { frame, seq }) {
                    return Err("the I/O thread is gone".into());
                }
                sent = true;
            }
        }
        for req in self.outputs.requests.drain(..) {
            let seq = match self.recorder.as_mut() {
                Some(r) => r.output_request(exit_index, &req)?,
                None => 0,
            } * self.output_rule as u64;
            match self.io.as_mut() {
                Some(io) => {
                    if !io.send(ToIo::Disk { req, seq }) {
                        return Err("the I/O thread is gone".into());
                    }
                    sent = true;
                }
                None => return Err("a disk request without a disk".into()),
            }
        }
        if sent && let Some(io) = self.io.as_ref() {
            io.waker.wake();
        }
        Ok(())
    }

    /// Applies every input that is ready; returns the event bits.
    fn apply_inputs(&mut self, mem: &GuestMemoryMmap, exit_index: u64) -> Result<u32, SyncError> {
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
                    tracing::debug!("frame not delivered: {e}");
                    self.rx_backlog.pop_front();
                    self.rx_dropped += 1;
                }
            }
        }
        Ok(self.devices.input_events())
    }

    fn input_ready(&self) -> bool {
        self.io.as_ref().is_some_and(|io| !io.from_io.is_empty())
    }
}

impl SyncIo for LiveIo {
    fn sync(&mut self, mem: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, SyncError> {
        self.check_alone();
        self.shared.status.note_sync_call(req.exit_index);
        let mut events = self.devices.take_outputs(mem, &mut self.outputs);
        let had_outputs = !self.outputs.frames.is_empty() || !self.outputs.requests.is_empty();
        self.send_outputs(req.exit_index)?;
        events |= self.apply_inputs(mem, req.exit_index)?;
        let mut waited_ns = 0;
        if req.wait() && events == 0 && !self.shared.stop_requested() {
            let started = Instant::now();
            let host_deadline = started + self.clock.until(req.deadline_ns);
            // An FT primary wakes now and then while the guest idles, so
            // the backup keeps hearing from it (keep-alive entries).
            let keepalive = self.ft.is_some() && self.recorder.is_some();
            // This exit's outputs wait for the backup's ack of the log up
            // to them: the log goes out now, not at the first keep-alive.
            if keepalive && had_outputs {
                self.keep_alive(req.exit_index)?;
            }
            loop {
                let until = if keepalive {
                    host_deadline.min(Instant::now() + KEEPALIVE_EVERY)
                } else {
                    host_deadline
                };
                let shared = self.shared.clone();
                let from_io = self.io.as_ref().map(|io| &io.from_io);
                let ready = wait_until(until, WAIT_SPIN, || {
                    shared.stop_requested()
                        || shared.forced()
                        || from_io.is_some_and(|c| !c.is_empty())
                });
                if ready || Instant::now() >= host_deadline || !keepalive {
                    break;
                }
                self.keep_alive(req.exit_index)?;
            }
            waited_ns = started.elapsed().as_nanos() as u64;
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
    ) -> Result<(), SyncError> {
        match self.recorder.as_mut() {
            Some(r) => {
                r.after_sync_exit(exit_index, digester)?;
                StatusCounters::set(&self.shared.status.log_seq, r.seq());
                // The log goes out at once: the backup's ack is what
                // releases this exit's outputs.
                if self.ft.is_some()
                    && let Some(io) = self.io.as_ref()
                {
                    io.waker.wake();
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn finish(
        &mut self,
        exit_index: u64,
        end: &RunEndKind,
        digester: &mut dyn Digester,
    ) -> Result<(), SyncError> {
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
    }
}
