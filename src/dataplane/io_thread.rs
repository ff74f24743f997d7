//! The I/O thread: one `io_uring` for the disk image and the tap. It never
//! touches guest memory; it trades host buffers with the vCPU thread through
//! two `rtrb` rings (DESIGN.md §3).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use blkio::{Completion, DiskEngine, Request};
use netio::TapEngine;

use super::shared::{Handoff, VmShared};
use crate::ft::plane::{Dataplane, FtPlane, TAG_HEARTBEAT, TAG_LOG};
use crate::status::StatusCounters;

/// user_data tags (top byte) of the engines on the ring.
pub const TAG_DISK: u8 = 1;
pub const TAG_TAP: u8 = 2;
const TAG_WAKE: u8 = 0xff;

/// Ring depth; the engines keep what does not fit and retry.
const RING_ENTRIES: u32 = 256;
/// Capacity of each vCPU ↔ I/O ring, in messages.
const CHANNEL_DEPTH: usize = 4096;
/// How long the I/O thread polls with nothing to do before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(30);
/// How long a stopping primary waits for its last log entries to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// vCPU thread → I/O thread.
pub enum ToIo {
    /// A disk request, tagged with the log position for the output rule.
    Disk { req: Request, seq: u64 },
    /// A frame for the tap, tagged likewise.
    Tx { frame: Vec<u8>, seq: u64 },
    /// The backup has acknowledged the log up to here: release outputs.
    Acked(u64),
    /// Finish every submitted write, then exit.
    Drain,
    /// A backup goes live: deliver received frames, let outputs out.
    GoLive,
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
    Channel(#[source] logchan::channel::SetupError),
}

/// Starts the I/O thread with the engines it owns.
pub fn spawn(
    disk: Option<DiskEngine>,
    tap: Option<TapEngine>,
    shared: Arc<VmShared>,
    cpu: Option<usize>,
    ft: Option<FtPlane>,
    deliver_rx: bool,
) -> Result<(IoChannels, JoinHandle<Result<(), IoThreadError>>), IoThreadError> {
    let ring = IoUring::new(RING_ENTRIES).map_err(IoThreadError::Setup)?;
    let waker = Arc::new(IoWaker::new().map_err(IoThreadError::Setup)?);
    let (to_io, to_io_rx) = rtrb::RingBuffer::new(CHANNEL_DEPTH);
    let (from_io_tx, from_io) = rtrb::RingBuffer::new(CHANNEL_DEPTH);
    let thread = IoThread {
        ring,
        disk,
        tap,
        rx: to_io_rx,
        tx: Handoff::new(from_io_tx),
        waker: waker.clone(),
        shared,
        wake_buf: Box::new([0u8; 8]),
        ft,
        deliver_rx,
    };
    let handle = std::thread::Builder::new()
        .name("io".into())
        .spawn(move || {
            crate::launch::pin_current_thread(cpu);
            thread.run()
        })
        .map_err(IoThreadError::Setup)?;
    Ok((
        IoChannels {
            to_io,
            from_io,
            waker,
        },
        handle,
    ))
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
    ft: Option<FtPlane>,
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
            ft,
            rx,
            tx,
            waker,
            shared,
            wake_buf,
            deliver_rx,
        } = &mut self;
        let (submitter, mut sq, mut cq) = ring.split();
        if let Some(plane) = ft.as_mut() {
            let mode = plane.attach(&submitter).map_err(IoThreadError::Channel)?;
            tracing::info!("{mode}");
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
        let mut draining: Option<Instant> = None;
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut busy = false;
            while let Ok(msg) = rx.pop() {
                busy = true;
                match msg {
                    ToIo::Disk { req, seq } => match disk.as_mut() {
                        Some(d) => {
                            if matches!(req.op, blkio::RequestOp::Write { .. })
                                && let Some(p) = ft.as_mut()
                            {
                                p.output_held(seq);
                            }
                            d.submit(req, seq, &mut sq)
                        }
                        None => {
                            tx.push(FromIo::Disk(Completion::error(req.id, blkio::STATUS_IOERR)))
                        }
                    },
                    ToIo::Tx { frame, seq } => {
                        if let Some(p) = ft.as_mut() {
                            p.output_held(seq);
                        }
                        if let Some(t) = tap.as_mut() {
                            t.send(frame, seq, &mut sq);
                        }
                    }
                    ToIo::Acked(seq) => Dataplane::new(disk, tap, deliver_rx).release(seq, &mut sq),
                    ToIo::Drain => {
                        draining.get_or_insert_with(Instant::now);
                    }
                    ToIo::GoLive => {
                        // At once, in order: the frames queued behind it (the
                        // gratuitous ARP, frames to send again) must leave.
                        if let Some(plane) = ft.as_mut() {
                            plane.go_live(&mut Dataplane::new(disk, tap, deliver_rx));
                        }
                    }
                }
            }
            let now = Instant::now();
            if let Some(plane) = ft.as_mut() {
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
                    TAG_LOG | TAG_HEARTBEAT => {
                        if let Some(plane) = ft.as_mut() {
                            plane.on_cqe(&cqe, &mut sq, &mut Dataplane::new(disk, tap, deliver_rx));
                        }
                    }
                    other => tracing::warn!("completion with unknown tag {other:#x}"),
                }
            }
            delivered |= tx.flush();
            if delivered {
                shared.wake_vcpu();
            }
            // After the completions: a peer whose news just arrived is not
            // declared dead on stale evidence.
            if let Some(plane) = ft.as_mut() {
                plane.tick(
                    Instant::now(),
                    &mut sq,
                    &mut Dataplane::new(disk, tap, deliver_rx),
                );
            }
            if let Some(t) = tap.as_ref() {
                StatusCounters::set(&shared.status.gate_frames, t.gated_len() as u64);
            }
            if let Some(d) = disk.as_ref() {
                StatusCounters::set(&shared.status.gate_disk_writes, d.held_writes() as u64);
            }
            if let Some(since) = draining {
                let disk_idle = disk.as_ref().is_none_or(|d| d.is_idle());
                let log_flushed = ft.as_ref().is_none_or(|p| p.flushed());
                let out_of_time = since.elapsed() > FLUSH_TIMEOUT;
                if rx.is_empty() && ((disk_idle && log_flushed) || out_of_time) {
                    if !log_flushed {
                        tracing::warn!(
                            "the log's last entries did not leave within {FLUSH_TIMEOUT:?}"
                        );
                    }
                    if let Some(plane) = ft.as_mut() {
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
