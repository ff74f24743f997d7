//! The channel's engines on their own threads, run the way the VMM's
//! I/O thread runs them: the primary's producer and sender, the backup's
//! receiver.

use super::*;

/// The VMM's `IoWaker`: an eventfd the producer writes only while the
/// engine thread sleeps.
struct Doorbell {
    fd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    fn new() -> anyhow::Result<Arc<Doorbell>> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("eventfd");
        }
        Ok(Arc::new(Doorbell {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        }))
    }

    /// After `publish`: pairs with the fence in `EngineLoop::run`.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd. A
            // failure (counter overflow) still leaves it readable.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// What an engine thread's loop did: where its time went besides the
/// engine's own work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoopStats {
    /// Turns of the loop (each one submits), and engine CQEs handled.
    pub turns: u64,
    pub cqes: u64,
    /// Idle turns spent yielding the core, and sleeps in `io_uring_enter`.
    pub yields: u64,
    pub sleeps: u64,
    /// Wall time idle: spinning (yielding) and asleep.
    pub spinning: Duration,
    pub asleep: Duration,
    /// Wall time in the engine's CQE handling (its own work in user space,
    /// plus whatever it submits inline).
    pub handling: Duration,
}

/// An engine thread's loop: the I/O thread's, with one engine.
struct EngineLoop {
    ring: IoUring,
    bell: Option<Arc<Doorbell>>,
    bell_buf: Box<[u8; 8]>,
    bell_armed: bool,
    stats: LoopStats,
}

impl EngineLoop {
    fn new(bell: Option<Arc<Doorbell>>) -> anyhow::Result<EngineLoop> {
        Ok(EngineLoop {
            ring: IoUring::new(RING_ENTRIES).context("io_uring")?,
            bell,
            bell_buf: Box::new([0; 8]),
            bell_armed: false,
            stats: LoopStats::default(),
        })
    }

    /// Runs until `done`: `pump` each turn, `on` for each engine CQE.
    fn run(
        &mut self,
        mut pump: impl FnMut(&mut squeue::SubmissionQueue<'_>),
        mut on: impl FnMut(&cqueue::Entry, &mut squeue::SubmissionQueue<'_>),
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let (submitter, mut sq, mut cq) = self.ring.split();
        let mut idle_since: Option<Instant> = None;
        let stats = &mut self.stats;
        loop {
            stats.turns += 1;
            pump(&mut sq);
            if let Some(bell) = &self.bell
                && !self.bell_armed
            {
                let e = opcode::Read::new(
                    types::Fd(bell.fd.as_raw_fd()),
                    self.bell_buf.as_mut_ptr(),
                    8,
                )
                .build()
                .user_data(u64::from(TAG_WAKE) << 56);
                // SAFETY: `bell_buf` lives in `self`, which outlives the
                // ring's use of it (the ring is dropped with `self`).
                self.bell_armed = unsafe { sq.push(&e) }.is_ok();
            }
            sq.sync();
            if done() {
                return Ok(());
            }
            let queued = !sq.is_empty();
            match submitter.submit() {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e).context("io_uring_enter"),
            }
            cq.sync();
            let mut busy = queued;
            for cqe in &mut cq {
                busy = true;
                if (cqe.user_data() >> 56) as u8 == TAG_WAKE {
                    self.bell_armed = false;
                } else {
                    stats.cqes += 1;
                    let t = Instant::now();
                    on(&cqe, &mut sq);
                    stats.handling += t.elapsed();
                }
            }
            if busy {
                if let Some(since) = idle_since.take() {
                    stats.spinning += since.elapsed();
                }
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < IDLE_SPIN {
                // Two cores, several threads: let the one we wait for run.
                stats.yields += 1;
                std::thread::yield_now();
                continue;
            }
            let slept = Instant::now();
            stats.spinning += slept - since;
            stats.sleeps += 1;
            // Sleep until a CQE or the doorbell. Announce it first, then
            // look once more: a publish before the announcement is seen by
            // this pump, one after it rings the bell.
            if let Some(bell) = &self.bell {
                bell.sleeping.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                pump(&mut sq);
                sq.sync();
            }
            let ts = types::Timespec::from(Duration::from_millis(100));
            let args = types::SubmitArgs::new().timespec(&ts);
            let r = submitter.submit_with_args(1, &args);
            if let Some(bell) = &self.bell {
                bell.sleeping.store(false, Ordering::SeqCst);
            }
            stats.asleep += slept.elapsed();
            match r {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e).context("io_uring_enter"),
            }
            idle_since = None;
        }
    }
}

pub(super) fn header() -> StreamHeader {
    StreamHeader::new(
        GuestIdentity {
            kernel_hash: 1,
            boot_hash: 2,
            mem_size: 64 << 20,
        },
        0,
        1,
    )
}

/// What the sender's engine thread reports when it ends.
#[derive(Clone, Copy, Debug)]
pub struct SenderReport {
    /// The mode `attach` chose (`stats.mode` is the one it ended in).
    pub attached: Option<SendMode>,
    pub stats: SenderStats,
    /// The log buffers' counters (producer stalls, …).
    pub log: LogStats,
    pub cpu: ThreadCpu,
    pub engine_loop: LoopStats,
}

/// The primary's end of a running channel: a [`LogProducer`] on the
/// caller's thread, and a [`SenderEngine`] on an engine thread started
/// from it. `acked` follows the engine's `Acked` events.
pub struct ChannelSender {
    producer: LogProducer,
    bell: Arc<Doorbell>,
    acked: Arc<AtomicU64>,
    engine: JoinHandle<anyhow::Result<SenderReport>>,
}

impl ChannelSender {
    /// Starts the engine thread on `stream` (connected to a
    /// [`run_receiver`]); returns once the engine is attached.
    pub fn start(stream: TcpStream, opts: SenderOptions) -> anyhow::Result<ChannelSender> {
        Self::start_sealed(stream, opts, None)
    }

    /// [`ChannelSender::start`] on an opened channel: `records` seal the
    /// stream (an authenticated session's record layer).
    pub fn start_sealed(
        stream: TcpStream,
        opts: SenderOptions,
        records: Option<RecordLayer>,
    ) -> anyhow::Result<ChannelSender> {
        let mut cfg = LogConfig::new(8, 1 << 20);
        // The engine thread never parks on the log's futex: the doorbell
        // is its wake-up.
        cfg.wake_consumer = false;
        let (producer, consumer) = log_buffers_with(&cfg).context("log buffers")?;
        let bell = Doorbell::new()?;
        let acked = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let engine = {
            let (bell, acked) = (bell.clone(), acked.clone());
            std::thread::Builder::new()
                .name("chan-sender".into())
                .spawn(move || -> anyhow::Result<SenderReport> {
                    let cpu0 = ThreadCpu::now();
                    let mut lp = EngineLoop::new(Some(bell))?;
                    let mut engine = SenderEngine::new(stream, consumer, header(), TAG_CHAN, opts)
                        .context("sender engine")?
                        .secured(records);
                    let attached = engine
                        .attach(&lp.ring.submitter(), Registration::Table)
                        .context("attaching the sender")?;
                    // The receiving end is gone if the caller gave up.
                    if ready_tx.send(()).is_err() {
                        let _ = engine.detach(&lp.ring.submitter());
                        bail!("the caller gave up");
                    }
                    let (stats, log) = run_sender(&mut lp, engine, &acked)?;
                    Ok(SenderReport {
                        attached: Some(attached),
                        stats,
                        log,
                        cpu: ThreadCpu::now().since(&cpu0),
                        engine_loop: lp.stats,
                    })
                })
                .context("starting the sender engine thread")?
        };
        if ready_rx.recv_timeout(SETUP_TIMEOUT).is_err() {
            return Err(join(engine, "sender engine")
                .err()
                .unwrap_or_else(|| anyhow!("sender engine did not start")));
        }
        Ok(ChannelSender {
            producer,
            bell,
            acked,
            engine,
        })
    }

    /// Appends `entry` as one exit's entry and publishes it; returns its
    /// seq.
    pub fn publish(&mut self, entry: &Entry<'_>) -> anyhow::Result<u64> {
        let exit = self.producer.last_exit_index() + 1;
        let seq = self
            .producer
            .append(exit, ExitKind::SyncPort, entry)
            .context("append")?;
        self.producer.publish().context("publish")?;
        self.bell.ring();
        Ok(seq)
    }

    /// Waits (spinning, yielding now and then) until `seq` is acked.
    pub fn wait_acked(&self, seq: u64) -> anyhow::Result<()> {
        let mut i = 0u32;
        let mut deadline = None;
        while self.acked.load(Ordering::Acquire) < seq {
            std::hint::spin_loop();
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                std::thread::yield_now();
                if self.engine.is_finished() {
                    bail!("the sender engine ended before seq {seq} was acked");
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + RUN_TIMEOUT);
                if Instant::now() > d {
                    bail!("seq {seq} not acked within {RUN_TIMEOUT:?}");
                }
            }
        }
        Ok(())
    }

    /// Finishes the stream (the receiver sees a clean end); returns the
    /// engine thread's report.
    pub fn finish(self) -> anyhow::Result<SenderReport> {
        self.producer.finish().context("finishing the log")?;
        self.bell.ring();
        join(self.engine, "sender engine")
    }
}

/// The sender engine's loop: until everything published is sent and
/// acked and the producer has finished; then a clean shutdown.
fn run_sender(
    lp: &mut EngineLoop,
    engine: SenderEngine,
    acked: &AtomicU64,
) -> anyhow::Result<(SenderStats, LogStats)> {
    // The loop's three closures take turns with the engine.
    let engine = RefCell::new(engine);
    let failed = RefCell::new(None);
    lp.run(
        |sq| engine.borrow_mut().pump(sq),
        |cqe, sq| {
            engine.borrow_mut().on_cqe(cqe, sq, &mut |e| match e {
                SenderEvent::Acked { acked_seq, .. } => acked.store(acked_seq, Ordering::Release),
                SenderEvent::Closed { reason } => {
                    *failed.borrow_mut() = Some(anyhow!("logging channel closed: {reason}"));
                }
            })
        },
        || {
            let e = engine.borrow();
            failed.borrow().is_some()
                || (e.is_drained() && e.acked().acked_seq == e.stats().entries_sent)
        },
    )?;
    engine.borrow_mut().shutdown();
    lp.run(
        |_| {},
        |cqe, sq| engine.borrow_mut().on_cqe(cqe, sq, &mut |_| {}),
        || engine.borrow().ops_in_flight() == 0,
    )?;
    let mut engine = engine.into_inner();
    let detached = engine
        .detach(&lp.ring.submitter())
        .context("detaching the sender");
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    detached?;
    Ok((engine.stats(), engine.log_stats()))
}

/// What the receiving engine reports when the stream ends.
#[derive(Clone, Copy, Debug)]
pub struct ReceiverReport {
    /// Entry bytes handed on (the stream header not included).
    pub bytes: u64,
    pub stats: ReceiverStats,
    pub cpu: ThreadCpu,
    pub engine_loop: LoopStats,
}

/// The backup's end: a [`ReceiverEngine`] on the calling thread that acks
/// every chunk at once (as the VMM does), until the primary closes.
/// `ready` is called once the engine is attached.
pub fn run_receiver(
    stream: TcpStream,
    opts: ReceiverOptions,
    records: Option<RecordLayer>,
    ready: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<ReceiverReport> {
    let cpu0 = ThreadCpu::now();
    let mut lp = EngineLoop::new(None)?;
    let mut engine = ReceiverEngine::new(stream, TAG_CHAN, opts)
        .context("receiver engine")?
        .secured(records);
    engine
        .attach(&lp.ring.submitter(), Registration::Table)
        .context("attaching the receiver")?;
    if let Err(e) = ready() {
        let _ = engine.detach(&lp.ring.submitter());
        return Err(e);
    }
    let engine = RefCell::new(engine);
    let bytes = Cell::new(0u64);
    let ended = Cell::new(false);
    let failed = RefCell::new(None);
    lp.run(
        |sq| engine.borrow_mut().pump(sq),
        |cqe, sq| {
            let mut e = engine.borrow_mut();
            let mut ack = None;
            e.on_cqe(cqe, sq, &mut |ev| match ev {
                ReceiverEvent::Entries {
                    bytes: b,
                    last_seq,
                    last_exit,
                    ..
                } => {
                    bytes.set(bytes.get() + black_box(b).len() as u64);
                    ack = Some((last_seq, last_exit));
                }
                ReceiverEvent::Closed { reason, clean } => {
                    ended.set(true);
                    if !clean {
                        *failed.borrow_mut() = Some(anyhow!("logging channel closed: {reason}"));
                    }
                }
                ReceiverEvent::Corrupt { error } => {
                    ended.set(true);
                    *failed.borrow_mut() = Some(anyhow!("corrupt stream: {error}"));
                }
                ReceiverEvent::Header(_) => {}
            });
            // What the VMM does: hand the entries on, then ack at once.
            if let Some((seq, exit)) = ack {
                e.ack(seq, exit, sq);
            }
        },
        || ended.get(),
    )?;
    engine.borrow_mut().shutdown();
    lp.run(
        |_| {},
        |cqe, sq| engine.borrow_mut().on_cqe(cqe, sq, &mut |_| {}),
        || engine.borrow().ops_in_flight() == 0,
    )?;
    let mut engine = engine.into_inner();
    let detached = engine
        .detach(&lp.ring.submitter())
        .context("detaching the receiver");
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    detached?;
    Ok(ReceiverReport {
        bytes: bytes.get(),
        stats: engine.stats(),
        cpu: ThreadCpu::now().since(&cpu0),
        engine_loop: lp.stats,
    })
}
