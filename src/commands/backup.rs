//! `lockstep backup`: the following side of an FT pair. It waits for its
//! primary, builds the identical VM from the stream's boot entry, replays
//! in lockstep, and goes live when the primary dies and it wins the
//! arbiter.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use blkio::{DiskEngine, DiskImage, DiskOpenOptions};
use logchan::channel::{ReceiverEngine, ReceiverOptions};
use logchan::secure::{Attached, ChannelListener, ListenerEvent, ListenerOptions};
use netio::{Tap, TapEngine};

use lockstep_ft::admission::{Admission, DiskCheck, Expected};
use lockstep_ft::backup_io::BackupIo;
use lockstep_ft::channel_source::ChannelChunks;
use lockstep_ft::go_live::Announce;
use lockstep_ft::join::control::Protection;
use lockstep_ft::membership;
use lockstep_ft::membership::standby::{self, Standby};
use lockstep_ft::operator::Operator;
use lockstep_ft::plane::{BackupPlane, TAG_LOG};
use lockstep_ft::shared::FtShared;
use lockstep_ft::supervisor::{Side, Supervisor};
use lockstep_status::Role;
use lockstep_status::protection::Hold;
use lockstep_vmm::dataplane::io_thread::{self, IoChannels, TAG_DISK, TAG_TAP};
use lockstep_vmm::dataplane::join_point::JoinCtl;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::cursor::{LogCursor, Logged};
use lockstep_vmm::replay::recorder::DigestPolicy;
use lockstep_vmm::replay::replayer::{ReplayIo, ReplayStop};
use lockstep_vmm::spec::GuestSpec;

use crate::cli::BackupArgs;
use crate::commands::drive::{Served, VmParts, drain, drive};
use crate::commands::live::report;
use crate::commands::live::{JoinEnv, KEEPALIVE_EVERY};
use crate::commands::pair::{claimant, lease, liveness, open_arbiter, resolve, security};
use crate::commands::rejoin;
use crate::commands::{app, join};
use crate::exit_status::ExitStatus;
use crate::launch;

/// How long the backup waits for the stream's boot entry once connected.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a backup stopped while waiting waits for its registration as
/// a spare to be withdrawn (beyond it, the lease expires on its own).
const WITHDRAW_WAIT: Duration = Duration::from_secs(3);

impl Served for BackupIo {
    fn channels(&mut self) -> Option<&mut IoChannels> {
        self.channels_mut()
    }
}

/// Waits for the primary the listener accepts, or returns `None` on
/// SIGINT/SIGTERM.
fn wait_for_primary(
    listener: &ChannelListener,
    signals: &nix::sys::signal::SigSet,
) -> Option<Attached> {
    loop {
        if let Some(a) = listener.next(Duration::from_millis(20)) {
            return Some(a);
        }
        if launch::poll_signal(signals, Duration::ZERO).is_some() {
            return None;
        }
    }
}

/// What this backup checks a primary's attach request against.
fn admission(args: &BackupArgs, kernel: &[u8]) -> anyhow::Result<Admission> {
    let guest_ip = match &args.guest_ip {
        Some(ip) => {
            let addr = ip.split('/').next().unwrap_or_default();
            Some(addr.parse().with_context(|| format!("--guest-ip {ip}"))?)
        }
        None => None,
    };
    Ok(Admission {
        kernel: kernel.to_vec(),
        disk: DiskCheck::Image(args.disk.clone()),
        expected: Expected {
            mem_size: match args.mem {
                Some(mib) => Some(mib.checked_mul(1 << 20).context("--mem is too large")?),
                None => None,
            },
            mac: args.mac.as_deref().map(launch::parse_mac).transpose()?,
            guest_ip,
        },
        // Its own handle on the same arbiter: the listener's thread asks it.
        arbiter: open_arbiter(&args.ft)?,
    })
}

pub fn backup(args: BackupArgs) -> anyhow::Result<ExitStatus> {
    let signals = launch::block_stop_signals()?;
    let who = claimant(&args.ft, "backup")?;
    let name = who.name().to_string();
    let live = liveness(&args.ft)?;
    let arbiter = open_arbiter(&args.ft)?;
    let listen = resolve("--listen", &args.listen)?;
    // Refused before anything starts: what is used only later.
    let spares = membership::parse(&args.spares).context("--spares")?;
    if let Some(uri) = &args.standby {
        Standby::check(uri, &name, listen).context("--standby")?;
    }
    let (vcpu_cpu, io_cpu) = launch::parse_cpus(args.cpus.as_deref())?;
    lockstep_vmm::cpu::avoid_cpu(vcpu_cpu);
    let kernel = launch::kernel_bytes(args.kernel.as_deref())?;
    let console = launch::console_for(args.console.as_deref())?;
    let tap = match &args.tap {
        Some(t) => Some(Tap::open(t).with_context(|| format!("opening tap {t}"))?),
        None => None,
    };
    let security = security(&args.ft, "backup")?;
    let admission = admission(&args, &kernel)?;
    let shared = Arc::new(VmShared::default());
    shared.status.set_role(Role::Backup);
    lockstep_status::StatusCounters::set(
        &shared.status.failure_timeout_ms,
        u64::try_from(live.timeout.as_millis()).unwrap_or(u64::MAX),
    );
    let _ = shared.status.name.set(name.clone());
    let _ = shared
        .status
        .channel
        .set(security.mode().name().to_string());
    // The operator's actions (docs/operator-actions.md): refused while
    // this side follows a primary; once it has gone live it takes them as
    // any primary, its join thread (`--spares`, or where `ft on` aims)
    // included.
    let control = Arc::new(Protection::new(spares));
    let operator = Arc::new(Operator::new(
        control.clone(),
        Hold::None,
        Box::new(|| {
            tracing::warn!("test failover: this primary stops now; its backup takes over");
            std::process::exit(i32::from(ExitStatus::TestFailover.code()));
        }),
        ExitStatus::TestFailover.code(),
    ));
    operator.attach(shared.clone());
    let actions = operator as Arc<dyn lockstep_status::ActionHandler>;
    let _status = launch::serve_status_with(&args.monitor, &shared.status, Some(actions))?;
    let counters = shared.status.clone();
    let listener = ChannelListener::spawn(
        TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?,
        security,
        ListenerOptions::default(),
        Box::new(move |peer, attach| {
            tracing::info!(
                "primary at {peer} asks to attach (epoch {})",
                attach.header.epoch
            );
            admission.judge(attach).map(drop)
        }),
        Box::new(move |ev| match ev {
            ListenerEvent::Rejected { .. } => {
                lockstep_status::StatusCounters::add(&counters.channel_rejected, 1)
            }
            ListenerEvent::Refused { .. } => {
                lockstep_status::StatusCounters::add(&counters.primaries_refused, 1)
            }
            ListenerEvent::Attached { .. } => {}
        }),
    )
    .with_context(|| format!("listening on {listen}"))?;
    // A spare in etcd while it waits (`--standby`), withdrawn once taken.
    let standby = match &args.standby {
        Some(uri) => {
            Some(Standby::register(uri, &name, listen, standby::DEFAULT_TTL).context("--standby")?)
        }
        None => None,
    };
    tracing::info!("backup {name}: waiting for the primary on {listen}");
    let Some(attached) = wait_for_primary(&listener, &signals) else {
        if let Some(s) = standby {
            s.withdraw(WITHDRAW_WAIT);
        }
        tracing::info!("stopped before a primary attached");
        return Ok(ExitStatus::Ok);
    };
    // Taken: no other primary may pick it. Not waited for: the primary is
    // copying its guest now, and the revoke is the registry's business.
    if let Some(s) = standby {
        s.withdraw(Duration::ZERO);
    }
    // The listener stays: it refuses any other primary while this one runs.
    let Attached {
        stream,
        peer,
        mut session,
        attach,
    } = attached;
    tracing::info!("primary attached from {peer}");
    let image = DiskImage::open(&args.disk, DiskOpenOptions::default())
        .with_context(|| format!("opening the shared disk {}", args.disk.display()))?;
    let disk_sectors = image.capacity_sectors();
    // A running primary joins this backup by live clone: its state comes
    // first, on the same connection, before the log.
    let joined = match join::is_join(&attach) {
        true => Some(join::receive(
            &stream,
            session.records.as_mut(),
            &attach,
            &kernel,
            disk_sectors,
        )?),
        false => None,
    };
    let hb_port = args.ft.heartbeat_port.unwrap_or(listen.port());
    let udp = UdpSocket::bind((listen.ip(), hb_port))
        .with_context(|| format!("binding the heartbeat port {}:{hb_port}", listen.ip()))?;

    let ft = Arc::new(FtShared::default());
    let _ = ft.main_thread.set(std::thread::current());
    shared.status.set_peer(&peer.to_string());
    ft.replay_buffer.set_limits(
        u64::from(args.replay_buffer_mib) << 20,
        u64::from(args.replay_buffer_chunks),
    );
    // Room on the ring for every chunk the bound lets in, and the reads
    // that overshoot it (replay_buffer.rs): nothing waits behind it.
    let ring_slots = usize::try_from(args.replay_buffer_chunks)
        .context("--replay-buffer-chunks")?
        .saturating_add(4);
    let (chunk_tx, chunk_rx) = rtrb::RingBuffer::new(ring_slots);
    let receiver = ReceiverEngine::new(stream, TAG_LOG, ReceiverOptions::default())
        .context("setting up the logging channel")?
        .secured(session.records);
    let plane = Box::new(BackupPlane::new(
        receiver,
        udp,
        session.beats,
        SocketAddr::new(peer.ip(), hb_port),
        live,
        ft.clone(),
        shared.clone(),
        chunk_tx,
    ));
    let mut disk = DiskEngine::new(image, TAG_DISK);
    disk.set_drop_outputs(true);
    let tap = match tap {
        Some(t) => {
            let mut e = TapEngine::new(t, TAG_TAP, 64).context("setting up the tap engine")?;
            e.set_drop_outputs(true);
            Some(e)
        }
        None => None,
    };
    let (io, io_thread) =
        io_thread::spawn(Some(disk), tap, shared.clone(), io_cpu, Some(plane), false)
            .context("starting the I/O thread")?;
    ft.replay_buffer.set_waker(io.waker.clone());

    // The stream header and the boot entry come first: they say which VM to
    // build. (A joiner's stream starts at the join point instead.) Nothing
    // is claimed before an entry arrived: a joined primary sends the first
    // only once it switched to the new log, so a joiner whose join failed
    // at its last step stops here and never goes live (docs/join.md).
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while FtShared::load(&ft.received_seq) == 0 {
        if Instant::now() > deadline || FtShared::flag(&ft.peer_dead) || ft.note_text().is_some() {
            bail!(
                "the primary sent no boot entry ({})",
                ft.note_text()
                    .unwrap_or_else(|| format!("nothing within {BOOT_TIMEOUT:?}"))
            );
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let mut cursor = LogCursor::new(Box::new(ChannelChunks::new(
        chunk_rx,
        ft.clone(),
        shared.clone(),
    )))
    .context("reading the stream header")?;
    // The stream must be what the primary asked to attach with (and the
    // admission checked): the same header, the same boot configuration.
    let header = *cursor.header();
    if header != attach.header {
        bail!("the primary's stream header is not the one it attached with");
    }
    let spec = match (&joined, cursor.pop_boot()) {
        // A joined stream starts at the join point: no boot entry.
        (Some(j), None) => j.spec.clone(),
        (Some(_), Some(_)) => bail!("a joining primary's stream starts with a boot entry"),
        (None, Some(Logged::Boot(config))) if config == attach.boot => {
            GuestSpec::decode(&config).context("reading the boot entry")?
        }
        (None, Some(Logged::Boot(_))) => {
            bail!("the primary's boot entry is not the configuration it attached with")
        }
        (None, _) => bail!("the primary's stream does not start with a boot entry"),
    };
    if spec.disk_sectors != disk_sectors {
        bail!(
            "the primary's disk has {} sectors, {} has {disk_sectors}: not the same disk",
            spec.disk_sectors,
            args.disk.display()
        );
    }
    app::check_backup(&args.app, &spec)?;
    let (vm, devices, exit_index) = match joined {
        Some(j) => (j.vm, j.devices, j.state.exit_index),
        None => (
            spec.build_vm(&kernel).context("building the VM")?,
            spec.devices(),
            0,
        ),
    };
    let announce = match (spec.mac, spec.guest_ip()) {
        (Some(mac), Some(ip)) => Some(Announce { mac, ip }),
        _ => None,
    };
    let replay = ReplayIo::new(devices, cursor, None);
    let mut backup_io = BackupIo::new(replay, shared.clone(), ft.clone(), io, announce);
    let mut supervisor = Supervisor::new(Side::Backup, arbiter, header.epoch, who, ft.clone());
    let (vm_fd, mut parts) = VmParts::split(vm, vcpu_cpu);
    // The VM's fd stays open for the run (a join reads its dirty log).
    let vm_fd = Arc::new(vm_fd);
    // Re-protection once live (`--spares`, the operator's `ft on`): as a
    // primary's.
    let join = rejoin::start(
        control,
        &args.ft,
        "backup",
        live,
        Duration::from_millis(u64::from(lease(&args.ft, KEEPALIVE_EVERY)?)),
        rejoin::log_config(16, live),
        DigestPolicy::default(),
        hb_port,
        // No throttle on a backup gone live: its guest has no pacer.
        None,
    )?;
    let ctl = Arc::new(JoinCtl::default());
    backup_io = backup_io.with_join(ctl.clone());
    join(JoinEnv {
        vm: vm_fd.clone(),
        mem: parts.mem.clone(),
        ctl,
        shared: shared.clone(),
        spec: spec.clone(),
        kernel: kernel.clone(),
        main_thread: std::thread::current(),
        rebind: Some(supervisor.rebinder()),
        current: Some(ft.clone()),
    })?;
    tracing::info!(
        "backup {name}: following the primary (epoch {}, {} MiB guest)",
        header.epoch,
        spec.mem_size >> 20
    );
    parts.exit_index = exit_index;
    let mut run = drive(
        parts,
        console,
        backup_io,
        shared,
        &signals,
        Duration::from_secs(5),
        Some(&mut supervisor),
    )?;
    let went_live = run.io.is_live();
    run.io.shared().status.set_role(Role::Stopped);
    tracing::info!(
        "received up to seq {}, replayed up to seq {} (exit {}){}",
        FtShared::load(&ft.received_seq),
        FtShared::load(&ft.replayed_seq),
        FtShared::load(&ft.replayed_exit),
        if went_live { "; then live" } else { "" }
    );
    drain(&mut run.io, io_thread);
    // A replay that ends with the recording: the primary ended the run.
    let stop = run
        .end
        .as_ref()
        .err()
        .and_then(|e| e.io_error()?.replay_stop());
    match stop {
        Some(ReplayStop::Recorded {
            exit_index,
            reason,
            status,
        }) => {
            tracing::info!(
                "the primary ended the run at exit {exit_index} ({reason:?}, status {status}); so does the backup"
            );
            return Ok(ExitStatus::Ok);
        }
        Some(stop @ ReplayStop::Diverged(_)) => {
            eprintln!("lockstep: {stop}");
            return Ok(ExitStatus::Diverged);
        }
        _ => {}
    }
    if !went_live && run.verdict.is_none() && run.end.is_ok() {
        tracing::info!("the primary's guest stopped; so did the backup's replay");
    }
    report(run)
}
