//! The I/O thread: one `io_uring` for the disk image, the tap and, on a
//! side of an FT pair, the plane's engines (logging channel, heartbeats).
//! It never touches guest memory; it trades host buffers with the vCPU
//! thread through two `rtrb` rings (docs/architecture.md, "Threads").

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use blkio::{Completion, DiskEngine, Request};
use lockstep_status::StatusCounters;
use netio::TapEngine;

use ioengine::{Fence, FenceEvent};

use super::plane::{AttachError, Dataplane, FenceCtl, IoPlane};
use super::shared::{Handoff, VmShared};

/// user_data tags (top byte) of the engines on the ring; a plane's engines
/// use tags of their own (`IoPlane::owns`).
pub const TAG_DISK: u8 = 1;
pub const TAG_TAP: u8 = 2;
/// The output fence's timer and slot updates (an FT primary).
pub const TAG_FENCE: u8 = 5;
const TAG_WAKE: u8 = 0xff;

/// Ring depth; the engines keep what does not fit and retry.
const RING_ENTRIES: u32 = 256;
/// Capacity of each vCPU ↔ I/O ring, in messages.
const CHANNEL_DEPTH: usize = 4096;
/// How long the I/O thread polls with nothing to do before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(30);
/// How long a retired plane's last operations may take (its sockets are
/// shut down, so they end at once; a heartbeat timer within its period).
pub const RETIRE_GRACE: Duration = Duration::from_millis(300);
/// How often the I/O thread looks for the end of that grace instead of
/// sleeping in the kernel (see the loop's end).
const RETIRE_POLL: Duration = Duration::from_millis(1);
/// How long a stopping primary waits for its last log entries to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// vCPU thread → I/O thread.
pub enum ToIo {
    /// A disk request; `seq`: the log entry that recorded it (0 if none),
    /// from which the output rule derives its gate tag.
    Disk { req: Request, seq: u64 },
    /// A frame for the tap, with its log entry likewise.
    Tx { frame: Vec<u8>, seq: u64 },
    /// Finish every submitted write, then exit.
    Drain,
    /// A backup goes live: deliver received frames, let outputs out.
    GoLive,
    /// A live clone begins (docs/join.md): the plane of a primary that
    /// runs alone shuts its connections; its operations finish within
    /// [`RETIRE_GRACE`], then it is dropped, freeing its sockets.
    RetirePlane,
    /// A live clone's join point: the I/O thread takes this FT plane from
    /// here on, and the engines' gates hold outputs again.
    Plane(Box<dyn IoPlane>),
}

/// I/O thread → vCPU thread.
pub enum FromIo {
    Rx(Vec<u8>),
    Disk(Completion),
}

/// Wakes the I/O thread when it sleeps in `io_uring_enter`; a no-op (one
/// load) otherwise, so the vCPU's fast path makes no syscall.
pub struct IoWaker {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl IoWaker {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(IoWaker {
            // SAFETY: `fd` is a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Call after pushing to the I/O thread's ring.
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// The vCPU thread's ends of the rings.
pub struct IoChannels {
    pub to_io: rtrb::Producer<ToIo>,
    pub from_io: rtrb::Consumer<FromIo>,
    pub waker: Arc<IoWaker>,
}

impl IoChannels {
    /// The vCPU thread's ends of a fresh pair of rings, and the I/O side's
    /// ends for whoever serves them (the I/O thread; a test standing in for
    /// it).
    pub fn detached(
        depth: usize,
    ) -> std::io::Result<(IoChannels, rtrb::Consumer<ToIo>, rtrb::Producer<FromIo>)> {
        let waker = Arc::new(IoWaker::new()?);
        let (to_io, to_io_rx) = rtrb::RingBuffer::new(depth);
        let (from_io_tx, from_io) = rtrb::RingBuffer::new(depth);
        Ok((
            IoChannels {
                to_io,
                from_io,
                waker,
            },
            to_io_rx,
            from_io_tx,
        ))
    }

    /// Sends one message, waiting (bounded by the I/O thread's progress) if
    /// the ring is full. Returns false if the I/O thread is gone.
    pub fn send(&mut self, mut msg: ToIo) -> bool {
        loop {
            match self.to_io.push(msg) {
                Ok(()) => return true,
                Err(rtrb::PushError::Full(m)) => {
                    if self.to_io.is_abandoned() {
                        return false;
                    }
                    msg = m;
                    self.waker.wake();
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Errors that end the I/O thread.
#[derive(Debug, thiserror::Error)]
pub enum IoThreadError {
    #[error(
        "cannot set up io_uring (is io_uring disabled on this kernel? see /proc/sys/kernel/io_uring_disabled)"
    )]
    Setup(#[source] std::io::Error),
    #[error("io_uring_enter failed")]
    Enter(#[source] std::io::Error),
    #[error("setting up the logging channel")]
    Channel(#[source] AttachError),
    #[error("setting up the output fence")]
    Fence(#[source] ioengine::FenceError),
}

/// Starts the I/O thread with the engines it owns.
pub fn spawn(
    disk: Option<DiskEngine>,
    tap: Option<TapEngine>,
    shared: Arc<VmShared>,
    cpu: Option<usize>,
    plane: Option<Box<dyn IoPlane>>,
    deliver_rx: bool,
) -> Result<(IoChannels, JoinHandle<Result<(), IoThreadError>>), IoThreadError> {
    let ring = IoUring::new(RING_ENTRIES).map_err(IoThreadError::Setup)?;
    let (channels, to_io_rx, from_io_tx) =
        IoChannels::detached(CHANNEL_DEPTH).map_err(IoThreadError::Setup)?;
    let thread = IoThread {
        ring,
        disk,
        tap,
        rx: to_io_rx,
        tx: Handoff::new(from_io_tx),
        waker: channels.waker.clone(),
        shared,
        wake_buf: Box::new([0u8; 8]),
        plane,
        deliver_rx,
    };
    let handle = std::thread::Builder::new()
        .name("io".into())
        .spawn(move || {
            crate::cpu::pin_current_thread(cpu);
            thread.run()
        })
        .map_err(IoThreadError::Setup)?;
    Ok((channels, handle))
}

struct IoThread {
    ring: IoUring,
    disk: Option<DiskEngine>,
    tap: Option<TapEngine>,
    rx: rtrb::Consumer<ToIo>,
    tx: Handoff<FromIo>,
    waker: Arc<IoWaker>,
    shared: Arc<VmShared>,
    /// Target of the pending eventfd read; boxed so its address is stable.
    wake_buf: Box<[u8; 8]>,
    /// The FT pair's channel and heartbeats, if this VM is one side.
    plane: Option<Box<dyn IoPlane>>,
    /// Whether received frames go to the guest (a backup: not until live).
    deliver_rx: bool,
}

impl IoThread {
    fn run(mut self) -> Result<(), IoThreadError> {
        let wake_fd = self.waker.eventfd.as_raw_fd();
        let IoThread {
            ring,
            disk,
            tap,
            plane,
            rx,
            tx,
            waker,
            shared,
            wake_buf,
            deliver_rx,
        } = &mut self;
        let (submitter, mut sq, mut cq) = ring.split();
        if let Some(plane) = plane.as_mut() {
            let mode = plane.attach(&submitter).map_err(IoThreadError::Channel)?;
            tracing::info!("{mode}");
        }
        // A side that holds a lease has the kernel enforce it on the
        // descriptors its outputs leave through.
        let mut output_fence = match plane.as_ref().and_then(|p| p.fence_lag()) {
            Some(lag) => Some(start_fence(&submitter, &mut sq, disk, tap, lag)?),
            None => None,
        };
        // The engines and the fence, lent to the plane for one call.
        macro_rules! dataplane {
            () => {
                Dataplane::new(disk, tap, deliver_rx).with_fence(output_fence.as_mut().map(|f| {
                    FenceCtl {
                        fence: f,
                        submitter: &submitter,
                    }
                }))
            };
        }
        let arm_wake = |sq: &mut io_uring::SubmissionQueue<'_>, buf: &mut [u8; 8]| {
            let read = opcode::Read::new(types::Fd(wake_fd), buf.as_mut_ptr(), 8)
                .build()
                .user_data((TAG_WAKE as u64) << 56);
            // SAFETY: the buffer is owned by this thread's `wake_buf`, which
            // outlives the ring; the fd is the waker's eventfd.
            unsafe { sq.push(&read).is_ok() }
        };
        let mut wake_armed = arm_wake(&mut sq, wake_buf);
        // A plane retired for a live clone, until its operations are done.
        let mut retiring: Option<(Box<dyn IoPlane>, Instant)> = None;
        let mut draining: Option<Instant> = None;
        let mut idle_since: Option<Instant> = None;
        // The tag an output waits under at its engine's gate: the output
        // rule's, on a side of a pair; none for a VM alone (run, record).
        let gate_tag = |plane: &mut Option<Box<dyn IoPlane>>, seq: u64| {
            plane
                .as_mut()
                .map_or(0, |p| p.gate_tag(seq, Instant::now()))
        };
        loop {
            let mut busy = false;
            while let Ok(msg) = rx.pop() {
                busy = true;
                match msg {
                    ToIo::Disk { req, seq } => match disk.as_mut() {
                        Some(d) => {
                            // Only writes are outputs; reads and flushes
                            // are ordered by the engine's IO serialization.
                            let tag = match req.op {
                                blkio::RequestOp::Write { .. } => gate_tag(plane, seq),
                                _ => 0,
                            };
                            d.submit(req, tag, &mut sq)
                        }
                        None => {
                            tx.push(FromIo::Disk(Completion::error(req.id, blkio::STATUS_IOERR)))
                        }
                    },
                    ToIo::Tx { frame, seq } => {
                        let tag = gate_tag(plane, seq);
                        if let Some(t) = tap.as_mut() {
                            t.send(frame, tag, &mut sq);
                        }
                    }
                    ToIo::Drain => {
                        draining.get_or_insert_with(Instant::now);
                    }
                    ToIo::RetirePlane => {
                        if let Some(mut old) = plane.take() {
                            old.shutdown();
                            retiring = Some((old, Instant::now()));
                        }
                    }
                    ToIo::Plane(mut new) => {
                        // The old plane's CQEs carry the same tags: it is
                        // gone before the new one takes any.
                        if let Some((old, since)) = retiring.take() {
                            if since.elapsed() < RETIRE_GRACE {
                                tracing::warn!("a retired plane dropped before its grace ended");
                            }
                            drop(old);
                            release_buffer_table(&submitter);
                        }
                        match new.attach(&submitter) {
                            Ok(mode) => {
                                tracing::info!("{mode}");
                                let disk_armed = disk.as_mut().is_none_or(|d| d.rearm_gate());
                                let tap_armed = tap.as_mut().is_none_or(|t| t.rearm_gate());
                                if !(disk_armed && tap_armed) {
                                    tracing::error!("a revoked side cannot take a backup");
                                }
                                // The kernel's half of the lease returns
                                // too: held until the first renewal.
                                match output_fence.as_mut().map(|f| f.rearm(&submitter)) {
                                    Some(Ok(true)) => {
                                        Dataplane::new(disk, tap, deliver_rx)
                                            .set_fenced(true, &mut sq);
                                    }
                                    Some(Ok(false)) => {
                                        tracing::error!("a closed fence cannot take a backup")
                                    }
                                    Some(Err(e)) => tracing::error!("{e}: outputs stay held"),
                                    None => {}
                                }
                                if output_fence.is_none()
                                    && let Some(lag) = new.fence_lag()
                                {
                                    output_fence =
                                        Some(start_fence(&submitter, &mut sq, disk, tap, lag)?);
                                }
                                *plane = Some(new);
                            }
                            Err(e) => tracing::error!("the joined backup's channel: {e}"),
                        }
                    }
                    ToIo::GoLive => {
                        // At once, in order: the frames queued behind it (the
                        // gratuitous ARP, frames to send again) must leave.
                        if let Some(plane) = plane.as_mut() {
                            plane.go_live(&mut dataplane!());
                        }
                    }
                }
            }
            let now = Instant::now();
            if let Some(plane) = plane.as_mut() {
                plane.pump(&mut sq, now);
                busy |= plane.busy();
            }
            if let Some(d) = disk.as_mut() {
                d.pump(&mut sq);
            }
            if let Some(t) = tap.as_mut() {
                t.pump(&mut sq);
            }
            if !wake_armed {
                wake_armed = arm_wake(&mut sq, wake_buf);
            }
            sq.sync();
            match submitter.submit() {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(IoThreadError::Enter(e)),
            }
            cq.sync();
            let mut delivered = false;
            for cqe in &mut cq {
                busy = true;
                let ud = cqe.user_data();
                match (ud >> 56) as u8 {
                    TAG_DISK => {
                        if let Some(d) = disk.as_mut() {
                            d.on_cqe(ud, cqe.result(), &mut sq, &mut |c| {
                                tx.push(FromIo::Disk(c));
                                delivered = true;
                            });
                        }
                    }
                    TAG_TAP => {
                        if let Some(t) = tap.as_mut() {
                            let deliver = *deliver_rx;
                            t.on_cqe(ud, cqe.result(), &mut sq, &mut |f| {
                                // A backup's guest hears only the log until
                                // it goes live.
                                if deliver {
                                    tx.push(FromIo::Rx(f));
                                    delivered = true;
                                }
                            });
                        }
                    }
                    TAG_WAKE => wake_armed = false,
                    TAG_FENCE => {
                        let event = match output_fence.as_mut() {
                            Some(f) => f.on_cqe(ud, cqe.result(), &submitter),
                            None => Ok(None),
                        };
                        match event {
                            // The kernel emptied the output slots: nothing
                            // is handed over until a renewal restores them.
                            Ok(Some(FenceEvent::Fired)) => dataplane!().set_fenced(true, &mut sq),
                            Ok(Some(FenceEvent::Restored)) => {
                                dataplane!().set_fenced(false, &mut sq)
                            }
                            Ok(None) => {}
                            Err(e) => tracing::error!("{e}"),
                        }
                    }
                    tag => match plane.as_mut().filter(|p| p.owns(tag)) {
                        Some(plane) => plane.on_cqe(&cqe, &mut sq, &mut dataplane!()),
                        None => match retiring.as_mut().filter(|(p, _)| p.owns(tag)) {
                            Some((old, _)) => old.on_cqe(&cqe, &mut sq, &mut dataplane!()),
                            None => tracing::warn!("completion with unknown tag {tag:#x}"),
                        },
                    },
                }
            }
            if retiring
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= RETIRE_GRACE)
            {
                retiring = None;
                release_buffer_table(&submitter);
            }
            delivered |= tx.flush();
            if delivered {
                shared.wake_vcpu();
            }
            // After the completions: a peer whose news just arrived is not
            // declared dead on stale evidence.
            if let Some(plane) = plane.as_mut() {
                plane.tick(Instant::now(), &mut sq, &mut dataplane!());
            }
            let mut refused = 0;
            if let Some(t) = tap.as_ref() {
                StatusCounters::set(&shared.status.gate_frames, t.gated_len() as u64);
                refused += t.stats().tx_fenced;
            }
            if let Some(d) = disk.as_ref() {
                StatusCounters::set(&shared.status.gate_disk_writes, d.held_writes() as u64);
                refused += d.stats().fenced_writes;
            }
            StatusCounters::set(&shared.status.outputs_refused, refused);
            if let Some(since) = draining {
                let disk_idle = disk.as_ref().is_none_or(|d| d.is_idle());
                let log_flushed = plane.as_ref().is_none_or(|p| p.flushed());
                let out_of_time = since.elapsed() > FLUSH_TIMEOUT;
                if rx.is_empty() && ((disk_idle && log_flushed) || out_of_time) {
                    if !log_flushed {
                        tracing::warn!(
                            "the log's last entries did not leave within {FLUSH_TIMEOUT:?}"
                        );
                    }
                    if let Some(plane) = plane.as_mut() {
                        plane.shutdown();
                    }
                    return Ok(());
                }
            }
            if rx.is_abandoned() && rx.is_empty() && draining.is_none() {
                // The vCPU thread is gone without a drain: finish writes anyway.
                draining = Some(Instant::now());
                continue;
            }
            if busy {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE_SPIN {
                std::hint::spin_loop();
                continue;
            }
            // A retired plane is dropped (its sockets closed) once its grace
            // is over, above; on an idle VM no completion may come to say
            // so, while a join waits to bind the heartbeat port it holds
            // (seen: an idle primary's `ft resume` failing on EADDRINUSE).
            if retiring.is_some() {
                std::thread::sleep(RETIRE_POLL);
                idle_since = None;
                continue;
            }
            // Sleep in the kernel until a completion (a heartbeat timer
            // among them) or the waker's eventfd.
            waker.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if rx.is_empty() && wake_armed {
                sq.sync();
                match submitter.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e)
                        if e.raw_os_error() == Some(libc::EINTR)
                            || e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(IoThreadError::Enter(e)),
                }
            }
            waker.sleeping.store(false, Ordering::SeqCst);
            idle_since = None;
        }
    }
}

/// A retired plane is gone: the ring's buffer table (its log buffers, if
/// it registered them; no other engine of this ring registers any) is
/// released for the next plane. Its buffers' memory was leaked by the
/// plane's drop, so the kernel's references never point at freed memory.
fn release_buffer_table(submitter: &io_uring::Submitter<'_>) {
    // ENXIO: there was no table.
    let _ = submitter.unregister_buffers();
}

/// Registers the ring's fixed-file slots for the descriptors outputs leave
/// through (the disk image: slot 0, the tap: slot 1), points the engines'
/// writes at them and holds the engines: the slots start empty, and
/// nothing leaves before the first renewal fills them.
fn start_fence(
    submitter: &io_uring::Submitter<'_>,
    sq: &mut io_uring::SubmissionQueue<'_>,
    disk: &mut Option<DiskEngine>,
    tap: &mut Option<TapEngine>,
    lag: Duration,
) -> Result<Fence, IoThreadError> {
    let mut fds = Vec::new();
    if let Some(d) = disk.as_mut() {
        d.set_output_slot(fds.len() as u32);
        d.set_fenced(true, sq);
        fds.push(d.image().file().as_raw_fd());
    }
    if let Some(t) = tap.as_mut() {
        t.set_output_slot(fds.len() as u32);
        t.set_fenced(true, sq);
        fds.push(t.tap().as_raw_fd());
    }
    Fence::new(submitter, fds, TAG_FENCE, lag).map_err(IoThreadError::Fence)
}
